-- Who each org town acts as (its creator, or the org owner who claimed it): deleting a user's
-- account must reach every org town that mints tokens as them. Written by the org's DO when a
-- town is created, claimed or deleted, and reconciled by its watchdog; a town whose user was
-- deleted has no row.
CREATE TABLE org_town_users (
  town_id TEXT PRIMARY KEY,
  org_id TEXT NOT NULL,
  user_id TEXT NOT NULL
);
CREATE INDEX org_town_users_by_user ON org_town_users (user_id);
CREATE INDEX org_town_users_by_org ON org_town_users (org_id);

-- Owner DO v1 (GastownUserDO and GastownOrgDO): an owner's towns and their rigs.
CREATE TABLE towns (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  owner_type TEXT NOT NULL,
  owner_user_id TEXT NOT NULL,
  organization_id TEXT,
  created_by_user_id TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at TEXT NOT NULL,
  seq INTEGER NOT NULL
);
CREATE INDEX towns_by_seq ON towns (seq);
CREATE TABLE rigs (
  id TEXT PRIMARY KEY,
  town_id TEXT NOT NULL REFERENCES towns (id),
  name TEXT NOT NULL,
  git_url TEXT NOT NULL,
  default_branch TEXT NOT NULL,
  platform_integration_id TEXT,
  created_at TEXT NOT NULL,
  seq INTEGER NOT NULL,
  UNIQUE (town_id, name)
);
CREATE INDEX rigs_by_town ON rigs (town_id, seq);
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);

-- TownDO v1: identity and ownership (one row), the rigs registry, and main-loop counters.
CREATE TABLE town (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  owner_type TEXT NOT NULL,
  owner_user_id TEXT NOT NULL,
  organization_id TEXT,
  created_by_user_id TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE rigs (
  id TEXT PRIMARY KEY,
  town_id TEXT NOT NULL,
  name TEXT NOT NULL,
  git_url TEXT NOT NULL,
  default_branch TEXT NOT NULL,
  platform_integration_id TEXT,
  created_at TEXT NOT NULL
);
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);

-- TownContainerDO v1: the container's env (persisted, replaced as a whole on every sync) and its
-- state. The token itself is not kept: only its expiry and when it was pushed.
CREATE TABLE env (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  status TEXT NOT NULL,
  token_expires_at INTEGER,
  token_pushed_at INTEGER,
  last_error TEXT
);

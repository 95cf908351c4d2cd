-- TownDO v8: the mayor. Its conversation with the town's users (capped: the oldest rows are
-- deleted and counted in mayor_session.dropped), and its one session: what it does, the hash
-- of the key its tools must present, the user whose messages it last took (its work runs as
-- them), and when a failed start may be tried again.
CREATE TABLE mayor_messages (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  role TEXT NOT NULL CHECK (role IN ('user', 'mayor', 'town')),
  text TEXT NOT NULL,
  user_id TEXT,
  created_at TEXT NOT NULL,
  delivered INTEGER NOT NULL DEFAULT 0,
  -- An escalation bead delivered to the mayor: at most one message each.
  escalation_id TEXT UNIQUE
);
CREATE INDEX mayor_messages_pending ON mayor_messages (delivered, seq);
CREATE TABLE mayor_session (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  status TEXT NOT NULL DEFAULT 'idle' CHECK (status IN ('idle', 'starting', 'working', 'waiting')),
  key_hash TEXT,
  model TEXT,
  acting_user_id TEXT,
  last_activity_ms INTEGER,
  start_failures INTEGER NOT NULL DEFAULT 0,
  next_start_ms INTEGER NOT NULL DEFAULT 0,
  dropped INTEGER NOT NULL DEFAULT 0
);
INSERT INTO mayor_session (id) VALUES (1);

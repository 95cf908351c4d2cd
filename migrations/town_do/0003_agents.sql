-- TownDO v3: agents seen by heartbeat.
CREATE TABLE agents (
  id TEXT PRIMARY KEY,
  rig_id TEXT NOT NULL,
  last_heartbeat_at INTEGER NOT NULL,
  heartbeats INTEGER NOT NULL
);

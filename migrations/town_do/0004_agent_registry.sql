-- TownDO v4: agents are registered by the town (the mayor on ensure, others by dispatch) before
-- any callback from them is honoured. Rows v3 made from heartbeats of unregistered ids are not
-- kept: the town never knew those agents.
DROP TABLE agents;
CREATE TABLE agents (
  id TEXT PRIMARY KEY,
  role TEXT NOT NULL CHECK (role IN ('mayor', 'polecat', 'refinery')),
  name TEXT NOT NULL,
  rig_id TEXT,
  status TEXT NOT NULL DEFAULT 'idle',
  current_bead_id TEXT,
  dispatch_attempts INTEGER NOT NULL DEFAULT 0,
  last_activity_at TEXT,
  created_at TEXT NOT NULL,
  heartbeats INTEGER NOT NULL DEFAULT 0,
  CHECK ((role = 'mayor') = (rig_id IS NULL))
);
-- Exactly one mayor per town, whatever the interleaving of concurrent ensures.
CREATE UNIQUE INDEX agents_one_mayor ON agents (role) WHERE role = 'mayor';
CREATE INDEX agents_by_rig ON agents (rig_id);

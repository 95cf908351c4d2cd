-- TownDO v9: what each agent's session did, as the container sends it in batches: one row per
-- event, numbered by the agent's run and its place in the run (a batch sent again is stored
-- once); `id` orders an agent's events for paging. The oldest beyond the town's cap per agent
-- are deleted and counted in agent_event_drops.
CREATE TABLE agent_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  agent_id TEXT NOT NULL,
  run INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  kind TEXT NOT NULL,
  text TEXT NOT NULL,
  truncated INTEGER NOT NULL DEFAULT 0,
  at_ms INTEGER NOT NULL,
  UNIQUE (agent_id, run, seq)
);
CREATE INDEX agent_events_by_agent ON agent_events (agent_id, id);
CREATE TABLE agent_event_drops (
  agent_id TEXT PRIMARY KEY,
  dropped INTEGER NOT NULL DEFAULT 0
);

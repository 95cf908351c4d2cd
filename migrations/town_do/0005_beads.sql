-- TownDO v5: beads (the town's work items) with an append-only event log, and what dispatch
-- and patrol need to know of agents.
CREATE TABLE beads (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL CHECK (type IN ('issue', 'message', 'escalation', 'merge_request')),
  status TEXT NOT NULL CHECK (status IN ('open', 'in_progress', 'in_review', 'closed', 'failed')),
  title TEXT NOT NULL,
  body TEXT NOT NULL DEFAULT '',
  rig_id TEXT,
  assignee_agent_id TEXT,
  priority INTEGER NOT NULL DEFAULT 2 CHECK (priority BETWEEN 0 AND 4),
  labels TEXT NOT NULL DEFAULT '[]',
  metadata TEXT NOT NULL DEFAULT '{}',
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  closed_at TEXT,
  failure_reason TEXT,
  dispatch_attempts INTEGER NOT NULL DEFAULT 0,
  -- Not dispatched before this time (ms since the epoch): the retry backoff.
  next_dispatch_at INTEGER NOT NULL DEFAULT 0
);
-- Pages in creation order, whole or filtered, cost the same at any depth.
CREATE INDEX beads_by_status ON beads (status, seq);
CREATE INDEX beads_by_rig ON beads (rig_id, seq);
CREATE INDEX beads_by_type ON beads (type, seq);
-- What dispatch looks for: open, unassigned issues, most urgent and oldest first.
CREATE INDEX beads_to_dispatch ON beads (priority, seq)
  WHERE status = 'open' AND type = 'issue' AND assignee_agent_id IS NULL;

CREATE TABLE bead_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  bead_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  actor TEXT NOT NULL,
  message TEXT,
  created_at TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE INDEX bead_events_by_bead ON bead_events (bead_id, kind, created_ms);

ALTER TABLE agents ADD COLUMN last_activity_ms INTEGER;
CREATE INDEX agents_by_status ON agents (status, rig_id);

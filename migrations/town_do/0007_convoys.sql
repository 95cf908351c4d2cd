-- TownDO v7: convoys and dependencies. A convoy is a bead of type 'convoy' that groups the
-- beads slung together (their convoy_id); a bead waits for every bead it depends on to close
-- before it is dispatched. SQLite cannot change a CHECK constraint, so the beads table is
-- rebuilt with 'convoy' allowed; rows keep their seq (and so their order and cursors).
CREATE TABLE beads_v7 (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL CHECK (type IN ('issue', 'message', 'escalation', 'merge_request', 'convoy')),
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
  next_dispatch_at INTEGER NOT NULL DEFAULT 0,
  convoy_id TEXT
);
INSERT INTO beads_v7 (seq, id, type, status, title, body, rig_id, assignee_agent_id, priority,
  labels, metadata, created_by, created_at, updated_at, closed_at, failure_reason,
  dispatch_attempts, next_dispatch_at)
SELECT seq, id, type, status, title, body, rig_id, assignee_agent_id, priority, labels, metadata,
  created_by, created_at, updated_at, closed_at, failure_reason, dispatch_attempts,
  next_dispatch_at
FROM beads;
DROP TABLE beads;
ALTER TABLE beads_v7 RENAME TO beads;
CREATE INDEX beads_by_status ON beads (status, seq);
CREATE INDEX beads_by_rig ON beads (rig_id, seq);
CREATE INDEX beads_by_type ON beads (type, seq);
CREATE INDEX beads_to_dispatch ON beads (priority, seq)
  WHERE status = 'open' AND type = 'issue' AND assignee_agent_id IS NULL;
CREATE INDEX beads_by_convoy ON beads (convoy_id, seq) WHERE convoy_id IS NOT NULL;

-- bead_id waits for depends_on to close.
CREATE TABLE bead_dependencies (
  bead_id TEXT NOT NULL,
  depends_on TEXT NOT NULL,
  PRIMARY KEY (bead_id, depends_on)
) WITHOUT ROWID;
CREATE INDEX bead_dependencies_by_target ON bead_dependencies (depends_on);

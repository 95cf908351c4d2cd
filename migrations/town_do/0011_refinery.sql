-- TownDO v11: the refinery. A pull request (GitHub) or merge request (GitLab) the town opened
-- for a finished bead, one row per `merge_request` bead, followed until it merges or closes.
--
-- `state`: opening (not opened yet, or the provider failed and it is retried at
-- `next_sync_at`), open (followed: webhooks ask for a read, and the poll reads it every
-- `next_sync_at`), merged, closed (without merging), failed (could not be opened), detached
-- (its source bead was closed or reopened by hand). `rounds` counts the feedback beads made;
-- `handled_review` / `handled_check` are the change request and the failing head commit last
-- answered, so each is answered once.
CREATE TABLE pull_requests (
  bead_id TEXT PRIMARY KEY,
  source_bead_id TEXT NOT NULL,
  rig_id TEXT NOT NULL,
  branch TEXT NOT NULL,
  base TEXT NOT NULL,
  platform TEXT,
  number INTEGER,
  url TEXT,
  state TEXT NOT NULL,
  head_sha TEXT,
  checks TEXT,
  failing_check TEXT,
  review_decision TEXT,
  author TEXT,
  rounds INTEGER NOT NULL DEFAULT 0,
  escalated INTEGER NOT NULL DEFAULT 0,
  feedback_bead_id TEXT,
  handled_review TEXT,
  handled_check TEXT,
  error TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_sync_at INTEGER NOT NULL,
  last_synced_at INTEGER,
  created_at INTEGER NOT NULL
);
-- What the refinery's run looks for: followed rows whose time has come.
CREATE INDEX pull_requests_due ON pull_requests (next_sync_at) WHERE state IN ('opening', 'open');
CREATE INDEX pull_requests_by_source ON pull_requests (source_bead_id, created_at);

-- The branch a bead's polecat works on when the town chose it (a feedback bead continues its
-- pull request's branch); otherwise the agent's own `gastown/<agent>/<bead>`.
ALTER TABLE beads ADD COLUMN work_branch TEXT;

CREATE TRIGGER town_events_pull_request_new AFTER INSERT ON pull_requests BEGIN
  INSERT INTO town_events (kind, data) VALUES ('pull_request', json_object(
    'bead_id', NEW.bead_id, 'source_bead_id', NEW.source_bead_id, 'state', NEW.state,
    'url', NEW.url, 'number', NEW.number, 'checks', NEW.checks,
    'review_decision', NEW.review_decision));
END;
CREATE TRIGGER town_events_pull_request_change
AFTER UPDATE OF state, url, checks, review_decision ON pull_requests
WHEN OLD.state IS NOT NEW.state OR OLD.url IS NOT NEW.url OR OLD.checks IS NOT NEW.checks
  OR OLD.review_decision IS NOT NEW.review_decision BEGIN
  INSERT INTO town_events (kind, data) VALUES ('pull_request', json_object(
    'bead_id', NEW.bead_id, 'source_bead_id', NEW.source_bead_id, 'state', NEW.state,
    'url', NEW.url, 'number', NEW.number, 'checks', NEW.checks,
    'review_decision', NEW.review_decision));
END;

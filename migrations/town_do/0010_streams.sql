-- TownDO v10: the town's change log, which its live stream sends and a reconnecting client
-- backfills from, and the nonces of the stream tickets its sockets opened with.
--
-- Every change is written here by a trigger on the table that changed, so no write path can
-- forget to tell the stream: a bead created, its status or assignee changed, or deleted; a
-- convoy's count of closed members; an agent's status or bead; a mayor message; the mayor's
-- status; the town's status. `seq` is the stream's position. The newest 1000 are kept.
CREATE TABLE town_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  data TEXT NOT NULL,
  at_ms INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
CREATE TRIGGER town_events_cap AFTER INSERT ON town_events BEGIN
  DELETE FROM town_events WHERE seq <= NEW.seq - 1000;
END;

-- (SQLite runs a statement's triggers newest first: the convoy's line follows its bead's.)
CREATE TRIGGER town_events_convoy AFTER UPDATE OF status, convoy_id ON beads
WHEN NEW.convoy_id IS NOT NULL
  AND (OLD.status IS NOT NEW.status OR OLD.convoy_id IS NOT NEW.convoy_id) BEGIN
  INSERT INTO town_events (kind, data) VALUES ('convoy', json_object(
    'id', NEW.convoy_id,
    'closed', (SELECT COUNT(*) FROM beads WHERE convoy_id = NEW.convoy_id AND status = 'closed'),
    'total', (SELECT COUNT(*) FROM beads WHERE convoy_id = NEW.convoy_id)));
END;
CREATE TRIGGER town_events_bead_new AFTER INSERT ON beads BEGIN
  INSERT INTO town_events (kind, data) VALUES ('bead', json_object(
    'id', NEW.id, 'type', NEW.type, 'status', NEW.status, 'title', NEW.title,
    'rig_id', NEW.rig_id, 'convoy_id', NEW.convoy_id, 'assignee_agent_id', NEW.assignee_agent_id,
    'failure_reason', NEW.failure_reason));
END;
CREATE TRIGGER town_events_bead_change AFTER UPDATE OF status, assignee_agent_id ON beads
WHEN OLD.status IS NOT NEW.status OR OLD.assignee_agent_id IS NOT NEW.assignee_agent_id BEGIN
  INSERT INTO town_events (kind, data) VALUES ('bead', json_object(
    'id', NEW.id, 'type', NEW.type, 'status', NEW.status, 'title', NEW.title,
    'rig_id', NEW.rig_id, 'convoy_id', NEW.convoy_id, 'assignee_agent_id', NEW.assignee_agent_id,
    'failure_reason', NEW.failure_reason));
END;
CREATE TRIGGER town_events_bead_gone AFTER DELETE ON beads BEGIN
  INSERT INTO town_events (kind, data) VALUES ('bead_deleted', json_object('id', OLD.id));
END;

CREATE TRIGGER town_events_agent_new AFTER INSERT ON agents BEGIN
  INSERT INTO town_events (kind, data) VALUES ('agent', json_object(
    'id', NEW.id, 'role', NEW.role, 'name', NEW.name, 'rig_id', NEW.rig_id,
    'status', NEW.status, 'current_bead_id', NEW.current_bead_id));
END;
CREATE TRIGGER town_events_agent_change AFTER UPDATE OF status, current_bead_id ON agents
WHEN OLD.status IS NOT NEW.status OR OLD.current_bead_id IS NOT NEW.current_bead_id BEGIN
  INSERT INTO town_events (kind, data) VALUES ('agent', json_object(
    'id', NEW.id, 'role', NEW.role, 'name', NEW.name, 'rig_id', NEW.rig_id,
    'status', NEW.status, 'current_bead_id', NEW.current_bead_id));
END;
CREATE TRIGGER town_events_agent_gone AFTER DELETE ON agents BEGIN
  INSERT INTO town_events (kind, data) VALUES ('agent_deleted', json_object('id', OLD.id));
END;

CREATE TRIGGER town_events_mayor_message AFTER INSERT ON mayor_messages BEGIN
  INSERT INTO town_events (kind, data) VALUES ('mayor_message', json_object(
    'seq', NEW.seq, 'role', NEW.role, 'text', NEW.text, 'user_id', NEW.user_id,
    'created_at', NEW.created_at));
END;
CREATE TRIGGER town_events_mayor_status AFTER UPDATE OF status ON mayor_session
WHEN OLD.status IS NOT NEW.status BEGIN
  INSERT INTO town_events (kind, data) VALUES ('mayor_status', json_object('status', NEW.status));
END;

CREATE TRIGGER town_events_town AFTER UPDATE OF status ON town
WHEN OLD.status IS NOT NEW.status BEGIN
  INSERT INTO town_events (kind, data) VALUES ('town', json_object('status', NEW.status));
END;

-- A ticket's nonce, once a socket opened with it, until the ticket would have expired anyway.
CREATE TABLE stream_tickets (
  nonce TEXT PRIMARY KEY,
  expires_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- The newest event id the cap dropped of each agent: a client resuming before it missed some.
ALTER TABLE agent_event_drops ADD COLUMN last_dropped_id INTEGER NOT NULL DEFAULT 0;

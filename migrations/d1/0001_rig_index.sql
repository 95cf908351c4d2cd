-- Account-level index: which town, and which owner DO, holds a rig. Written by the worker when a
-- rig is created or removed, read by internal services that only know a rig id.
CREATE TABLE rig_index (
  rig_id TEXT PRIMARY KEY,
  town_id TEXT NOT NULL,
  owner_type TEXT NOT NULL,
  owner_id TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX rig_index_by_town ON rig_index (town_id);

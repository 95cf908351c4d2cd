-- TownDO v2: the town's config (DESIGN.md §6) as one JSON document.
CREATE TABLE config (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  json TEXT NOT NULL
);

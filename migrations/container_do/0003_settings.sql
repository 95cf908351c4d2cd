-- TownContainerDO v3: the agents' settings files (agent_settings::SettingsFiles, as JSON), kept
-- with the env so a restarted container gets both. Not secret.
CREATE TABLE settings (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  json TEXT NOT NULL
);

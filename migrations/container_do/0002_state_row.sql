-- TownContainerDO v2: the one state row exists from the start (a new container is stopped).
INSERT OR IGNORE INTO state (id, status) VALUES (1, 'stopped');

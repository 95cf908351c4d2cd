-- TownDO v6: the git identity an agent's session commits and pushes as (`user:<email>` or
-- `bot:<reason>`), as its git tokens last said; cleared when the agent is dispatched anew. A
-- change mid-session (the user revoked, say) is written to the bead's events.
ALTER TABLE agents ADD COLUMN git_identity TEXT;

-- Which town follows a pull request (GitHub) or merge request (GitLab): a provider's webhook
-- names the repository (GitHub: `owner/name`, lower case; GitLab: the project's numeric id)
-- and the number, and the worker asks that town to read it again. Written by the town when it
-- opens or adopts one. `installation_id` is the GitHub installation whose token opened it: a
-- delivery from another installation is refused.
CREATE TABLE pull_request_index (
  platform TEXT NOT NULL,
  repo TEXT NOT NULL,
  number INTEGER NOT NULL,
  town_id TEXT NOT NULL,
  bead_id TEXT NOT NULL,
  installation_id TEXT,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (platform, repo, number, bead_id)
);

-- Platform integrations: GitHub App installations and GitLab OAuth connections, owned by a user
-- or an organisation. Credentials are sealed (`v2:` values, bound to the row and the field):
-- GitHub installations hold none (tokens are minted from the App's key); GitLab connections hold
-- the OAuth access and refresh tokens. `credential_version` is the optimistic-concurrency guard
-- of a GitLab refresh: GitLab rotates refresh tokens, so exactly one refresh may spend one. An
-- even version is at rest; an odd one is a refresh under way (claimed at
-- `refresh_claimed_at`, taken over only if its claimer went silent for 30 s).
CREATE TABLE platform_integrations (
  id TEXT PRIMARY KEY,
  platform TEXT NOT NULL CHECK (platform IN ('github', 'gitlab')),
  owner_type TEXT NOT NULL CHECK (owner_type IN ('user', 'org')),
  owner_id TEXT NOT NULL,
  account_login TEXT NOT NULL,
  account_type TEXT NOT NULL,
  installation_id TEXT,
  access_token TEXT,
  access_expires_at INTEGER,
  refresh_token TEXT,
  refresh_expires_at INTEGER,
  credential_version INTEGER NOT NULL DEFAULT 0,
  refresh_claimed_at INTEGER,
  status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'revoked')),
  last_error_code TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE INDEX platform_integrations_by_owner ON platform_integrations (owner_type, owner_id);
CREATE UNIQUE INDEX platform_integrations_github_installation
  ON platform_integrations (installation_id) WHERE platform = 'github';

-- The repository picker's cache: the whole list of one integration, replaced on refresh.
CREATE TABLE integration_repositories (
  integration_id TEXT NOT NULL,
  full_name TEXT NOT NULL,
  git_url TEXT NOT NULL,
  default_branch TEXT NOT NULL,
  private INTEGER NOT NULL,
  PRIMARY KEY (integration_id, full_name)
);
CREATE TABLE integration_repo_cache (
  integration_id TEXT PRIMARY KEY,
  fetched_at INTEGER NOT NULL
);

-- GitHub installation tokens, one per (integration, repository), sealed, reused until five
-- minutes before they expire.
CREATE TABLE integration_git_tokens (
  integration_id TEXT NOT NULL,
  repo TEXT NOT NULL,
  token TEXT NOT NULL,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY (integration_id, repo)
);

-- Nonces of connect-flow states already used: a state is accepted once.
CREATE TABLE oauth_states_used (
  nonce TEXT PRIMARY KEY,
  expires_at INTEGER NOT NULL
);

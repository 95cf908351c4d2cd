-- GitHub App user-to-server tokens: one row per (Kilo user, App), so agents can commit and push
-- as the user. The GitHub user id is numeric, as GitHub sends it in webhooks (`sender.id`).
-- Both tokens are sealed (bound to the row and field). `credential_version` guards the refresh
-- the way platform_integrations does (even: at rest; odd: a refresh under way since
-- `refresh_claimed_at`): GitHub rotates refresh tokens, so none is ever spent twice.
CREATE TABLE user_github_tokens (
  user_id TEXT NOT NULL,
  app_type TEXT NOT NULL DEFAULT 'standard',
  github_user_id INTEGER NOT NULL,
  github_login TEXT NOT NULL,
  noreply_email TEXT NOT NULL,
  access_token TEXT NOT NULL,
  access_expires_at INTEGER NOT NULL,
  refresh_token TEXT NOT NULL,
  refresh_expires_at INTEGER NOT NULL,
  credential_version INTEGER NOT NULL DEFAULT 0,
  refresh_claimed_at INTEGER,
  revoked_at TEXT,
  revocation_reason TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  PRIMARY KEY (user_id, app_type)
);
CREATE INDEX user_github_tokens_by_github_user ON user_github_tokens (github_user_id);

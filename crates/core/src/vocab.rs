//! The shared vocabulary (agent roles, whose git identity a token carries, env names): small
//! types and names that several modules speak, so none of them has to import another just for
//! a word.
//!
//! This is a leaf: it imports nothing from the crate (`tests/module_graph.rs` keeps the
//! crate's modules free of cycles, and a leaf cannot be part of one). Where an item used to
//! live elsewhere, that module re-exports it, so its old public path still resolves.

use serde::{Deserialize, Serialize};

/// An agent's role in a town.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Mayor,
    Polecat,
    Refinery,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Mayor, Role::Polecat, Role::Refinery];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mayor => "mayor",
            Role::Polecat => "polecat",
            Role::Refinery => "refinery",
        }
    }
}

/// The gateway token's name in the container env and in the gateway env file
/// (`control::GATEWAY_ENV_FILE`). The town config derives it from `kilocode_token`, and a
/// user's `env_vars` may not set it.
pub const GATEWAY_TOKEN_ENV: &str = "KILO_JWT";

/// The town's `github_cli_pat` in the container env: the town config derives it, the control
/// server's `gh` shim reads it and hands it to each run of the GitHub CLI as
/// [`GH_TOKEN_ENV`]. A user's `env_vars` may not set it.
pub const GITHUB_CLI_PAT_ENV: &str = "GITHUB_CLI_PAT";

/// The variable the GitHub CLI takes its token from. Never in a container's or an agent's env
/// (a copy there would go stale): the `gh` shim sets it for one run of `gh` at a time. A
/// user's `env_vars` may not set it.
pub const GH_TOKEN_ENV: &str = "GH_TOKEN";

/// Whose identity a git token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GitIdentity {
    /// The town owner's own GitHub identity: commits and pushes are theirs.
    User { name: String, email: String },
    /// The App's bot, and why not the user.
    Bot { reason: BotReason },
}

/// Why a git token is the bot's rather than the user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BotReason {
    /// The town's `commit_as_user` is off (or user tokens are switched off here).
    Disabled,
    NotConnected,
    Revoked,
    NoRepoAccess,
    RefreshFailed,
}

impl BotReason {
    /// The reason as its JSON spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BotReason::Disabled => "disabled",
            BotReason::NotConnected => "not_connected",
            BotReason::Revoked => "revoked",
            BotReason::NoRepoAccess => "no_repo_access",
            BotReason::RefreshFailed => "refresh_failed",
        }
    }
}

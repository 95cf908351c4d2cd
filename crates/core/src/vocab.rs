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

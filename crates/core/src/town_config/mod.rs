//! Town config (DESIGN.md §6): what it holds, how a PATCH changes it, and how it is shown.
//!
//! Secrets are `kilocode_token`, `github_cli_pat`, `git_auth.github_token`,
//! `git_auth.gitlab_token` and every `env_vars` value. They are never shown in clear: every
//! caller sees `****` plus the last four characters (or only `****` for a value shorter than
//! [`MASK_MIN_LEN`], whose last four characters would give most of it away). This is stricter
//! than showing them to owners: no route but a token-issuing one returns a secret.
//!
//! A PATCH is a JSON object of the fields to change. `null` clears a field; a secret sent back
//! exactly as it was shown keeps the stored value; ownership fields are ignored; unknown fields
//! are refused (422), so a misspelt field is not silently dropped.
//!
//! A PATCH goes through two steps. [`ConfigPatch::parse`] checks everything the body alone can
//! tell (the worker runs it before it calls the town's Durable Object) and gives a typed
//! [`ConfigPatch`], which travels to the Durable Object as JSON. [`TownConfig::apply`] then checks
//! what needs the stored config (a masked secret must match the stored one; a secret whose
//! destination changes is dropped, see [`SECRET_DESTINATIONS`]) and gives the next config.
//! `apply` re-runs [`ConfigPatch::validate`] first, so a patch that did not come from `parse`
//! cannot store what `parse` would refuse.
//!
//! One submodule per concern: `types` (the stored config), `patch` (parsing, validating and
//! applying a PATCH), `masking` (how a config is shown) and `env` (the env var deny-list and the
//! container's env). Every public item is re-exported here, and `town_config::X` is its only
//! public path.

mod env;
mod masking;
mod patch;
mod types;

pub use env::{container_env, denied_env_family, DeniedEnvFamily, DENIED_ENV_VARS, MAX_ENV_KEY};
pub use masking::{mask, ConfigView, MASK, MASK_MIN_LEN};
pub use patch::{
    Change, ConfigPatch, GitAuthPatch, RoleModelsPatch, Secret, MAX_AUTHOR_NAME, MAX_EMAIL,
    MAX_ENV_VALUE, MAX_ENV_VARS, MAX_MODEL, MAX_POLECATS, MAX_RIG_OVERRIDES, MAX_SECRET, MAX_URL,
    SECRET_DESTINATIONS,
};
pub use types::{GitAuth, MergeStrategy, RigOverride, RoleModels, TownConfig};

#[cfg(test)]
mod tests;

//! Platform integrations, one module per flow:
//!
//! - `connect`: the GitHub App install flow, the GitLab OAuth flow and a user's own GitHub
//!   identity, with the signed `state` and the dashboard redirect they share;
//! - `repositories`: listing an owner's integrations, the repository picker, deleting one;
//! - `git_tokens`: git tokens for a rig (the town's container, or the internal key);
//! - `webhook`: GitHub's webhook;
//! - `users`: personal data deletion.
//!
//! What other modules need of integrations (a new rig's repository, a rig's integration
//! summary) lives in [`crate::platforms::repositories`], not here.

mod connect;
mod git_tokens;
mod repositories;
mod users;
mod webhook;

pub use connect::{
    github_install, github_installed, github_user_callback, github_user_connect,
    github_user_disconnect, github_user_status, gitlab_callback, gitlab_connect,
};
pub use git_tokens::{container_git_token, internal_git_token};
pub use repositories::{delete, list, repositories};
pub use users::delete_user;
pub use webhook::{github_webhook, gitlab_webhook};

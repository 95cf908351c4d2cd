//! GitHub and GitLab as the worker reaches them (DESIGN.md §7a), and the integrations stored in
//! D1: connect flows, repository lists, and git tokens minted on demand.
//!
//! - `http`: one outbound JSON call, with the status and body as the answer (never a token in an
//!   error message);
//! - `github`: the App JWT (RS256 through the runtime's WebCrypto), installations, installation
//!   tokens scoped to one repository, installation repositories;
//! - `gitlab`: the OAuth code exchange, token refresh, the user and their projects;
//! - `store`: the D1 rows of integrations (tokens sealed, bound to the row and field);
//! - `sealed_field`: sealing a D1 field under associated data naming its row and field;
//! - `lease`: the even/odd `credential_version` claim that lets exactly one caller spend a
//!   rotating refresh token;
//! - `repositories`: an integration's repositories (cached, else the provider's) and the one a
//!   new rig names;
//! - `git_token`: which credential serves a rig, minted or refreshed as needed;
//! - `user_tokens`: GitHub user-to-server tokens, to commit as the town's owner;
//! - `pulls`: pull and merge requests the refinery opens and follows, and their index.

pub mod git_token;
pub mod github;
pub mod gitlab;
pub mod http;
pub mod lease;
pub mod pulls;
pub mod repositories;
pub mod sealed_field;
pub mod store;
pub mod user_tokens;

use gastown_core::error::ApiError;

/// A provider call failed in a way the caller reports with a code, never the provider's text.
#[derive(Debug)]
pub enum PlatformError {
    /// Not configured here (no App key, no OAuth client).
    NotConfigured(&'static str),
    /// The provider refused (status) or could not be reached (0).
    Provider { status: u16, what: &'static str },
    /// Anything of ours.
    Api(ApiError),
}

impl From<ApiError> for PlatformError {
    fn from(e: ApiError) -> Self {
        PlatformError::Api(e)
    }
}

impl PlatformError {
    /// As an API error: 502 for the provider (the detail is logged, not sent).
    pub fn into_api(self) -> ApiError {
        match self {
            PlatformError::NotConfigured(what) => {
                ApiError::Conflict(format!("{what} is not configured on this deployment"))
            }
            PlatformError::Provider { status, what } => {
                ApiError::Upstream(format!("{what}: provider answered {status}"))
            }
            PlatformError::Api(e) => e,
        }
    }
}

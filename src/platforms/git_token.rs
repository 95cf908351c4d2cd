//! A git token for one rig, always fresh: the rig's integration first (a GitHub installation
//! token scoped to the rig's repository, or the GitLab connection's OAuth token, refreshed
//! when near expiry), else the town's `git_auth` token for the repository's host, else 404
//! `no_git_credentials`. A suspended, revoked or missing integration answers 409 with its code:
//! never a stale token, never a silent fallback to another credential.
//!
//! Tokens are handed out per request and reused only while more than five minutes remain, so
//! a caller (the container's git credential helper) that asks per git operation never pushes
//! with an expired one. Nothing is ever written into a git remote.

use super::store::{self, Row};
use super::{github, gitlab, lease, user_tokens, PlatformError};
use crate::config;
use gastown_core::control::{GitTokenReply, GitTokenSource};
use gastown_core::error::ApiError;
use gastown_core::integrations::{self, BotReason, GitIdentity, IntegrationStatus, Platform};
use gastown_core::protocol::town::RigCredentialsReply;
use worker::{console_error, Env};

/// How long a static town token is handed out for: the helper asks again after this, and so
/// picks up a config change.
const TOWN_TOKEN_TTL_SECS: i64 = 3600;

fn unavailable(status: IntegrationStatus) -> ApiError {
    ApiError::IntegrationUnavailable(match status {
        IntegrationStatus::Suspended => "integration_suspended",
        _ => "integration_revoked",
    })
}

/// Whether a provider's token has more than the deployment's margin (`GIT_TOKEN_REFRESH_MARGIN_S`)
/// left: else it is renewed before it is handed out.
pub(super) fn fresh(env: &Env, expires_at: i64) -> bool {
    expires_at - config::now_s() > config::get(env).git_token_margin_s
}

/// The token for `creds.rig`.
///
/// # Errors
/// As the module says; 502 when the provider fails for another reason.
pub async fn for_rig(env: &Env, creds: RigCredentialsReply) -> Result<GitTokenReply, ApiError> {
    let host = integrations::git_host(&creds.rig.git_url);
    reply_for_rig(env, creds)
        .await
        .map(|reply| GitTokenReply { host, ..reply })
}

async fn reply_for_rig(env: &Env, creds: RigCredentialsReply) -> Result<GitTokenReply, ApiError> {
    let RigCredentialsReply {
        town,
        rig,
        town_token,
        commit_as_user,
        as_user,
        ..
    } = creds;
    let Some(integration_id) = rig.platform_integration_id.as_deref() else {
        return match town_token {
            Some(token) => Ok(GitTokenReply {
                token,
                expires_at: config::now_s() + TOWN_TOKEN_TTL_SECS,
                source: GitTokenSource::TownConfig,
                identity: None,
                host: None,
            }),
            None => Err(ApiError::NoGitCredentials),
        };
    };
    let row = store::get(env, integration_id)
        .await?
        .ok_or(ApiError::IntegrationUnavailable("integration_missing"))?;
    if !row.public().belongs_to(&town.owner) {
        return Err(ApiError::Forbidden(
            "the rig's integration belongs to another owner".into(),
        ));
    }
    // Rigs take their URL from the integration, but a rig recorded before that rule (or a
    // provider URL on another host) must still never carry the integration's token elsewhere.
    let platform_host = config::get(env).platforms.git_host(row.platform());
    if platform_host.is_none() || integrations::git_host(&rig.git_url) != platform_host {
        return Err(ApiError::Forbidden(
            "the rig's git_url is not on its integration's host".into(),
        ));
    }
    if row.status != IntegrationStatus::Active {
        return Err(unavailable(row.status));
    }
    let result = match row.platform() {
        Platform::Github => {
            // The identity of the user the work runs as first, when the town asks for it
            // (its creator's for a bead someone slung; the town's user otherwise); the bot
            // otherwise.
            let reason = if commit_as_user && config::get(env).platforms.github_user_tokens {
                let full_name = integrations::repo_full_name(&rig.git_url)
                    .ok_or_else(|| ApiError::internal("the rig's git_url names no repository"))?;
                match user_tokens::token_for_repo(env, &as_user, &full_name).await? {
                    Ok(user) => {
                        return Ok(GitTokenReply {
                            token: user.token,
                            expires_at: user.expires_at,
                            source: GitTokenSource::GithubUser,
                            identity: Some(GitIdentity::User {
                                name: user.name,
                                email: user.email,
                            }),
                            host: None,
                        })
                    }
                    Err(reason) => reason,
                }
            } else {
                BotReason::Disabled
            };
            github_token(env, &row, &rig.git_url)
                .await
                .map(|reply| GitTokenReply {
                    identity: Some(GitIdentity::Bot { reason }),
                    ..reply
                })
        }
        Platform::Gitlab => gitlab_token(env, row).await,
    };
    result.map_err(PlatformError::into_api)
}

async fn github_token(env: &Env, row: &Row, git_url: &str) -> Result<GitTokenReply, PlatformError> {
    let full_name = integrations::repo_full_name(git_url)
        .ok_or_else(|| ApiError::internal("the rig's git_url names no repository"))?;
    if let Some((token, expires_at)) = store::cached_git_token(env, &row.id, &full_name).await? {
        if fresh(env, expires_at) {
            return Ok(GitTokenReply {
                token,
                expires_at,
                source: GitTokenSource::GithubApp,
                identity: None,
                host: None,
            });
        }
    }
    let installation = row
        .installation_id
        .as_deref()
        .ok_or_else(|| ApiError::internal("GitHub integration without an installation"))?;
    let name = full_name.rsplit('/').next().unwrap_or(&full_name);
    let settings = &config::get(env).platforms;
    match github::installation_token(settings, installation, Some(name)).await {
        Ok((token, expires_at)) => {
            store::store_git_token(env, &row.id, &full_name, &token, expires_at).await?;
            Ok(GitTokenReply {
                token,
                expires_at,
                source: GitTokenSource::GithubApp,
                identity: None,
                host: None,
            })
        }
        // GitHub says the installation is suspended, or gone: record it and say so.
        Err(PlatformError::Provider { status: 403, .. }) => {
            store::set_status(
                env,
                &row.id,
                IntegrationStatus::Suspended,
                Some("suspended"),
            )
            .await?;
            Err(unavailable(IntegrationStatus::Suspended).into())
        }
        Err(PlatformError::Provider { status: 404, .. }) => {
            store::set_status(
                env,
                &row.id,
                IntegrationStatus::Revoked,
                Some("installation_removed"),
            )
            .await?;
            Err(unavailable(IntegrationStatus::Revoked).into())
        }
        Err(e) => Err(e),
    }
}

/// GitLab rotates refresh tokens, so of concurrent refreshes exactly one may spend it: the
/// caller that takes the row's [`lease`](super::lease) refreshes and stores the result, the
/// others re-read until the new token is there (at most [`lease::WAITS`] reads).
async fn gitlab_token(env: &Env, mut row: Row) -> Result<GitTokenReply, PlatformError> {
    let settings = &config::get(env).platforms;
    // The row is re-read while waiting; its id stays.
    let id = row.id.clone();
    let refresh = store::lease(&id);
    for _ in 0..lease::WAITS {
        if row.status != IntegrationStatus::Active {
            return Err(unavailable(row.status).into());
        }
        if let Some(expires_at) = row.access_expires_at().filter(|t| fresh(env, *t)) {
            return Ok(GitTokenReply {
                token: row.access_token(env)?,
                expires_at,
                source: GitTokenSource::GitlabOauth,
                identity: None,
                host: None,
            });
        }
        if let Some(claimed) = refresh.claim(env, row.version()).await? {
            let refresh_token = row.refresh_token(env)?;
            return match gitlab::refresh(settings, &refresh_token).await {
                Ok(tokens) => {
                    store::store_refreshed(env, &row.id, claimed, &tokens).await?;
                    Ok(GitTokenReply {
                        token: tokens.access_token,
                        expires_at: tokens.expires_at,
                        source: GitTokenSource::GitlabOauth,
                        identity: None,
                        host: None,
                    })
                }
                Err(PlatformError::Provider {
                    status: 400 | 401, ..
                }) => {
                    // GitLab refused the refresh token: the grant is gone.
                    store::set_status(
                        env,
                        &row.id,
                        IntegrationStatus::Revoked,
                        Some("refresh_failed"),
                    )
                    .await?;
                    refresh.release(env, claimed).await?;
                    Err(unavailable(IntegrationStatus::Revoked).into())
                }
                Err(e) => {
                    console_error!("integration {}: GitLab refresh failed", row.id);
                    refresh.release(env, claimed).await?;
                    Err(e)
                }
            };
        }
        // Another request is refreshing: wait for its result.
        lease::wait().await;
        row = store::get(env, &id)
            .await?
            .ok_or(ApiError::IntegrationUnavailable("integration_missing"))?;
    }
    Err(ApiError::Upstream("a concurrent GitLab refresh did not finish".into()).into())
}

/// A GitLab integration's current access token (refreshed if due), for listing its projects.
///
/// # Errors
/// As [`for_rig`].
pub async fn gitlab_access(env: &Env, row: Row) -> Result<String, ApiError> {
    gitlab_token(env, row)
        .await
        .map(|reply| reply.token)
        .map_err(PlatformError::into_api)
}

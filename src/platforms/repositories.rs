//! An integration's repositories, as the picker lists them and as a new rig names one: the
//! cached list while it is fresh ([`REPO_CACHE_TTL_SECS`]), else the provider's, cached again.
//! Only an active integration lists anything: a suspended or revoked one answers 409 with its
//! code.

use super::{git_token, github, gitlab, store, PlatformError};
use crate::config;
use gastown_core::error::ApiError;
use gastown_core::integrations::{
    IntegrationStatus, IntegrationSummary, Platform, Repository, REPO_CACHE_TTL_SECS,
};
use gastown_core::model::Owner;
use worker::Env;

/// The integration's repositories: from the cache while it is fresh (unless `refresh`), else
/// from the provider.
///
/// # Errors
/// 409 for a suspended or revoked integration; 502 when the provider fails; internal when D1
/// does.
pub async fn of(env: &Env, row: store::Row, refresh: bool) -> Result<Vec<Repository>, ApiError> {
    if row.status != IntegrationStatus::Active {
        return Err(ApiError::IntegrationUnavailable(match row.status {
            IntegrationStatus::Suspended => "integration_suspended",
            _ => "integration_revoked",
        }));
    }
    if !refresh {
        if let Some((fetched_at, repos)) = store::cached_repositories(env, &row.id).await? {
            if config::now_s() - fetched_at < REPO_CACHE_TTL_SECS {
                return Ok(repos);
            }
        }
    }
    let settings = &config::get(env).platforms;
    let id = row.id.clone();
    let repos = match row.platform() {
        Platform::Github => {
            let installation = row
                .installation_id
                .clone()
                .ok_or_else(|| ApiError::internal("GitHub integration without an installation"))?;
            github::repositories(settings, &installation).await
        }
        Platform::Gitlab => {
            let token = git_token::gitlab_access(env, row).await?;
            gitlab::projects(settings, &token).await
        }
    }
    .map_err(PlatformError::into_api)?;
    store::store_repositories(env, &id, &repos).await?;
    Ok(repos)
}

/// For a new rig: the repository `repo` of integration `id`, which must be `owner`'s and active.
///
/// # Errors
/// 422 for an unknown integration or repository; 403 for another owner's integration; 409 for
/// a suspended or revoked one.
pub async fn repository_for_rig(
    env: &Env,
    owner: &Owner,
    id: &str,
    repo: &str,
) -> Result<Repository, ApiError> {
    let row = store::get(env, id)
        .await?
        .ok_or_else(|| ApiError::invalid("platform_integration_id", "is not an integration"))?;
    if !row.public().belongs_to(owner) {
        return Err(ApiError::Forbidden(
            "the integration belongs to another owner than the town".into(),
        ));
    }
    let find = |repos: Vec<Repository>| {
        repos
            .into_iter()
            .find(|r| r.full_name.eq_ignore_ascii_case(repo))
    };
    let cached = of(env, row, false).await?;
    if let Some(found) = find(cached) {
        return Ok(found);
    }
    // Not in the cache: it may be new. Ask the provider once.
    let row = store::get(env, id)
        .await?
        .ok_or_else(|| ApiError::invalid("platform_integration_id", "is not an integration"))?;
    find(of(env, row, true).await?)
        .ok_or_else(|| ApiError::invalid("repo", "is not a repository of this integration"))
}

/// What a rig shows of its integration (`None` for a rig without one, or one since deleted).
///
/// # Errors
/// Internal, when D1 fails.
pub async fn summary(env: &Env, id: &str) -> Result<Option<IntegrationSummary>, ApiError> {
    Ok(store::get(env, id)
        .await?
        .map(|row| IntegrationSummary::from(&row.public())))
}

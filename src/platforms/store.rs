//! The integrations in D1 (`migrations/d1/0002_integrations.sql`). Credentials are sealed, each
//! bound to its row and field (`integration:<id>:<field>`), and opened only to mint a git token;
//! a GitLab connection's tokens are refreshed under the row's [`lease`].

use super::lease::Lease;
use super::sealed_field::SealedRow;
use crate::config;
use crate::d1::{all, first, opt};
pub(super) use crate::d1::{db, n, run, s};
use gastown_core::error::ApiError;
use gastown_core::integrations::{Integration, IntegrationStatus, Platform, Repository};
use gastown_core::model::{Owner, OwnerType};
use gastown_core::time::rfc3339;
use serde::Deserialize;
use worker::wasm_bindgen::JsValue;
use worker::Env;

/// The sealed fields of integration `id` (`integration:<id>:<field>`).
fn sealed(id: &str) -> SealedRow {
    SealedRow::new(format!("integration:{id}"))
}

/// The refresh lease on integration `id`'s GitLab tokens.
pub fn lease(id: &str) -> Lease<'_> {
    Lease::new("platform_integrations", vec![("id", id)])
}

const COLUMNS: &str = "id, platform, owner_type, owner_id, account_login, account_type, installation_id, access_token, access_expires_at, refresh_token, refresh_expires_at, credential_version, status, last_error_code, created_at, updated_at";

/// One stored integration, credentials still sealed.
#[derive(Deserialize)]
pub struct Row {
    pub id: String,
    platform: Platform,
    owner_type: OwnerType,
    owner_id: String,
    account_login: String,
    account_type: String,
    pub installation_id: Option<String>,
    access_token: Option<String>,
    access_expires_at: Option<f64>,
    refresh_token: Option<String>,
    credential_version: f64,
    pub status: IntegrationStatus,
    pub last_error_code: Option<String>,
    created_at: String,
    updated_at: String,
}

impl Row {
    pub fn public(&self) -> Integration {
        Integration {
            id: self.id.clone(),
            platform: self.platform,
            owner_type: self.owner_type,
            owner_id: self.owner_id.clone(),
            account_login: self.account_login.clone(),
            account_type: self.account_type.clone(),
            status: self.status,
            last_error_code: self.last_error_code.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }

    pub fn platform(&self) -> Platform {
        self.platform
    }

    pub fn version(&self) -> i64 {
        self.credential_version as i64
    }

    pub fn access_expires_at(&self) -> Option<i64> {
        self.access_expires_at.map(|t| t as i64)
    }

    /// The GitLab access token, opened.
    ///
    /// # Errors
    /// Internal, when it does not open (or there is none).
    pub fn access_token(&self, env: &Env) -> Result<String, ApiError> {
        let value = self
            .access_token
            .as_deref()
            .ok_or_else(|| ApiError::internal("integration has no access token"))?;
        sealed(&self.id).open(env, "access_token", value)
    }

    /// The GitLab refresh token, opened.
    ///
    /// # Errors
    /// Internal, when it does not open (or there is none).
    pub fn refresh_token(&self, env: &Env) -> Result<String, ApiError> {
        let value = self
            .refresh_token
            .as_deref()
            .ok_or_else(|| ApiError::internal("integration has no refresh token"))?;
        sealed(&self.id).open(env, "refresh_token", value)
    }
}

/// # Errors
/// Internal, when D1 fails.
pub async fn get(env: &Env, id: &str) -> Result<Option<Row>, ApiError> {
    first(
        env,
        &format!("SELECT {COLUMNS} FROM platform_integrations WHERE id = ?1"),
        &[s(id)],
    )
    .await
}

/// # Errors
/// Internal, when D1 fails.
pub async fn by_installation(env: &Env, installation_id: &str) -> Result<Option<Row>, ApiError> {
    first(
        env,
        &format!(
            "SELECT {COLUMNS} FROM platform_integrations WHERE platform = 'github' AND installation_id = ?1"
        ),
        &[s(installation_id)],
    )
    .await
}

/// The integration just written, as the API shows it.
async fn written(env: &Env, id: &str) -> Result<Integration, ApiError> {
    get(env, id)
        .await?
        .map(|r| r.public())
        .ok_or_else(|| ApiError::internal("integration vanished"))
}

/// An owner's integrations, oldest first.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn list(env: &Env, owner: &Owner) -> Result<Vec<Integration>, ApiError> {
    let rows: Vec<Row> = all(
        env,
        &format!(
            "SELECT {COLUMNS} FROM platform_integrations WHERE owner_type = ?1 AND owner_id = ?2 ORDER BY created_at, id"
        ),
        &[s(owner.kind().as_str()), s(owner.id())],
    )
    .await?;
    Ok(rows.iter().map(Row::public).collect())
}

/// Records a GitHub installation for `owner`, or refreshes the record it already has. An
/// installation recorded for another owner is not taken over.
///
/// # Errors
/// 409 when another owner holds the installation; internal when D1 fails.
pub async fn record_github(
    env: &Env,
    owner: &Owner,
    installation_id: &str,
    login: &str,
    account_type: &str,
    suspended: bool,
) -> Result<Integration, ApiError> {
    let now = rfc3339(config::now_ms());
    let status = if suspended { "suspended" } else { "active" };
    if let Some(existing) = by_installation(env, installation_id).await? {
        if !existing.public().belongs_to(owner) {
            return Err(ApiError::Conflict(
                "this installation is connected to another owner".into(),
            ));
        }
        run(
            env,
            "UPDATE platform_integrations SET account_login = ?1, account_type = ?2, status = ?3, last_error_code = NULL, updated_at = ?4 WHERE id = ?5",
            &[s(login), s(account_type), s(status), s(&now), s(&existing.id)],
        )
        .await?;
        return written(env, &existing.id).await;
    }
    let id = config::new_id()?;
    run(
        env,
        "INSERT INTO platform_integrations (id, platform, owner_type, owner_id, account_login, account_type, installation_id, status, created_at, updated_at) VALUES (?1, 'github', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        &[
            s(&id),
            s(owner.kind().as_str()),
            s(owner.id()),
            s(login),
            s(account_type),
            s(installation_id),
            s(status),
            s(&now),
        ],
    )
    .await?;
    written(env, &id).await
}

/// Records a GitLab connection with its (sealed) tokens.
///
/// # Errors
/// Internal, when sealing or D1 fails.
pub async fn record_gitlab(
    env: &Env,
    owner: &Owner,
    login: &str,
    tokens: &super::gitlab::Tokens,
) -> Result<Integration, ApiError> {
    let id = config::new_id()?;
    let now = rfc3339(config::now_ms());
    run(
        env,
        "INSERT INTO platform_integrations (id, platform, owner_type, owner_id, account_login, account_type, access_token, access_expires_at, refresh_token, status, created_at, updated_at) VALUES (?1, 'gitlab', ?2, ?3, ?4, 'User', ?5, ?6, ?7, 'active', ?8, ?8)",
        &[
            s(&id),
            s(owner.kind().as_str()),
            s(owner.id()),
            s(login),
            s(&sealed(&id).seal(env, "access_token", &tokens.access_token)?),
            n(tokens.expires_at),
            s(&sealed(&id).seal(env, "refresh_token", &tokens.refresh_token)?),
            s(&now),
        ],
    )
    .await?;
    written(env, &id).await
}

/// Stores what the claimed refresh (see [`lease`]) returned, and puts the version back at rest;
/// a refresh also clears the integration's last error.
///
/// # Errors
/// Internal, when sealing or D1 fails.
pub async fn store_refreshed(
    env: &Env,
    id: &str,
    claimed: i64,
    tokens: &super::gitlab::Tokens,
) -> Result<(), ApiError> {
    let fields = sealed(id);
    lease(id)
        .commit(
            env,
            claimed,
            vec![
                fields.column(env, "access_token", &tokens.access_token)?,
                ("access_expires_at", n(tokens.expires_at)),
                fields.column(env, "refresh_token", &tokens.refresh_token)?,
                ("last_error_code", JsValue::NULL),
            ],
        )
        .await
}

/// Marks an integration with a status and an error code (`None` clears the code).
///
/// # Errors
/// Internal, when D1 fails.
pub async fn set_status(
    env: &Env,
    id: &str,
    status: IntegrationStatus,
    code: Option<&str>,
) -> Result<(), ApiError> {
    let status = match status {
        IntegrationStatus::Active => "active",
        IntegrationStatus::Suspended => "suspended",
        IntegrationStatus::Revoked => "revoked",
    };
    run(
        env,
        "UPDATE platform_integrations SET status = ?1, last_error_code = ?2, updated_at = ?3 WHERE id = ?4",
        &[s(status), opt(code), s(&rfc3339(config::now_ms())), s(id)],
    )
    .await?;
    // A changed status invalidates every minted token.
    run(
        env,
        "DELETE FROM integration_git_tokens WHERE integration_id = ?1",
        &[s(id)],
    )
    .await?;
    Ok(())
}

/// Deletes an integration and everything cached for it.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn delete(env: &Env, id: &str) -> Result<(), ApiError> {
    let db = db(env)?;
    let stmts = [
        "DELETE FROM integration_git_tokens WHERE integration_id = ?1",
        "DELETE FROM integration_repositories WHERE integration_id = ?1",
        "DELETE FROM integration_repo_cache WHERE integration_id = ?1",
        "DELETE FROM platform_integrations WHERE id = ?1",
    ]
    .into_iter()
    .map(|q| db.prepare(q).bind(&[s(id)]))
    .collect::<worker::Result<Vec<_>>>()
    .map_err(ApiError::internal)?;
    db.batch(stmts).await.map_err(ApiError::internal)?;
    Ok(())
}

#[derive(Deserialize)]
struct CacheRow {
    fetched_at: f64,
}

#[derive(Deserialize)]
struct RepoRow {
    full_name: String,
    git_url: String,
    default_branch: String,
    private: f64,
}

/// The cached repository list and when it was fetched (seconds), if any.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn cached_repositories(
    env: &Env,
    id: &str,
) -> Result<Option<(i64, Vec<Repository>)>, ApiError> {
    let Some(cache) = first::<CacheRow>(
        env,
        "SELECT fetched_at FROM integration_repo_cache WHERE integration_id = ?1",
        &[s(id)],
    )
    .await?
    else {
        return Ok(None);
    };
    let rows: Vec<RepoRow> = all(
        env,
        "SELECT full_name, git_url, default_branch, private FROM integration_repositories WHERE integration_id = ?1 ORDER BY full_name",
        &[s(id)],
    )
    .await?;
    Ok(Some((
        cache.fetched_at as i64,
        rows.into_iter()
            .map(|r| Repository {
                full_name: r.full_name,
                git_url: r.git_url,
                default_branch: r.default_branch,
                private: r.private != 0.0,
            })
            .collect(),
    )))
}

/// Replaces the cached repository list.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn store_repositories(env: &Env, id: &str, repos: &[Repository]) -> Result<(), ApiError> {
    let db = db(env)?;
    let mut stmts = vec![db
        .prepare("DELETE FROM integration_repositories WHERE integration_id = ?1")
        .bind(&[s(id)])
        .map_err(ApiError::internal)?];
    for r in repos {
        stmts.push(
            db.prepare("INSERT OR REPLACE INTO integration_repositories (integration_id, full_name, git_url, default_branch, private) VALUES (?1, ?2, ?3, ?4, ?5)")
                .bind(&[s(id), s(&r.full_name), s(&r.git_url), s(&r.default_branch), n(i64::from(r.private))])
                .map_err(ApiError::internal)?,
        );
    }
    stmts.push(
        db.prepare("INSERT OR REPLACE INTO integration_repo_cache (integration_id, fetched_at) VALUES (?1, ?2)")
            .bind(&[s(id), n(config::now_s())])
            .map_err(ApiError::internal)?,
    );
    db.batch(stmts).await.map_err(ApiError::internal)?;
    Ok(())
}

#[derive(Deserialize)]
struct TokenRow {
    token: String,
    expires_at: f64,
}

/// A cached installation token for `repo`, opened, with its expiry.
///
/// # Errors
/// Internal, when D1 fails or the value does not open.
pub async fn cached_git_token(
    env: &Env,
    id: &str,
    repo: &str,
) -> Result<Option<(String, i64)>, ApiError> {
    let row = first::<TokenRow>(
        env,
        "SELECT token, expires_at FROM integration_git_tokens WHERE integration_id = ?1 AND repo = ?2",
        &[s(id), s(repo)],
    )
    .await?;
    row.map(|r| {
        sealed(id)
            .open(env, &format!("git_token:{repo}"), &r.token)
            .map(|t| (t, r.expires_at as i64))
    })
    .transpose()
}

/// Caches an installation token for `repo`, sealed.
///
/// # Errors
/// Internal, when sealing or D1 fails.
pub async fn store_git_token(
    env: &Env,
    id: &str,
    repo: &str,
    token: &str,
    expires_at: i64,
) -> Result<(), ApiError> {
    run(
        env,
        "INSERT OR REPLACE INTO integration_git_tokens (integration_id, repo, token, expires_at) VALUES (?1, ?2, ?3, ?4)",
        &[
            s(id),
            s(repo),
            s(&sealed(id).seal(env, &format!("git_token:{repo}"), token)?),
            n(expires_at),
        ],
    )
    .await?;
    Ok(())
}

/// Records a single-use id until `expires_at`: a connect flow's nonce, or a webhook delivery's
/// id (`webhook:<platform>:<id>`); false if it was used before (a replayed `state`, a replayed
/// or redelivered webhook).
///
/// # Errors
/// Internal, when D1 fails.
pub async fn use_nonce(env: &Env, nonce: &str, expires_at: i64) -> Result<bool, ApiError> {
    let now = config::now_s();
    run(
        env,
        "DELETE FROM oauth_states_used WHERE expires_at < ?1",
        &[n(now)],
    )
    .await?;
    Ok(run(
        env,
        "INSERT OR IGNORE INTO oauth_states_used (nonce, expires_at) VALUES (?1, ?2)",
        &[s(nonce), n(expires_at)],
    )
    .await?
        == 1)
}

/// Forgets a single-use id recorded by [`use_nonce`], when what it guarded was not done.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn forget_nonce(env: &Env, nonce: &str) -> Result<(), ApiError> {
    run(
        env,
        "DELETE FROM oauth_states_used WHERE nonce = ?1",
        &[s(nonce)],
    )
    .await?;
    Ok(())
}

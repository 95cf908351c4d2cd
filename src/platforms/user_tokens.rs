//! GitHub App user-to-server tokens (`ghu_…`): agents commit and push as the town's owner, with
//! the App's bot as the instant fallback. One D1 row per (user, App)
//! (`migrations/d1/0003_user_github_tokens.sql`), tokens sealed.
//!
//! [`token_for_repo`] is the one answer to "a user token for this repository": the token, or a
//! typed reason it cannot be (`not_connected`, `revoked`, `no_repo_access`, `refresh_failed`).
//! It refreshes within five minutes of expiry under the row's [lease](super::lease), as GitLab
//! does, so a refresh token (GitHub rotates them) is never spent twice; a refresh GitHub
//! rejects marks the row revoked (its claim is left: only a reconnect puts the version back at
//! rest); push permission is checked with the user's own token.

use super::http::{self, Body};
use super::lease::{self, Lease};
use super::sealed_field::SealedRow;
use super::store::{db, n, run, s};
use super::PlatformError;
use crate::config::{self, Platforms};
use gastown_core::error::ApiError;
use gastown_core::integrations::{github_noreply_email, BotReason};
use gastown_core::time::rfc3339;
use serde::{Deserialize, Serialize};
use worker::{console_error, Env, Method};

/// The App these tokens belong to (one App per deployment today).
const APP_TYPE: &str = "standard";

/// The sealed fields of `user`'s row (`user-github-token:<user>:<app type>:<field>`).
fn sealed(user: &str) -> SealedRow {
    SealedRow::new(format!("user-github-token:{user}:{APP_TYPE}"))
}

/// The refresh lease on `user`'s row.
fn refresh_lease(user: &str) -> Lease<'_> {
    Lease::new(
        "user_github_tokens",
        vec![("user_id", user), ("app_type", APP_TYPE)],
    )
}

#[derive(Deserialize)]
struct Row {
    github_login: String,
    noreply_email: String,
    access_token: String,
    access_expires_at: f64,
    refresh_token: String,
    credential_version: f64,
    revoked_at: Option<String>,
    created_at: String,
}

async fn row(env: &Env, user: &str) -> Result<Option<Row>, ApiError> {
    db(env)?
        .prepare("SELECT github_login, noreply_email, access_token, access_expires_at, refresh_token, credential_version, revoked_at, created_at FROM user_github_tokens WHERE user_id = ?1 AND app_type = ?2")
        .bind(&[s(user), s(APP_TYPE)])
        .map_err(ApiError::internal)?
        .first::<Row>(None)
        .await
        .map_err(ApiError::internal)
}

/// A token pair as GitHub's OAuth endpoint answers it.
pub struct Tokens {
    pub access_token: String,
    pub access_expires_at: i64,
    pub refresh_token: String,
    pub refresh_expires_at: i64,
}

#[derive(Deserialize)]
struct OAuthAnswer {
    access_token: Option<String>,
    expires_in: Option<i64>,
    refresh_token: Option<String>,
    refresh_token_expires_in: Option<i64>,
    /// GitHub reports OAuth errors with status 200 and this field.
    error: Option<String>,
}

fn client(settings: &Platforms) -> Result<(&str, &str), PlatformError> {
    match (
        settings.github_app_client_id.as_deref(),
        settings.github_app_client_secret.as_deref(),
    ) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err(PlatformError::NotConfigured(
            "GITHUB_APP_CLIENT_ID and GITHUB_APP_CLIENT_SECRET",
        )),
    }
}

/// The App's callback for installations: with "Request user authorization (OAuth) during
/// installation" GitHub sends the installing user here with a `code` (it must be the App's
/// first callback URL).
pub fn install_redirect_uri(settings: &Platforms) -> String {
    format!("{}/api/integrations/github/installed", settings.public_url)
}

/// The callback URL registered with the App.
pub fn redirect_uri(settings: &Platforms) -> String {
    format!(
        "{}/api/integrations/github/user-connect/callback",
        settings.public_url
    )
}

/// GitHub's authorize URL (only parameters GitHub supports: no `prompt`).
///
/// # Errors
/// `NotConfigured` without the App's OAuth credentials.
pub fn authorize_url(settings: &Platforms, state: &str) -> Result<String, PlatformError> {
    let (client_id, _) = client(settings)?;
    Ok(format!(
        "{}/login/oauth/authorize?{}",
        settings.github_web_url,
        http::form(&[
            ("client_id", client_id),
            ("redirect_uri", &redirect_uri(settings)),
            ("state", state),
        ])
    ))
}

/// Why GitHub's token endpoint refused (the `error` it gave is logged, never shown).
pub enum Refused {
    /// `bad_refresh_token`, `bad_verification_code`, …: the grant or code is no good.
    Grant,
    Other(PlatformError),
}

async fn oauth(settings: &Platforms, grant: &[(&str, &str)]) -> Result<Tokens, Refused> {
    let (client_id, client_secret) = client(settings).map_err(Refused::Other)?;
    let mut pairs = vec![("client_id", client_id), ("client_secret", client_secret)];
    pairs.extend_from_slice(grant);
    let answer = http::send(
        Method::Post,
        &format!("{}/login/oauth/access_token", settings.github_web_url),
        &[],
        Body::Form(http::form(&pairs)),
        "GitHub's OAuth token endpoint",
    )
    .await
    .map_err(Refused::Other)?;
    let parsed: OAuthAnswer = answer
        .parsed(&[200], "GitHub's OAuth token endpoint")
        .map_err(Refused::Other)?;
    if let Some(error) = parsed.error {
        console_error!("GitHub OAuth refused: {error}");
        return Err(Refused::Grant);
    }
    let now = config::now_s();
    match (parsed.access_token, parsed.refresh_token) {
        (Some(access_token), Some(refresh_token)) => Ok(Tokens {
            access_token,
            access_expires_at: now + parsed.expires_in.unwrap_or(8 * 3600),
            refresh_token,
            refresh_expires_at: now + parsed.refresh_token_expires_in.unwrap_or(180 * 86400),
        }),
        // Without a refresh token the App does not expire user tokens: refuse to store one.
        _ => Err(Refused::Other(PlatformError::NotConfigured(
            "\"Expire user authorization tokens\" on the GitHub App",
        ))),
    }
}

/// Exchanges a callback's code; `redirect` is the callback it was sent to.
///
/// # Errors
/// As [`Refused`].
pub async fn exchange_code(
    settings: &Platforms,
    code: &str,
    redirect: &str,
) -> Result<Tokens, Refused> {
    oauth(settings, &[("code", code), ("redirect_uri", redirect)]).await
}

#[derive(Deserialize)]
pub struct GithubUser {
    pub id: u64,
    pub login: String,
}

/// The user a token belongs to.
///
/// # Errors
/// As [`PlatformError`].
pub async fn user(settings: &Platforms, token: &str) -> Result<GithubUser, PlatformError> {
    let auth = format!("Bearer {token}");
    http::send(
        Method::Get,
        &format!("{}/user", settings.github_api_url),
        &[
            ("authorization", &auth),
            ("x-github-api-version", "2022-11-28"),
        ],
        Body::None,
        "reading the GitHub user",
    )
    .await?
    .parsed(&[200], "reading the GitHub user")
}

/// Records a connection (a reconnect clears any revocation).
///
/// # Errors
/// Internal, when sealing or D1 fails.
pub async fn upsert(
    env: &Env,
    user_id: &str,
    who: &GithubUser,
    tokens: &Tokens,
) -> Result<(), ApiError> {
    let now = rfc3339(config::now_ms());
    let github_id = i64::try_from(who.id).map_err(ApiError::internal)?;
    let fields = sealed(user_id);
    run(
        env,
        "INSERT INTO user_github_tokens (user_id, app_type, github_user_id, github_login, noreply_email, access_token, access_expires_at, refresh_token, refresh_expires_at, credential_version, refresh_claimed_at, revoked_at, revocation_reason, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, NULL, NULL, NULL, ?10, ?10) \
         ON CONFLICT (user_id, app_type) DO UPDATE SET github_user_id = excluded.github_user_id, github_login = excluded.github_login, noreply_email = excluded.noreply_email, \
         access_token = excluded.access_token, access_expires_at = excluded.access_expires_at, refresh_token = excluded.refresh_token, refresh_expires_at = excluded.refresh_expires_at, \
         credential_version = user_github_tokens.credential_version + 2 - (user_github_tokens.credential_version % 2), refresh_claimed_at = NULL, revoked_at = NULL, revocation_reason = NULL, updated_at = excluded.updated_at",
        &[
            s(user_id),
            s(APP_TYPE),
            n(github_id),
            s(&who.login),
            s(&github_noreply_email(who.id, &who.login)),
            s(&fields.seal(env, "access_token", &tokens.access_token)?),
            n(tokens.access_expires_at),
            s(&fields.seal(env, "refresh_token", &tokens.refresh_token)?),
            n(tokens.refresh_expires_at),
            s(&now),
        ],
    )
    .await?;
    Ok(())
}

/// What the dashboard shows: never connected and revoked are different states.
#[derive(Serialize)]
pub struct Status {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_login: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<String>,
}

/// # Errors
/// Internal, when D1 fails.
pub async fn status(env: &Env, user: &str) -> Result<Status, ApiError> {
    Ok(match row(env, user).await? {
        None => Status {
            status: "not_connected",
            github_login: None,
            connected_at: None,
        },
        Some(r) => Status {
            status: if r.revoked_at.is_some() {
                "revoked"
            } else {
                "connected"
            },
            github_login: Some(r.github_login),
            connected_at: Some(r.created_at),
        },
    })
}

/// Revokes the grant at GitHub (best effort: a grant already gone is fine) and deletes the row.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn disconnect(env: &Env, user: &str) -> Result<bool, ApiError> {
    let Some(r) = row(env, user).await? else {
        return Ok(false);
    };
    let settings = &config::get(env).platforms;
    if let Ok(token) = sealed(user).open(env, "access_token", &r.access_token) {
        revoke_grant(settings, &token).await;
    }
    run(
        env,
        "DELETE FROM user_github_tokens WHERE user_id = ?1",
        &[s(user)],
    )
    .await?;
    Ok(true)
}

/// `DELETE /applications/:client_id/grant` with Basic client credentials and the token in the
/// body. Failures are logged: the local row goes either way.
async fn revoke_grant(settings: &Platforms, access_token: &str) {
    let Ok((client_id, client_secret)) = client(settings) else {
        return;
    };
    let basic = format!(
        "Basic {}",
        base64_encode(format!("{client_id}:{client_secret}").as_bytes())
    );
    let body = serde_json::json!({ "access_token": access_token }).to_string();
    match http::send(
        Method::Delete,
        &format!(
            "{}/applications/{}/grant",
            settings.github_api_url,
            http::encode(client_id)
        ),
        &[
            ("authorization", &basic),
            ("x-github-api-version", "2022-11-28"),
        ],
        Body::Json(body),
        "revoking the GitHub grant",
    )
    .await
    {
        Ok(a) if matches!(a.status, 204 | 404 | 422) => {}
        Ok(a) => console_error!("revoking a GitHub grant: GitHub answered {}", a.status),
        Err(e) => console_error!("revoking a GitHub grant: {}", e.into_api()),
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((v >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Marks every row of a GitHub user revoked (the `github_app_authorization` webhook).
///
/// # Errors
/// Internal, when D1 fails.
pub async fn revoke_github_user(
    env: &Env,
    github_user_id: u64,
    reason: &str,
) -> Result<usize, ApiError> {
    let id = i64::try_from(github_user_id).map_err(ApiError::internal)?;
    run(
        env,
        "UPDATE user_github_tokens SET revoked_at = ?1, revocation_reason = ?2, updated_at = ?1 WHERE github_user_id = ?3",
        &[s(&rfc3339(config::now_ms())), s(reason), n(id)],
    )
    .await
}

async fn mark_revoked(env: &Env, user: &str, reason: &str) -> Result<(), ApiError> {
    run(
        env,
        "UPDATE user_github_tokens SET revoked_at = ?1, revocation_reason = ?2, refresh_claimed_at = NULL, updated_at = ?1 WHERE user_id = ?3 AND app_type = ?4",
        &[s(&rfc3339(config::now_ms())), s(reason), s(user), s(APP_TYPE)],
    )
    .await?;
    Ok(())
}

/// A usable user token and the identity to commit as.
pub struct UserToken {
    pub token: String,
    pub expires_at: i64,
    pub name: String,
    pub email: String,
}

/// The user's token for `full_name` (`owner/repo`), or why the bot must be used instead.
///
/// # Errors
/// Internal, when D1 fails; everything about the user's token is a [`BotReason`].
pub async fn token_for_repo(
    env: &Env,
    user: &str,
    full_name: &str,
) -> Result<Result<UserToken, BotReason>, ApiError> {
    let settings = &config::get(env).platforms;
    let fields = sealed(user);
    let refresh = refresh_lease(user);
    let mut current = row(env, user).await?;
    let mut waits = 0;
    let (token, expires_at, r) = loop {
        let Some(r) = current.take() else {
            return Ok(Err(BotReason::NotConnected));
        };
        if r.revoked_at.is_some() {
            return Ok(Err(BotReason::Revoked));
        }
        let expires_at = r.access_expires_at as i64;
        if super::git_token::fresh(env, expires_at) {
            break (
                fields.open(env, "access_token", &r.access_token)?,
                expires_at,
                r,
            );
        }
        if let Some(claimed) = refresh.claim(env, r.credential_version as i64).await? {
            let refresh_token = fields.open(env, "refresh_token", &r.refresh_token)?;
            match oauth(
                settings,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh_token),
                ],
            )
            .await
            {
                Ok(t) => {
                    refresh
                        .commit(
                            env,
                            claimed,
                            vec![
                                fields.column(env, "access_token", &t.access_token)?,
                                ("access_expires_at", n(t.access_expires_at)),
                                fields.column(env, "refresh_token", &t.refresh_token)?,
                                ("refresh_expires_at", n(t.refresh_expires_at)),
                            ],
                        )
                        .await?;
                    break (t.access_token, t.access_expires_at, r);
                }
                Err(Refused::Grant) => {
                    mark_revoked(env, user, "refresh_failed").await?;
                    return Ok(Err(BotReason::RefreshFailed));
                }
                Err(Refused::Other(e)) => {
                    console_error!("user token refresh: {}", e.into_api());
                    refresh.release(env, claimed).await?;
                    return Ok(Err(BotReason::RefreshFailed));
                }
            }
        }
        waits += 1;
        if waits > lease::WAITS {
            return Ok(Err(BotReason::RefreshFailed));
        }
        lease::wait().await;
        current = row(env, user).await?;
    };
    // Push permission, asked with the user's own token.
    let auth = format!("Bearer {token}");
    let answer = http::send(
        Method::Get,
        &format!("{}/repos/{full_name}", settings.github_api_url),
        &[
            ("authorization", &auth),
            ("x-github-api-version", "2022-11-28"),
        ],
        Body::None,
        "reading the repository as the user",
    )
    .await;
    #[derive(Deserialize)]
    struct Permissions {
        push: bool,
    }
    #[derive(Deserialize)]
    struct Repo {
        permissions: Option<Permissions>,
    }
    match answer {
        Ok(a) if a.status == 200 => {
            let can_push = serde_json::from_str::<Repo>(&a.body)
                .ok()
                .and_then(|repo| repo.permissions)
                .is_some_and(|p| p.push);
            if !can_push {
                return Ok(Err(BotReason::NoRepoAccess));
            }
        }
        Ok(a) if a.status == 401 => {
            // The user revoked the App at GitHub before any webhook told us.
            mark_revoked(env, user, "token_rejected").await?;
            return Ok(Err(BotReason::Revoked));
        }
        Ok(_) => return Ok(Err(BotReason::NoRepoAccess)),
        Err(e) => {
            console_error!("user token repository check: {}", e.into_api());
            return Ok(Err(BotReason::NoRepoAccess));
        }
    }
    Ok(Ok(UserToken {
        token,
        expires_at,
        name: r.github_login,
        email: r.noreply_email,
    }))
}

/// Personal data deletion: every grant of the user revoked at GitHub (best effort) and every
/// row deleted.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn delete_user(env: &Env, user: &str) -> Result<(), ApiError> {
    disconnect(env, user).await?;
    run(
        env,
        "DELETE FROM user_github_tokens WHERE user_id = ?1",
        &[s(user)],
    )
    .await?;
    Ok(())
}

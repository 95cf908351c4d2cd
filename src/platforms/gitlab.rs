//! GitLab through an OAuth application: the code exchange, token refresh, the user, projects.

use super::http::{self, Body};
use super::PlatformError;
use crate::config::{self, Platforms};
use gastown_core::integrations::Repository;
use serde::Deserialize;
use worker::Method;

/// The redirect URI registered with the GitLab application.
pub fn redirect_uri(settings: &Platforms) -> String {
    format!("{}/api/integrations/gitlab/callback", settings.public_url)
}

fn client(settings: &Platforms) -> Result<(&str, &str), PlatformError> {
    match (
        settings.gitlab_client_id.as_deref(),
        settings.gitlab_client_secret.as_deref(),
    ) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err(PlatformError::NotConfigured(
            "GITLAB_CLIENT_ID and GITLAB_CLIENT_SECRET",
        )),
    }
}

/// The authorize URL of a connect flow.
///
/// # Errors
/// `NotConfigured` without an OAuth client.
pub fn authorize_url(
    settings: &Platforms,
    state: &str,
    challenge: &str,
) -> Result<String, PlatformError> {
    let (client_id, _) = client(settings)?;
    Ok(format!(
        "{}/oauth/authorize?{}",
        settings.gitlab_url,
        http::form(&[
            ("client_id", client_id),
            ("redirect_uri", &redirect_uri(settings)),
            ("response_type", "code"),
            ("scope", "api read_user"),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
    ))
}

/// A token pair as GitLab answers it, with absolute expiry.
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    refresh_token: String,
    expires_in: Option<i64>,
}

async fn token(settings: &Platforms, grant: &[(&str, &str)]) -> Result<Tokens, PlatformError> {
    let (client_id, client_secret) = client(settings)?;
    let mut pairs = vec![("client_id", client_id), ("client_secret", client_secret)];
    pairs.extend_from_slice(grant);
    let answer = http::send(
        Method::Post,
        &format!("{}/oauth/token", settings.gitlab_url),
        &[],
        Body::Form(http::form(&pairs)),
        "the GitLab token endpoint",
    )
    .await?;
    let t: TokenAnswer = answer.parsed(&[200], "the GitLab token endpoint")?;
    Ok(Tokens {
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        // GitLab's default is two hours.
        expires_at: config::now_s() + t.expires_in.unwrap_or(7200),
    })
}

/// Exchanges an authorization code (with its PKCE verifier).
///
/// # Errors
/// As [`PlatformError`].
pub async fn exchange_code(
    settings: &Platforms,
    code: &str,
    verifier: &str,
) -> Result<Tokens, PlatformError> {
    let redirect = redirect_uri(settings);
    token(
        settings,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &redirect),
            ("code_verifier", verifier),
        ],
    )
    .await
}

/// Spends a refresh token (GitLab rotates it: the old one is dead after this).
///
/// # Errors
/// `Provider` with status 400 when GitLab refuses the refresh token (revoked access).
pub async fn refresh(settings: &Platforms, refresh_token: &str) -> Result<Tokens, PlatformError> {
    token(
        settings,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

#[derive(Deserialize)]
pub struct User {
    pub username: String,
}

/// The connected user.
///
/// # Errors
/// As [`PlatformError`].
pub async fn user(settings: &Platforms, access_token: &str) -> Result<User, PlatformError> {
    let auth = format!("Bearer {access_token}");
    http::send(
        Method::Get,
        &format!("{}/api/v4/user", settings.gitlab_url),
        &[("authorization", &auth)],
        Body::None,
        "reading the GitLab user",
    )
    .await?
    .parsed(&[200], "reading the GitLab user")
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: String,
    http_url_to_repo: String,
    default_branch: Option<String>,
    visibility: Option<String>,
}

/// Projects the user is a member of (100 a page, at most 50 pages).
///
/// # Errors
/// As [`PlatformError`].
pub async fn projects(
    settings: &Platforms,
    access_token: &str,
) -> Result<Vec<Repository>, PlatformError> {
    let auth = format!("Bearer {access_token}");
    let mut out = Vec::new();
    for page in 1..=50 {
        let answer = http::send(
            Method::Get,
            &format!(
                "{}/api/v4/projects?membership=true&per_page=100&page={page}",
                settings.gitlab_url
            ),
            &[("authorization", &auth)],
            Body::None,
            "listing GitLab projects",
        )
        .await?;
        let parsed: Vec<Project> = answer.parsed(&[200], "listing GitLab projects")?;
        let n = parsed.len();
        out.extend(parsed.into_iter().map(|p| Repository {
            full_name: p.path_with_namespace,
            git_url: p.http_url_to_repo,
            default_branch: p.default_branch.unwrap_or_else(|| "main".to_owned()),
            private: p.visibility.as_deref() != Some("public"),
        }));
        if n < 100 {
            break;
        }
    }
    Ok(out)
}

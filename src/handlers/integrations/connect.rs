//! Connecting a platform: the GitHub App install flow (with its `installed` redirect), the GitLab
//! OAuth flow (with its callback), and a user's own GitHub identity (connect, callback, status,
//! disconnect), with the signed `state` and the redirect to the dashboard they share.
//!
//! The redirects back from GitHub and GitLab carry no bearer token: their signed, single-use
//! `state` (10 minutes, bound to the user and the owner the integration will belong to) is what
//! authenticates them. They answer with a 302 to `DASHBOARD_URL` carrying one friendly code;
//! what the provider said goes to the log, never into the URL.

use crate::config::{self, Platforms};
use crate::http::{json, Params};
use crate::platforms::{github, gitlab, store, user_tokens, PlatformError};
use gastown_core::auth::UserClaims;
use gastown_core::authz;
use gastown_core::error::ApiError;
use gastown_core::ids::OrgId;
use gastown_core::integrations::{
    self, DashboardCode, Platform, StateClaims, StateKind, STATE_TTL_SECS,
};
use gastown_core::model::Owner;
use serde::{Deserialize, Serialize};
use worker::{console_error, Env, Request, Response};

type Handled = Result<Response, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    #[serde(default)]
    org_id: Option<String>,
}

/// The owner a connect flow is for: the caller, or an org the caller owns.
async fn connect_owner(req: &mut Request, claims: &UserClaims) -> Result<Owner, ApiError> {
    let bytes = req
        .bytes()
        .await
        .map_err(|_| ApiError::BadRequest("unreadable body".into()))?;
    if bytes.len() > gastown_core::body::MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    let body: ConnectBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ConnectBody { org_id: None }
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::InvalidJson(gastown_core::body::json_error_summary(&e)))?
    };
    let owner = match body.org_id {
        Some(org) => {
            Owner::Org(OrgId::parse(&org).map_err(|e| ApiError::invalid("org_id", e.to_string()))?)
        }
        None => Owner::User(claims.user_id.clone()),
    };
    // Connecting for an org is an owner's act, as deleting is.
    authz::owned(claims, &owner, true)?;
    Ok(owner)
}

fn state_key(settings: &Platforms) -> Result<&[u8], ApiError> {
    settings
        .state_key
        .as_deref()
        .ok_or_else(|| ApiError::internal("GASTOWN_ENCRYPTION_KEY is not configured"))
}

fn new_state(
    settings: &Platforms,
    kind: StateKind,
    claims: &UserClaims,
    owner: &Owner,
) -> Result<(String, String), ApiError> {
    let nonce = config::new_id()?;
    let state = integrations::sign_state(
        state_key(settings)?,
        &StateClaims {
            kind,
            nonce: nonce.clone(),
            user_id: claims.user_id.clone(),
            org_id: owner.org().cloned(),
            exp: config::now_s() + STATE_TTL_SECS,
        },
    );
    Ok((state, nonce))
}

/// `POST /api/integrations/github/install {org_id?}` → `{install_url}`.
pub async fn github_install(req: &mut Request, env: &Env, claims: &UserClaims) -> Handled {
    authz::require_gastown_access(claims)?;
    let owner = connect_owner(req, claims).await?;
    let settings = &config::get(env).platforms;
    let slug = settings
        .github_app_slug
        .as_deref()
        .ok_or_else(|| PlatformError::NotConfigured("GITHUB_APP_SLUG").into_api())?;
    let (state, _) = new_state(settings, StateKind::GithubInstall, claims, &owner)?;
    #[derive(Serialize)]
    struct Out {
        install_url: String,
    }
    Ok(json(
        200,
        &Out {
            install_url: format!(
                "{}/apps/{}/installations/new?state={}",
                settings.github_web_url,
                crate::platforms::http::encode(slug),
                crate::platforms::http::encode(&state)
            ),
        },
    ))
}

/// `POST /api/integrations/gitlab/connect {org_id?}` → `{authorize_url}` (PKCE S256 and the
/// client secret).
pub async fn gitlab_connect(req: &mut Request, env: &Env, claims: &UserClaims) -> Handled {
    authz::require_gastown_access(claims)?;
    let owner = connect_owner(req, claims).await?;
    let settings = &config::get(env).platforms;
    let (state, nonce) = new_state(settings, StateKind::GitlabConnect, claims, &owner)?;
    let verifier = integrations::pkce_verifier(state_key(settings)?, &nonce);
    let url = gitlab::authorize_url(settings, &state, &integrations::pkce_challenge(&verifier))
        .map_err(PlatformError::into_api)?;
    #[derive(Serialize)]
    struct Out {
        authorize_url: String,
    }
    Ok(json(200, &Out { authorize_url: url }))
}

/// 302 to the dashboard with one friendly code.
fn back_to_dashboard(settings: &Platforms, platform: Platform, code: DashboardCode) -> Handled {
    let location = format!(
        "{}/integrations?platform={}&result={}",
        settings.dashboard_url,
        platform.as_str(),
        code.as_str()
    );
    let mut resp = Response::empty()
        .map_err(ApiError::internal)?
        .with_status(302);
    let headers = resp.headers_mut();
    let _ = headers.set("location", &location);
    let _ = headers.set("cache-control", "no-store");
    Ok(resp)
}

/// Verifies a callback's `state`: signature, kind, expiry, and first use.
async fn accept_state(
    env: &Env,
    settings: &Platforms,
    state: Option<&str>,
    kind: StateKind,
) -> Result<Option<StateClaims>, ApiError> {
    let Some(state) = state else {
        return Ok(None);
    };
    let Ok(claims) = integrations::verify_state(state_key(settings)?, state, kind, config::now_s())
    else {
        return Ok(None);
    };
    if !store::use_nonce(env, &claims.nonce, claims.exp).await? {
        return Ok(None);
    }
    Ok(Some(claims))
}

/// The user's tokens for a GitHub callback's `code` (`redirect` is the callback it was sent
/// to), or `None` for `exchange_failed`; why GitHub refused is logged under `flow`.
async fn github_exchange(
    settings: &Platforms,
    code: &str,
    redirect: &str,
    flow: &str,
) -> Option<user_tokens::Tokens> {
    match user_tokens::exchange_code(settings, code, redirect).await {
        Ok(t) => Some(t),
        Err(user_tokens::Refused::Grant) => None,
        Err(user_tokens::Refused::Other(e)) => {
            console_error!("{flow}: {}", e.into_api());
            None
        }
    }
}

/// `GET /api/integrations/github/installed?installation_id&setup_action&code&state`.
///
/// GitHub documents that `installation_id` on this redirect can be spoofed, so an installation
/// is connected only when the user who comes back proves they may access it: the App requests
/// user authorization during installation, the redirect carries a `code`, and the installation
/// must be among the user's own (`GET /user/installations` with the token that code gives);
/// for an org, it must also be installed on an organization account. Without that proof the
/// user lands on `authorization_required` or `installation_forbidden`, and nothing is stored.
/// A deleted integration is re-connected the same way.
pub async fn github_installed(req: &Request, env: &Env) -> Handled {
    let settings = &config::get(env).platforms;
    let params = Params::of(req);
    let back = |code| back_to_dashboard(settings, Platform::Github, code);
    let Some(claims) =
        accept_state(env, settings, params.get("state"), StateKind::GithubInstall).await?
    else {
        return back(DashboardCode::InvalidState);
    };
    let Some(installation_id) = params
        .get("installation_id")
        .filter(|id| id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()))
    else {
        return back(DashboardCode::InvalidRequest);
    };
    let Some(code) = params.get("code") else {
        return back(DashboardCode::AuthorizationRequired);
    };
    let redirect = user_tokens::install_redirect_uri(settings);
    let Some(tokens) = github_exchange(settings, code, &redirect, "github install").await else {
        return back(DashboardCode::ExchangeFailed);
    };
    let theirs = match github::user_installations(settings, &tokens.access_token).await {
        Ok(list) => list,
        Err(e) => {
            console_error!("github install: {}", e.into_api());
            return back(DashboardCode::ExchangeFailed);
        }
    };
    let proven = theirs.iter().any(|i| {
        i.id.to_string() == installation_id
            && (claims.org_id.is_none() || i.account.kind == "Organization")
    });
    if !proven {
        return back(DashboardCode::InstallationForbidden);
    }
    let installation = match github::installation(settings, installation_id).await {
        Ok(Some(i)) => i,
        Ok(None) => return back(DashboardCode::ExchangeFailed),
        Err(e) => {
            console_error!("github install: {}", e.into_api());
            return back(DashboardCode::ExchangeFailed);
        }
    };
    let recorded = store::record_github(
        env,
        &claims.owner(),
        &installation.id.to_string(),
        &installation.account.login,
        &installation.account.kind,
        installation.suspended_at.is_some(),
    )
    .await;
    match recorded {
        Ok(_) => back(DashboardCode::Success),
        Err(ApiError::Conflict(_)) => back(DashboardCode::AlreadyConnected),
        Err(e) => Err(e),
    }
}

/// `GET /api/integrations/gitlab/callback?code&state` (or `?error=access_denied&state`).
pub async fn gitlab_callback(req: &Request, env: &Env) -> Handled {
    let settings = &config::get(env).platforms;
    let params = Params::of(req);
    let Some(claims) =
        accept_state(env, settings, params.get("state"), StateKind::GitlabConnect).await?
    else {
        return back_to_dashboard(settings, Platform::Gitlab, DashboardCode::InvalidState);
    };
    if params.get("error").is_some() {
        return back_to_dashboard(settings, Platform::Gitlab, DashboardCode::AccessDenied);
    }
    let Some(code) = params.get("code") else {
        return back_to_dashboard(settings, Platform::Gitlab, DashboardCode::InvalidRequest);
    };
    let verifier = integrations::pkce_verifier(state_key(settings)?, &claims.nonce);
    let connected = async {
        let tokens = gitlab::exchange_code(settings, code, &verifier).await?;
        let user = gitlab::user(settings, &tokens.access_token).await?;
        Ok::<_, PlatformError>((tokens, user))
    }
    .await;
    match connected {
        Ok((tokens, user)) => {
            store::record_gitlab(env, &claims.owner(), &user.username, &tokens).await?;
            back_to_dashboard(settings, Platform::Gitlab, DashboardCode::Success)
        }
        Err(e) => {
            console_error!("gitlab connect: {}", e.into_api());
            back_to_dashboard(settings, Platform::Gitlab, DashboardCode::ExchangeFailed)
        }
    }
}

/// The user-connect routes exist only with `FEATURE_GITHUB_USER_TOKENS=true`.
fn user_tokens_enabled(settings: &Platforms) -> Result<(), ApiError> {
    if settings.github_user_tokens {
        Ok(())
    } else {
        Err(ApiError::NotFound("no such route".into()))
    }
}

/// `POST /api/integrations/github/user-connect` → `{authorize_url}` (the caller's own GitHub
/// identity; a signed, single-use, 10-minute state bound to them).
pub async fn github_user_connect(env: &Env, claims: &UserClaims) -> Handled {
    let settings = &config::get(env).platforms;
    user_tokens_enabled(settings)?;
    authz::require_gastown_access(claims)?;
    let owner = Owner::User(claims.user_id.clone());
    let (state, _) = new_state(settings, StateKind::GithubUserConnect, claims, &owner)?;
    let url = user_tokens::authorize_url(settings, &state).map_err(PlatformError::into_api)?;
    #[derive(Serialize)]
    struct Out {
        authorize_url: String,
    }
    Ok(json(200, &Out { authorize_url: url }))
}

/// `GET /api/integrations/github/user-connect/callback?code&state` (or `?error=…&state`).
pub async fn github_user_callback(req: &Request, env: &Env) -> Handled {
    let settings = &config::get(env).platforms;
    user_tokens_enabled(settings)?;
    let params = Params::of(req);
    let back = |code| back_to_dashboard(settings, Platform::Github, code);
    let Some(claims) = accept_state(
        env,
        settings,
        params.get("state"),
        StateKind::GithubUserConnect,
    )
    .await?
    else {
        return back(DashboardCode::InvalidState);
    };
    if let Some(error) = params.get("error") {
        console_error!("github user-connect: GitHub answered {error}");
        return back(DashboardCode::AccessDenied);
    }
    let Some(code) = params.get("code") else {
        return back(DashboardCode::InvalidRequest);
    };
    let redirect = user_tokens::redirect_uri(settings);
    let Some(tokens) = github_exchange(settings, code, &redirect, "github user-connect").await
    else {
        return back(DashboardCode::ExchangeFailed);
    };
    let who = match user_tokens::user(settings, &tokens.access_token).await {
        Ok(u) => u,
        Err(e) => {
            console_error!("github user-connect: {}", e.into_api());
            return back(DashboardCode::ExchangeFailed);
        }
    };
    user_tokens::upsert(env, claims.user_id.as_str(), &who, &tokens).await?;
    back(DashboardCode::Success)
}

/// `GET /api/integrations/github/user-connect`: `not_connected`, `connected` or `revoked`.
pub async fn github_user_status(env: &Env, claims: &UserClaims) -> Handled {
    user_tokens_enabled(&config::get(env).platforms)?;
    authz::require_gastown_access(claims)?;
    Ok(json(
        200,
        &user_tokens::status(env, claims.user_id.as_str()).await?,
    ))
}

/// `DELETE /api/integrations/github/user-connect`: revokes the grant at GitHub and deletes it.
pub async fn github_user_disconnect(env: &Env, claims: &UserClaims) -> Handled {
    user_tokens_enabled(&config::get(env).platforms)?;
    authz::require_gastown_access(claims)?;
    let deleted = user_tokens::disconnect(env, claims.user_id.as_str()).await?;
    #[derive(Serialize)]
    struct Out {
        deleted: bool,
    }
    Ok(json(200, &Out { deleted }))
}

//! Platform integrations: the GitHub App install flow, the GitLab OAuth flow, listing and
//! deleting integrations, the repository picker, git tokens for rigs, and GitHub's webhook.
//!
//! The two redirects back from GitHub and GitLab carry no bearer token: their signed,
//! single-use `state` (10 minutes, bound to the user and the owner the integration will belong
//! to) is what authenticates them. They answer with a 302 to `DASHBOARD_URL` carrying one
//! friendly code; what the provider said goes to the log, never into the URL.

use crate::config::{self, Platforms};
use crate::dos::town as town_do;
use crate::http::json;
use crate::platforms::{git_token, github, gitlab, store, user_tokens, PlatformError};
use crate::rig_index;
use gastown_core::auth::UserClaims;
use gastown_core::authz::{self, ContainerCaller};
use gastown_core::error::ApiError;
use gastown_core::ids::{IntegrationId, OrgId, RigId};
use gastown_core::integrations::{
    self, DashboardCode, IntegrationStatus, IntegrationSummary, Platform, Repository, StateClaims,
    StateKind, REPO_CACHE_TTL_SECS, STATE_TTL_SECS,
};
use gastown_core::model::Owner;
use gastown_core::protocol::town::RigCredentials;
use serde::{Deserialize, Serialize};
use worker::{console_error, Env, Request, Response};

type Handled = Result<Response, ApiError>;

/// Largest webhook body read (GitHub's installation payloads list repositories).
const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;

fn query(req: &Request) -> Vec<(String, String)> {
    let url = req.inner().url();
    let Some((_, q)) = url.split_once('?') else {
        return Vec::new();
    };
    let q = q.split_once('#').map_or(q, |(q, _)| q);
    q.split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| gastown_core::ids::percent_decode(&s.replace('+', " "));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

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
    let params = query(req);
    let back = |code| back_to_dashboard(settings, Platform::Github, code);
    let Some(claims) = accept_state(
        env,
        settings,
        param(&params, "state"),
        StateKind::GithubInstall,
    )
    .await?
    else {
        return back(DashboardCode::InvalidState);
    };
    let Some(installation_id) = param(&params, "installation_id")
        .filter(|id| id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()))
    else {
        return back(DashboardCode::InvalidRequest);
    };
    let Some(code) = param(&params, "code") else {
        return back(DashboardCode::AuthorizationRequired);
    };
    let redirect = user_tokens::install_redirect_uri(settings);
    let tokens = match user_tokens::exchange_code(settings, code, &redirect).await {
        Ok(t) => t,
        Err(user_tokens::Refused::Grant) => return back(DashboardCode::ExchangeFailed),
        Err(user_tokens::Refused::Other(e)) => {
            console_error!("github install: {}", e.into_api());
            return back(DashboardCode::ExchangeFailed);
        }
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
    let params = query(req);
    let Some(claims) = accept_state(
        env,
        settings,
        param(&params, "state"),
        StateKind::GitlabConnect,
    )
    .await?
    else {
        return back_to_dashboard(settings, Platform::Gitlab, DashboardCode::InvalidState);
    };
    if param(&params, "error").is_some() {
        return back_to_dashboard(settings, Platform::Gitlab, DashboardCode::AccessDenied);
    }
    let Some(code) = param(&params, "code") else {
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

/// An owner's integrations (members read).
pub async fn list(env: &Env, owner: &Owner) -> Handled {
    Ok(json(200, &store::list(env, owner).await?))
}

/// The integration, if the caller may act on it: read as the user or an org member, change as
/// the user or an org owner.
async fn owned_row(
    env: &Env,
    claims: &UserClaims,
    id: &IntegrationId,
    changes: bool,
) -> Result<store::Row, ApiError> {
    authz::require_gastown_access(claims)?;
    let row = store::get(env, id.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound("integration not found".into()))?;
    let integration = row.public();
    let owner = match integration.owner_type {
        gastown_core::model::OwnerType::User => Owner::User(
            gastown_core::ids::UserId::parse(&integration.owner_id).map_err(ApiError::internal)?,
        ),
        gastown_core::model::OwnerType::Org => {
            Owner::Org(OrgId::parse(&integration.owner_id).map_err(ApiError::internal)?)
        }
    };
    authz::owned(claims, &owner, changes)
        .map_err(|_| ApiError::Forbidden("this integration belongs to another owner".into()))?;
    Ok(row)
}

/// `DELETE /api/integrations/:id`.
pub async fn delete(env: &Env, claims: &UserClaims, id: &IntegrationId) -> Handled {
    let row = owned_row(env, claims, id, true).await?;
    store::delete(env, &row.id).await?;
    #[derive(Serialize)]
    struct Deleted<'a> {
        id: &'a str,
        deleted: bool,
    }
    Ok(json(
        200,
        &Deleted {
            id: &row.id,
            deleted: true,
        },
    ))
}

/// The integration's repositories: from the cache while it is fresh, else from the provider.
async fn repositories_of(
    env: &Env,
    row: store::Row,
    refresh: bool,
) -> Result<Vec<Repository>, ApiError> {
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

/// `GET /api/integrations/:id/repositories?q=&refresh=1`.
pub async fn repositories(
    req: &Request,
    env: &Env,
    claims: &UserClaims,
    id: &IntegrationId,
) -> Handled {
    let row = owned_row(env, claims, id, false).await?;
    let params = query(req);
    let refresh = matches!(param(&params, "refresh"), Some("1" | "true"));
    let q = param(&params, "q").map(str::to_lowercase);
    let repos = repositories_of(env, row, refresh).await?;
    let shown: Vec<&Repository> = repos
        .iter()
        .filter(|r| {
            q.as_ref()
                .is_none_or(|q| r.full_name.to_lowercase().contains(q.as_str()))
        })
        .collect();
    Ok(json(200, &shown))
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
    let cached = repositories_of(env, row, false).await?;
    if let Some(found) = find(cached) {
        return Ok(found);
    }
    // Not in the cache: it may be new. Ask the provider once.
    let row = store::get(env, id)
        .await?
        .ok_or_else(|| ApiError::invalid("platform_integration_id", "is not an integration"))?;
    find(repositories_of(env, row, true).await?)
        .ok_or_else(|| ApiError::invalid("repo", "is not a repository of this integration"))
}

/// What a rig shows of its integration (`None` for a rig without one, or one since deleted).
pub async fn summary(env: &Env, id: &str) -> Result<Option<IntegrationSummary>, ApiError> {
    Ok(store::get(env, id)
        .await?
        .map(|row| IntegrationSummary::from(&row.public())))
}

/// `POST /api/towns/:townId/rigs/:rigId/git-token` (the town's container token).
pub async fn container_git_token(env: &Env, caller: &ContainerCaller) -> Handled {
    let rig_id = caller
        .rig_id
        .clone()
        .ok_or_else(|| ApiError::BadRequest("the route names the rig".into()))?;
    let creds = town_do::stub(env, &caller.town_id)?
        .call(RigCredentials {
            credential: Some(caller.credential),
            rig_id,
        })
        .await?;
    Ok(json(200, &git_token::for_rig(env, creds).await?))
}

/// `POST /api/internal/rigs/:rigId/git-token` (the internal key).
pub async fn internal_git_token(env: &Env, rig: &RigId) -> Handled {
    let location = rig_index::find(env, rig)
        .await?
        .ok_or_else(|| ApiError::NotFound("rig not found".into()))?;
    let creds = town_do::stub(env, &location.town_id)?
        .call(RigCredentials {
            credential: None,
            rig_id: rig.clone(),
        })
        .await?;
    Ok(json(200, &git_token::for_rig(env, creds).await?))
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
    let params = query(req);
    let back = |code| back_to_dashboard(settings, Platform::Github, code);
    let Some(claims) = accept_state(
        env,
        settings,
        param(&params, "state"),
        StateKind::GithubUserConnect,
    )
    .await?
    else {
        return back(DashboardCode::InvalidState);
    };
    if let Some(error) = param(&params, "error") {
        console_error!("github user-connect: GitHub answered {error}");
        return back(DashboardCode::AccessDenied);
    }
    let Some(code) = param(&params, "code") else {
        return back(DashboardCode::InvalidRequest);
    };
    let redirect = user_tokens::redirect_uri(settings);
    let tokens = match user_tokens::exchange_code(settings, code, &redirect).await {
        Ok(t) => t,
        Err(user_tokens::Refused::Grant) => return back(DashboardCode::ExchangeFailed),
        Err(user_tokens::Refused::Other(e)) => {
            console_error!("github user-connect: {}", e.into_api());
            return back(DashboardCode::ExchangeFailed);
        }
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

/// `DELETE /api/internal/users/:userId`: personal data deletion. The user's GitHub grants are
/// revoked (best effort) and their token rows deleted; their personal integrations and personal
/// towns (containers stopped, DO storage wiped) go. Idempotent.
pub async fn delete_user(env: &Env, user: &gastown_core::ids::UserId) -> Handled {
    user_tokens::delete_user(env, user.as_str()).await?;
    let owner = Owner::User(user.clone());
    let integrations = store::list(env, &owner).await?;
    for i in &integrations {
        store::delete(env, &i.id).await?;
    }
    let mut towns = 0u32;
    loop {
        let page = crate::dos::owner::stub(env, &owner)?
            .call(gastown_core::protocol::owner::ListTowns::default())
            .await?
            .parse()?;
        if page.is_empty() {
            break;
        }
        for town in page {
            match crate::handlers::owned::delete_town(env, &owner, town.id).await {
                Ok(_) | Err(ApiError::NotFound(_)) => towns += 1,
                Err(e) => return Err(e),
            }
        }
    }
    #[derive(Serialize)]
    struct Out {
        deleted: bool,
        towns: u32,
        integrations: usize,
    }
    Ok(json(
        200,
        &Out {
            deleted: true,
            towns,
            integrations: integrations.len(),
        },
    ))
}

#[derive(Deserialize)]
struct AuthorizationEvent {
    action: String,
    sender: Sender,
}

#[derive(Deserialize)]
struct Sender {
    id: u64,
}

#[derive(Deserialize)]
struct InstallationEvent {
    action: String,
    installation: InstallationRef,
}

#[derive(Deserialize)]
struct InstallationRef {
    id: u64,
}

/// `POST /api/webhooks/github`: `X-Hub-Signature-256` is checked (in constant time) before the
/// body is read as anything; `installation` `deleted` / `suspend` / `unsuspend` set the
/// integration's status. Other events: 204.
///
/// Replays change nothing. A delivery (`X-GitHub-Delivery`) is applied once: a redelivery or a
/// byte-for-byte replay of a captured one answers 200 `{"duplicate": true}`. And because the
/// signature covers the body but not that header, an installation event is never taken at its
/// word: it only prompts a read of the installation from GitHub, and the state GitHub reports
/// now is what is recorded, so no replayed `unsuspend` can undo a later `suspend`.
pub async fn github_webhook(req: &mut Request, env: &Env) -> Handled {
    let settings = &config::get(env).platforms;
    let signature = req.headers().get("x-hub-signature-256").ok().flatten();
    let event = req.headers().get("x-github-event").ok().flatten();
    let delivery = req.headers().get("x-github-delivery").ok().flatten();
    let body = req
        .bytes()
        .await
        .map_err(|_| ApiError::BadRequest("unreadable body".into()))?;
    if body.len() > MAX_WEBHOOK_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    let secret = settings
        .github_webhook_secret
        .as_deref()
        .unwrap_or_default();
    if !integrations::github_signature_ok(secret.as_bytes(), &body, signature.as_deref()) {
        return Err(ApiError::Unauthorized(
            "missing or invalid webhook signature",
        ));
    }
    let delivery = delivery
        .as_deref()
        .and_then(|id| integrations::delivery_key(Platform::Github, id))
        .ok_or_else(|| ApiError::BadRequest("missing or malformed X-GitHub-Delivery".into()))?;
    if !store::use_nonce(
        env,
        &delivery,
        config::now_s() + integrations::WEBHOOK_DELIVERY_TTL_SECS,
    )
    .await?
    {
        #[derive(Serialize)]
        struct Duplicate {
            duplicate: bool,
        }
        return Ok(json(200, &Duplicate { duplicate: true }));
    }
    if event.as_deref() == Some("github_app_authorization") {
        let parsed: AuthorizationEvent = serde_json::from_slice(&body)
            .map_err(|e| ApiError::InvalidJson(gastown_core::body::json_error_summary(&e)))?;
        if parsed.action != "revoked" {
            return Ok(Response::empty()
                .map_err(ApiError::internal)?
                .with_status(204));
        }
        let updated =
            user_tokens::revoke_github_user(env, parsed.sender.id, "user_revoked").await?;
        #[derive(Serialize)]
        struct Revoked {
            updated: usize,
        }
        return Ok(json(200, &Revoked { updated }));
    }
    if event.as_deref() != Some("installation") {
        return Ok(Response::empty()
            .map_err(ApiError::internal)?
            .with_status(204));
    }
    let parsed: InstallationEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidJson(gastown_core::body::json_error_summary(&e)))?;
    if !matches!(parsed.action.as_str(), "deleted" | "suspend" | "unsuspend") {
        return Ok(Response::empty()
            .map_err(ApiError::internal)?
            .with_status(204));
    }
    let installation_id = parsed.installation.id.to_string();
    let Some(row) = store::by_installation(env, &installation_id).await? else {
        return Ok(json(200, &Updated { updated: 0 }));
    };
    // What GitHub says of the installation now, whatever the event claimed.
    let (status, code) = match github::installation(settings, &installation_id).await {
        Ok(None) => (IntegrationStatus::Revoked, Some("installation_deleted")),
        Ok(Some(i)) if i.suspended_at.is_some() => {
            (IntegrationStatus::Suspended, Some("suspended"))
        }
        Ok(Some(_)) => (IntegrationStatus::Active, None),
        Err(e) => {
            // Nothing was applied: a redelivery of this delivery must not count as a replay.
            store::forget_nonce(env, &delivery).await?;
            let e = e.into_api();
            console_error!("github webhook: reading the installation: {e}");
            return Err(e);
        }
    };
    let updated = if row.status == status {
        0
    } else {
        store::set_status(env, &row.id, status, code).await?;
        1
    };
    Ok(json(200, &Updated { updated }))
}

#[derive(Serialize)]
struct Updated {
    updated: u32,
}

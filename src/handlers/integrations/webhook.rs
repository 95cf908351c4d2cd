//! The providers' webhooks. GitHub's: signed deliveries, each applied once, that revoke user
//! grants, move an installation's integration between active, suspended and revoked, and ask
//! the town that follows a pull request to read it again (`pull_request`,
//! `pull_request_review`, `check_run`, `check_suite`). GitLab's merge request and pipeline
//! hooks, with their secret token, do the same for merge requests. No delivery is taken at its
//! word: each only prompts a read from the provider.

use crate::config;
use crate::dos::town;
use crate::http::json;
use crate::platforms::{github, pulls, store, user_tokens};
use gastown_core::error::ApiError;
use gastown_core::ids::TownId;
use gastown_core::integrations::{self, IntegrationStatus, Platform};
use gastown_core::protocol::town::RefinePullRequest;
use serde::{Deserialize, Serialize};
use worker::{console_error, Env, Request, Response};

type Handled = Result<Response, ApiError>;

/// Largest webhook body read (GitHub's installation payloads list repositories).
const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;

/// A delivery's body, at most [`MAX_WEBHOOK_BYTES`].
async fn read_body(req: &mut Request) -> Result<Vec<u8>, ApiError> {
    let body = req
        .bytes()
        .await
        .map_err(|_| ApiError::BadRequest("unreadable body".into()))?;
    if body.len() > MAX_WEBHOOK_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(body)
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
    let body = read_body(req).await?;
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
    if let Some(kind @ ("pull_request" | "pull_request_review" | "check_run" | "check_suite")) =
        event.as_deref()
    {
        return github_pull_event(env, kind, &body).await;
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

#[derive(Deserialize)]
struct Number {
    number: u64,
}

#[derive(Deserialize)]
struct CheckHolder {
    #[serde(default)]
    pull_requests: Vec<Number>,
}

#[derive(Deserialize)]
struct RepositoryRef {
    full_name: String,
}

/// What a pull request's delivery names: the repository, the installation, the numbers.
#[derive(Deserialize)]
struct PullEvent {
    repository: RepositoryRef,
    installation: Option<InstallationRef>,
    pull_request: Option<Number>,
    check_run: Option<CheckHolder>,
    check_suite: Option<CheckHolder>,
}

#[derive(Serialize)]
struct Refreshed {
    refreshed: usize,
}

/// Asks each town that follows one of `numbers` of `repo` to read it now. A delivery whose
/// installation is not the one that opened the pull request is refused (403), before any town
/// is asked.
async fn refresh_pulls(
    env: &Env,
    platform: Platform,
    repo: &str,
    numbers: &[u64],
    installation: Option<&str>,
) -> Handled {
    let mut found = Vec::new();
    for number in numbers.iter().take(20) {
        found.extend(pulls::indexed(env, platform, repo, *number).await?);
    }
    if found
        .iter()
        .any(|row| row.installation_id.is_some() && row.installation_id.as_deref() != installation)
    {
        return Err(ApiError::Forbidden(
            "the delivery's installation did not open this pull request".into(),
        ));
    }
    let mut refreshed = 0;
    for row in found {
        let Ok(town_id) = TownId::parse(&row.town_id) else {
            continue;
        };
        // One town's failure is its own (its poll reads it later): the others still hear.
        match town::stub(env, &town_id)?
            .call(RefinePullRequest {
                bead_id: row.bead_id,
            })
            .await
        {
            Ok(answer) if answer.state.is_some() => refreshed += 1,
            Ok(_) => {}
            Err(e) => {
                console_error!("webhook: town {town_id} could not read its pull request: {e}")
            }
        }
    }
    Ok(json(200, &Refreshed { refreshed }))
}

async fn github_pull_event(env: &Env, kind: &str, body: &[u8]) -> Handled {
    let parsed: PullEvent = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(gastown_core::body::json_error_summary(&e)))?;
    let numbers: Vec<u64> = match kind {
        "check_run" => parsed
            .check_run
            .map(|c| c.pull_requests)
            .unwrap_or_default(),
        "check_suite" => parsed
            .check_suite
            .map(|c| c.pull_requests)
            .unwrap_or_default(),
        _ => parsed.pull_request.into_iter().collect(),
    }
    .into_iter()
    .map(|n| n.number)
    .collect();
    let installation = parsed.installation.map(|i| i.id.to_string());
    refresh_pulls(
        env,
        Platform::Github,
        &parsed.repository.full_name,
        &numbers,
        installation.as_deref(),
    )
    .await
}

#[derive(Deserialize)]
struct GitlabProject {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct Iid {
    iid: u64,
}

/// A merge request hook (`object_kind: merge_request`) or a pipeline hook of a merge request's
/// pipeline (`object_kind: pipeline`, its `merge_request`).
#[derive(Deserialize)]
struct GitlabHook {
    object_kind: String,
    project: Option<GitlabProject>,
    object_attributes: Option<serde_json::Value>,
    merge_request: Option<Iid>,
}

/// `POST /api/webhooks/gitlab`: `X-Gitlab-Token` must be `GITLAB_WEBHOOK_SECRET` (compared in
/// constant time) before the body is read as anything. A merge request's hook, or its
/// pipeline's, asks the town that follows it to read it now; other hooks: 204.
pub async fn gitlab_webhook(req: &mut Request, env: &Env) -> Handled {
    let settings = &config::get(env).platforms;
    let token = req.headers().get("x-gitlab-token").ok().flatten();
    // The token first: nothing of an unauthenticated request's body is read.
    let secret = settings
        .gitlab_webhook_secret
        .as_deref()
        .unwrap_or_default();
    if !integrations::gitlab_token_ok(secret.as_bytes(), token.as_deref()) {
        return Err(ApiError::Unauthorized("missing or invalid X-Gitlab-Token"));
    }
    let body = read_body(req).await?;
    let hook: GitlabHook = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidJson(gastown_core::body::json_error_summary(&e)))?;
    let iid = match hook.object_kind.as_str() {
        "merge_request" => hook
            .object_attributes
            .as_ref()
            .and_then(|a| a.get("iid"))
            .and_then(serde_json::Value::as_u64),
        "pipeline" => hook.merge_request.map(|m| m.iid),
        _ => None,
    };
    let (Some(iid), Some(project)) = (iid, hook.project) else {
        return Ok(Response::empty()
            .map_err(ApiError::internal)?
            .with_status(204));
    };
    refresh_pulls(
        env,
        Platform::Gitlab,
        &project.path_with_namespace,
        &[iid],
        None,
    )
    .await
}

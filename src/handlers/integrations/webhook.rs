//! GitHub's webhook: signed deliveries, each applied once, that revoke user grants and move an
//! installation's integration between active, suspended and revoked.

use crate::config;
use crate::http::json;
use crate::platforms::{github, store, user_tokens};
use gastown_core::error::ApiError;
use gastown_core::integrations::{self, IntegrationStatus, Platform};
use serde::{Deserialize, Serialize};
use worker::{console_error, Env, Request, Response};

type Handled = Result<Response, ApiError>;

/// Largest webhook body read (GitHub's installation payloads list repositories).
const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;

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

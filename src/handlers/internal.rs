//! Internal routes (`x-internal-api-key`): operator and service views.

use crate::dos::{owner, town};
use crate::http::json;
use crate::rig_index;
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId};
use gastown_core::protocol::owner::GetRig;
#[cfg(feature = "test-hooks")]
use gastown_core::protocol::town::DropAlarm;
use gastown_core::protocol::town::{Health, IssueSandboxToken};
use worker::{Env, Response};

/// The town's main-loop state: next alarm, runs so far, last run. 404 for unknown or destroyed.
pub async fn town_health(env: &Env, town_id: &TownId) -> Result<Response, ApiError> {
    let health = town::stub(env, town_id)?.call(Health {}).await?;
    Ok(json(200, &health))
}

/// Which town and owner hold a rig. The owner DO confirms it: an index row whose rig is gone
/// is dropped and answers 404.
pub async fn rig_lookup(env: &Env, rig: &RigId) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound("rig not found".into());
    let location = rig_index::find(env, rig).await?.ok_or_else(not_found)?;
    let held = owner::stub(env, &location.owner()?)?
        .call(GetRig {
            rig_id: rig.clone(),
        })
        .await;
    match held {
        Ok(found) if found.parse()?.town_id == location.town_id => Ok(json(200, &location)),
        Ok(_) | Err(ApiError::NotFound(_)) => {
            rig_index::remove(env, std::slice::from_ref(rig)).await?;
            Err(not_found())
        }
        Err(e) => Err(e),
    }
}

/// Test hook (the `test-hooks` build only): drops a town's alarm.
#[cfg(feature = "test-hooks")]
pub async fn drop_town_alarm(env: &Env, town_id: &TownId) -> Result<Response, ApiError> {
    let ack = town::stub(env, town_id)?.call(DropAlarm {}).await?;
    Ok(json(200, &ack))
}

/// A fresh gateway token for an internal service (the seed's contract).
pub async fn sandbox_token(env: &Env, town_id: &TownId) -> Result<Response, ApiError> {
    let issued = town::stub(env, town_id)?
        .call(IssueSandboxToken { credential: None })
        .await?;
    Ok(json(200, &issued))
}

/// Test hook (the `test-hooks` build only), until dispatch creates agents: registers a
/// polecat or refinery of a rig, `{role, rig_id, name}`.
#[cfg(feature = "test-hooks")]
pub async fn register_agent(
    req: &mut worker::Request,
    env: &Env,
    town_id: &TownId,
) -> Result<Response, ApiError> {
    use gastown_core::protocol::town::RegisterAgent;
    let body = crate::http::read_json_body(req).await?;
    let register: RegisterAgent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidJson(gastown_core::body::json_error_summary(&e)))?;
    let agent = town::stub(env, town_id)?.call(register).await?;
    Ok(json(201, &agent))
}

//! Internal routes (`x-internal-api-key`): operator and service views.

use crate::dos::{owner, town};
use crate::http::json;
use crate::rig_index;
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId};
use gastown_core::protocol::owner::GetRig;
#[cfg(feature = "test-hooks")]
use gastown_core::protocol::town::DropAlarm;
use gastown_core::protocol::town::Health;
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

//! Internal routes (`x-internal-api-key`): operator and service views.

use crate::config;
use crate::dos::town;
use crate::http::json;
use crate::rig_index;
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId};
use gastown_core::protocol::town::{DropAlarm, Health};
use worker::{Env, Response};

/// The town's main-loop state: next alarm, runs so far, last run. 404 for unknown or destroyed.
pub async fn town_health(env: &Env, town_id: &TownId) -> Result<Response, ApiError> {
    let health = town::stub(env, town_id)?.call(Health {}).await?;
    Ok(json(200, &health))
}

/// Which town and owner hold a rig.
pub async fn rig_lookup(env: &Env, rig: &RigId) -> Result<Response, ApiError> {
    match rig_index::find(env, rig).await? {
        Some(location) => Ok(json(200, &location)),
        None => Err(ApiError::NotFound("rig not found".into())),
    }
}

/// Test hook: drops a town's alarm. A plain 404 unless `GASTOWN_TEST_HOOKS=1`.
pub async fn drop_town_alarm(env: &Env, town_id: &TownId) -> Result<Response, ApiError> {
    if !config::get(env).test_hooks {
        return Err(ApiError::NotFound("no such route".into()));
    }
    let ack = town::stub(env, town_id)?.call(DropAlarm {}).await?;
    Ok(json(200, &ack))
}

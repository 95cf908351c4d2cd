//! Git tokens for a rig, asked by the town's container (for the rig its token names) or with the
//! internal key: the town's Durable Object says which credentials the rig may use, and
//! [`git_token::for_rig`] mints or refreshes the token.

use crate::dos::town as town_do;
use crate::http::json;
use crate::platforms::git_token;
use crate::rig_index;
use gastown_core::authz::ContainerCaller;
use gastown_core::error::ApiError;
use gastown_core::ids::RigId;
use gastown_core::protocol::town::RigCredentials;
use worker::{Env, Response};

type Handled = Result<Response, ApiError>;

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

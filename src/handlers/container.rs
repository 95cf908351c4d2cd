//! Container routes: called by a town's agents with the town's container token (or a legacy
//! agent token), already verified and scoped to the route's town by the router.

use crate::dos::town;
use crate::http::{json, json_reply};
use gastown_core::authz::ContainerCaller;
use gastown_core::error::ApiError;
use gastown_core::protocol::town::{Heartbeat, IssueContainerToken, IssueSandboxToken, MayorRigs};
use worker::{Env, Response};

type Handled = Result<Response, ApiError>;

/// A fresh container token for a container holding a valid one: the one route whose purpose is
/// to hand a token to its rightful caller. Its identity comes from the town, not the old token.
pub async fn refresh_token(env: &Env, caller: &ContainerCaller) -> Handled {
    let issued = town::stub(env, &caller.town_id)?
        .call(IssueContainerToken {
            credential: caller.credential,
        })
        .await?;
    Ok(json(200, &issued))
}

pub async fn heartbeat(env: &Env, caller: &ContainerCaller) -> Handled {
    let (Some(rig_id), Some(agent_id)) = (caller.rig_id.clone(), caller.agent_id.clone()) else {
        return Err(ApiError::BadRequest(
            "a heartbeat names its rig and agent".into(),
        ));
    };
    let ack = town::stub(env, &caller.town_id)?
        .call(Heartbeat {
            credential: caller.credential,
            rig_id,
            agent_id,
        })
        .await?;
    Ok(json(200, &ack))
}

pub async fn mayor_rigs(env: &Env, caller: &ContainerCaller) -> Handled {
    let rigs = town::stub(env, &caller.town_id)?
        .call(MayorRigs {
            credential: caller.credential,
        })
        .await?;
    Ok(json_reply(200, rigs))
}

/// The container's own gateway-token refresh: a container token of the town's current
/// generation gets a fresh 24-hour sandbox token (legacy agent tokens were refused by the
/// router: this route names no agent).
pub async fn sandbox_token(env: &Env, caller: &ContainerCaller) -> Handled {
    let issued = town::stub(env, &caller.town_id)?
        .call(IssueSandboxToken {
            credential: Some(caller.credential),
        })
        .await?;
    Ok(json(200, &issued))
}

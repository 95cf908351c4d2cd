//! Town routes, `/api/towns/:townId/...` (user token). One call to the town's own DO resolves
//! its ownership; the decision is `authz::town_role` over that record and the token's claims, so
//! no owner DO is consulted and personal and org towns take the same path.

use crate::dos::{container as container_do, owner, town as town_do};
use crate::http::{json, json_reply, page, query, read_json_body};
use gastown_core::auth::UserClaims;
use gastown_core::authz::{self, TownRole};
use gastown_core::beads::{BeadFilter, BeadPatch, NewBead};
use gastown_core::error::ApiError;
use gastown_core::ids::{BeadId, TownId};
use gastown_core::model::Town;
use gastown_core::protocol::container::Status;
use gastown_core::protocol::owner::{ListRigs, SetTownStatus};
use gastown_core::protocol::town as t;
use gastown_core::town_config::ConfigPatch;
use serde::Serialize;
use worker::{Env, Request, Response};

type Handled = Result<Response, ApiError>;

/// The town and what the caller is to it. 404 for unknown or destroyed towns, 403 for callers
/// the town's ownership does not admit.
///
/// # Errors
/// As above.
pub async fn access(
    env: &Env,
    claims: &UserClaims,
    town: &TownId,
) -> Result<(Town, TownRole), ApiError> {
    authz::require_gastown_access(claims)?;
    let town = town_do::stub(env, town)?.call(t::Get {}).await?;
    let role = authz::town_role(claims, &town)?;
    Ok((town, role))
}

fn require_manager(role: TownRole, what: &str) -> Result<(), ApiError> {
    if role.manages_town() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "only the town's owner or creator, or an org owner, may {what}"
        )))
    }
}

pub async fn list_rigs(req: &Request, env: &Env, town: &Town) -> Handled {
    let list = ListRigs {
        town_id: town.id.clone(),
        page: page(req)?,
    };
    let rigs = owner::stub(env, &town.owner)?.call(list).await?;
    Ok(json_reply(200, rigs))
}

/// Everyone the town admits may read its config; secrets are always masked.
pub async fn get_config(env: &Env, town: &Town) -> Handled {
    let config = town_do::stub(env, &town.id)?.call(t::GetConfig {}).await?;
    Ok(json(200, &config.view(town)))
}

/// Only the personal owner, an org owner or the town's creator may change config. The body is
/// validated here, so a malformed patch never reaches the town's DO.
pub async fn patch_config(req: &mut Request, env: &Env, town: &Town, role: TownRole) -> Handled {
    require_manager(role, "change its config")?;
    let patch = ConfigPatch::parse(&read_json_body(req).await?)?;
    let config = town_do::stub(env, &town.id)?
        .call(t::PatchConfig { patch })
        .await?;
    Ok(json(200, &config.view(town)))
}

/// State, env var names and token expiry of the town's container; never a value or a token.
pub async fn get_container(env: &Env, town: &Town) -> Handled {
    let status = container_do::stub(env, &town.id)?.call(Status {}).await?;
    Ok(json(200, &status))
}

/// Starts the town's container with a fresh token and the town's env. Anyone the town admits
/// may start it; the token carries the town owner's identity, never the caller's.
pub async fn start_container(env: &Env, town: &Town) -> Handled {
    town_do::stub(env, &town.id)?
        .call(t::StartContainer {})
        .await?;
    get_container(env, town).await
}

/// Pushes a fresh container token now. For those who manage the town; answers with the new
/// expiry only.
pub async fn force_token_refresh(env: &Env, town: &Town, role: TownRole) -> Handled {
    require_manager(role, "rotate its container token")?;
    let pushed = town_do::stub(env, &town.id)?
        .call(t::ForceTokenRefresh {})
        .await?;
    #[derive(Serialize)]
    struct Expiry {
        token_expires_at: Option<i64>,
    }
    Ok(json(
        200,
        &Expiry {
            token_expires_at: pushed.token_expires_at,
        },
    ))
}

/// Stops the town: its container stops, its container tokens are rotated away and its alarm
/// ends; every row stays. For those who manage the town. Idempotent.
pub async fn stop(env: &Env, town: &Town, role: TownRole) -> Handled {
    require_manager(role, "stop it")?;
    let stopped = town_do::stub(env, &town.id)?.call(t::StopTown {}).await?;
    record_status(env, &stopped).await?;
    Ok(json(200, &stopped))
}

/// Starts a stopped town with fresh container and gateway tokens. For those who manage the
/// town. Idempotent.
pub async fn start(env: &Env, town: &Town, role: TownRole) -> Handled {
    require_manager(role, "start it")?;
    let started = town_do::stub(env, &town.id)?.call(t::StartTown {}).await?;
    record_status(env, &started.town).await?;
    Ok(json(200, &started))
}

/// The owner DO's copy of the status, which the town lists show. The TownDO is the authority;
/// a failure here leaves the list stale until the next stop or start, and is reported.
async fn record_status(env: &Env, town: &Town) -> Result<(), ApiError> {
    owner::stub(env, &town.owner)?
        .call(SetTownStatus {
            town_id: town.id.clone(),
            status: town.status,
        })
        .await?;
    Ok(())
}

pub async fn list_agents(env: &Env, town: &Town) -> Handled {
    let agents = town_do::stub(env, &town.id)?.call(t::ListAgents {}).await?;
    Ok(json_reply(200, agents))
}

/// The town's one mayor; anyone the town admits may ensure it.
pub async fn ensure_mayor(env: &Env, town: &Town) -> Handled {
    let mayor = town_do::stub(env, &town.id)?
        .call(t::EnsureMayor {})
        .await?;
    Ok(json(200, &mayor))
}

/// `GET /api/towns/:townId/beads?status=&rig=&type=&limit=&after=`: oldest first.
pub async fn list_beads(req: &Request, env: &Env, town: &Town) -> Handled {
    let list = t::ListBeads {
        filter: BeadFilter::parse(query(req).as_deref())?,
        page: page(req)?,
    };
    let beads = town_do::stub(env, &town.id)?.call(list).await?;
    Ok(json_reply(200, beads))
}

/// `POST /api/towns/:townId/beads`, and `POST /api/towns/:townId/sling` (an issue on a rig,
/// for dispatch). The body is checked here; the town checks the rig is its own.
pub async fn create_bead(
    req: &mut Request,
    env: &Env,
    town: &Town,
    claims: &UserClaims,
    sling: bool,
) -> Handled {
    let body = read_json_body(req).await?;
    let bead = if sling {
        NewBead::parse_sling(&body)?
    } else {
        NewBead::parse(&body)?
    };
    let created = town_do::stub(env, &town.id)?
        .call(t::CreateBead {
            bead,
            created_by: claims.user_id.as_str().to_owned(),
        })
        .await?;
    Ok(json(201, &created))
}

pub async fn get_bead(env: &Env, town: &Town, bead_id: BeadId) -> Handled {
    let bead = town_do::stub(env, &town.id)?
        .call(t::GetBead { bead_id })
        .await?;
    Ok(json_reply(200, bead))
}

pub async fn patch_bead(
    req: &mut Request,
    env: &Env,
    town: &Town,
    claims: &UserClaims,
    bead_id: BeadId,
) -> Handled {
    let patch = BeadPatch::parse(&read_json_body(req).await?)?;
    let bead = town_do::stub(env, &town.id)?
        .call(t::PatchBead {
            bead_id,
            patch,
            user_id: claims.user_id.as_str().to_owned(),
        })
        .await?;
    Ok(json(200, &bead))
}

pub async fn delete_bead(env: &Env, town: &Town, bead_id: BeadId) -> Handled {
    let ack = town_do::stub(env, &town.id)?
        .call(t::DeleteBead { bead_id })
        .await?;
    Ok(json(200, &ack))
}

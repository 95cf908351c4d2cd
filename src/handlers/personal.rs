//! Personal towns and rigs: `/api/users/:userId/...`.
//!
//! Every handler first checks that the token's user is the path's user, then reads or writes the
//! user's DO. Steps that span DOs (town + owner, rig + town + index) run in an order where the
//! owner DO validates first, and undo earlier steps when a later one fails.

use crate::config::{self, new_id};
use crate::http::{call, json, read_json_body};
use crate::{rig_index, town_do, user_do};
use gastown_core::auth::UserClaims;
use gastown_core::authz;
use gastown_core::do_api::{Ack, OwnerRequest, RemovedTown, TownRequest};
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId, UserId};
use gastown_core::model::{NewRig, NewTown, Rig, Town};
use gastown_core::time::rfc3339;
use worker::{console_error, Env, Request, Response};

type Handled = Result<Response, ApiError>;

pub async fn create_town(
    req: &mut Request,
    env: &Env,
    claims: &UserClaims,
    user: &UserId,
) -> Handled {
    authz::personal(claims, user)?;
    let new = NewTown::parse(&read_json_body(req).await?)?;
    let id = TownId::parse(&new_id()?).map_err(ApiError::internal)?;
    let town = Town::personal(id, new, user, rfc3339(config::now_ms()));
    let town_stub = town_do::stub(env, &town.id)?;
    let town: Town = call(&town_stub, &TownRequest::Init { town }).await?;
    let owner = user_do::stub(env, user)?;
    match call::<_, Town>(&owner, &OwnerRequest::AddTown { town: town.clone() }).await {
        Ok(town) => Ok(json(201, &town)),
        Err(err) => {
            if let Err(undo) = call::<_, Ack>(&town_stub, &TownRequest::Destroy).await {
                console_error!("create town: could not undo town {}: {undo}", town.id);
            }
            Err(err)
        }
    }
}

pub async fn list_towns(env: &Env, claims: &UserClaims, user: &UserId) -> Handled {
    authz::personal(claims, user)?;
    let towns: Vec<Town> = call(&user_do::stub(env, user)?, &OwnerRequest::ListTowns).await?;
    Ok(json(200, &towns))
}

pub async fn get_town(env: &Env, claims: &UserClaims, user: &UserId, town: &TownId) -> Handled {
    authz::personal(claims, user)?;
    let town: Town = call(
        &user_do::stub(env, user)?,
        &OwnerRequest::GetTown {
            town_id: town.clone(),
        },
    )
    .await?;
    Ok(json(200, &town))
}

/// Ownership is checked first; then the town's DO (state and alarm) is destroyed; then the
/// owner's record and the rig index entries go.
pub async fn delete_town(env: &Env, claims: &UserClaims, user: &UserId, town: &TownId) -> Handled {
    authz::personal(claims, user)?;
    let owner = user_do::stub(env, user)?;
    let _: Town = call(
        &owner,
        &OwnerRequest::GetTown {
            town_id: town.clone(),
        },
    )
    .await?;
    let _: Ack = call(&town_do::stub(env, town)?, &TownRequest::Destroy).await?;
    let removed: RemovedTown = call(
        &owner,
        &OwnerRequest::RemoveTown {
            town_id: town.clone(),
        },
    )
    .await?;
    rig_index::remove(env, &removed.rig_ids).await?;
    Ok(json(200, &serde_json::json!({"id": town, "deleted": true})))
}

pub async fn create_rig(
    req: &mut Request,
    env: &Env,
    claims: &UserClaims,
    user: &UserId,
) -> Handled {
    authz::personal(claims, user)?;
    let new = NewRig::parse(&read_json_body(req).await?)?;
    let id = RigId::parse(&new_id()?).map_err(ApiError::internal)?;
    let rig = Rig::new(id, new, rfc3339(config::now_ms()));
    let owner = user_do::stub(env, user)?;
    let town: Town = call(
        &owner,
        &OwnerRequest::GetTown {
            town_id: rig.town_id.clone(),
        },
    )
    .await?;
    let rig: Rig = call(&owner, &OwnerRequest::AddRig { rig }).await?;
    let town_stub = town_do::stub(env, &rig.town_id)?;
    let registered =
        match call::<_, Ack>(&town_stub, &TownRequest::AddRig { rig: rig.clone() }).await {
            Ok(_) => rig_index::insert(env, &rig, &town, user.as_str()).await,
            Err(e) => Err(e),
        };
    if let Err(err) = registered {
        let undo_town = call::<_, Ack>(
            &town_stub,
            &TownRequest::RemoveRig {
                rig_id: rig.id.clone(),
            },
        )
        .await;
        let undo_owner = call::<_, Rig>(
            &owner,
            &OwnerRequest::RemoveRig {
                rig_id: rig.id.clone(),
            },
        )
        .await;
        if let (Err(e), _) | (_, Err(e)) = (undo_town, undo_owner) {
            console_error!("create rig: could not undo rig {}: {e}", rig.id);
        }
        return Err(err);
    }
    Ok(json(201, &rig))
}

pub async fn list_rigs(env: &Env, claims: &UserClaims, user: &UserId, town: &TownId) -> Handled {
    authz::personal(claims, user)?;
    let rigs: Vec<Rig> = call(
        &user_do::stub(env, user)?,
        &OwnerRequest::ListRigs {
            town_id: town.clone(),
        },
    )
    .await?;
    Ok(json(200, &rigs))
}

pub async fn get_rig(env: &Env, claims: &UserClaims, user: &UserId, rig: &RigId) -> Handled {
    authz::personal(claims, user)?;
    let rig: Rig = call(
        &user_do::stub(env, user)?,
        &OwnerRequest::GetRig {
            rig_id: rig.clone(),
        },
    )
    .await?;
    Ok(json(200, &rig))
}

pub async fn delete_rig(env: &Env, claims: &UserClaims, user: &UserId, rig: &RigId) -> Handled {
    authz::personal(claims, user)?;
    let owner = user_do::stub(env, user)?;
    let found: Rig = call(
        &owner,
        &OwnerRequest::GetRig {
            rig_id: rig.clone(),
        },
    )
    .await?;
    let _: Ack = call(
        &town_do::stub(env, &found.town_id)?,
        &TownRequest::RemoveRig {
            rig_id: rig.clone(),
        },
    )
    .await?;
    let _: Rig = call(
        &owner,
        &OwnerRequest::RemoveRig {
            rig_id: rig.clone(),
        },
    )
    .await?;
    rig_index::remove(env, std::slice::from_ref(rig)).await?;
    Ok(json(200, &serde_json::json!({"id": rig, "deleted": true})))
}

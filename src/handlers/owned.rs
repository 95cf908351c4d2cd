//! Towns and rigs through their owner DO: `/api/users/:userId/...` and `/api/orgs/:orgId/...`.
//! The router has already checked that the caller may act for the owner.
//!
//! Steps that span DOs run so that the owner DO validates first (a town or rig of another owner
//! is a 404 before anything is destroyed), and later failures undo earlier steps.

use crate::config::{self, new_id};
use crate::http::{call, json, page, read_json_body};
use crate::owner::Owner;
use crate::{rig_index, town_do};
use gastown_core::do_api::{Ack, OwnerRequest, RemovedTown, TownRequest};
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId, UserId};
use gastown_core::model::{NewRig, NewTown, Rig, Town};
use gastown_core::time::rfc3339;
use worker::{console_error, Env, Request, Response};

type Handled = Result<Response, ApiError>;

/// Creates a town owned by `owner`; `creator` is the calling user.
pub async fn create_town(req: &mut Request, env: &Env, owner: &Owner, creator: &UserId) -> Handled {
    let new = NewTown::parse(&read_json_body(req).await?)?;
    let id = TownId::parse(&new_id()?).map_err(ApiError::internal)?;
    let at = rfc3339(config::now_ms());
    let town = match owner {
        Owner::User(user) => Town::personal(id, new, user, at),
        Owner::Org(org) => Town::for_org(id, new, org, creator, at),
    };
    let town_stub = town_do::stub(env, &town.id)?;
    let town: Town = call(&town_stub, &TownRequest::Init { town }).await?;
    let add = OwnerRequest::AddTown { town: town.clone() };
    match call::<_, Town>(&owner.stub(env)?, &add).await {
        Ok(town) => Ok(json(201, &town)),
        Err(err) => {
            if let Err(undo) = call::<_, Ack>(&town_stub, &TownRequest::Destroy).await {
                console_error!("create town: could not undo town {}: {undo}", town.id);
            }
            Err(err)
        }
    }
}

pub async fn list_towns(req: &Request, env: &Env, owner: &Owner) -> Handled {
    let page = page(req)?;
    let towns: Vec<Town> = call(&owner.stub(env)?, &OwnerRequest::ListTowns { page }).await?;
    Ok(json(200, &towns))
}

pub async fn get_town(env: &Env, owner: &Owner, town: &TownId) -> Handled {
    let town: Town = call(
        &owner.stub(env)?,
        &OwnerRequest::GetTown {
            town_id: town.clone(),
        },
    )
    .await?;
    Ok(json(200, &town))
}

/// Ownership is checked first; then the town's DO (state and alarm) is destroyed; then the
/// owner's record and the rig index entries go.
pub async fn delete_town(env: &Env, owner: &Owner, town: &TownId) -> Handled {
    let owner_stub = owner.stub(env)?;
    let _: Town = call(
        &owner_stub,
        &OwnerRequest::GetTown {
            town_id: town.clone(),
        },
    )
    .await?;
    let _: Ack = call(&town_do::stub(env, town)?, &TownRequest::Destroy).await?;
    let removed: RemovedTown = call(
        &owner_stub,
        &OwnerRequest::RemoveTown {
            town_id: town.clone(),
        },
    )
    .await?;
    rig_index::remove(env, &removed.rig_ids).await?;
    Ok(json(200, &serde_json::json!({"id": town, "deleted": true})))
}

/// Creates a rig in a town of `owner`. Credential fields in the body are ignored.
pub async fn create_rig(req: &mut Request, env: &Env, owner: &Owner) -> Handled {
    let new = NewRig::parse(&read_json_body(req).await?)?;
    let id = RigId::parse(&new_id()?).map_err(ApiError::internal)?;
    let rig = Rig::new(id, new, rfc3339(config::now_ms()));
    let owner_stub = owner.stub(env)?;
    let town: Town = call(
        &owner_stub,
        &OwnerRequest::GetTown {
            town_id: rig.town_id.clone(),
        },
    )
    .await?;
    let rig: Rig = call(&owner_stub, &OwnerRequest::AddRig { rig }).await?;
    let town_stub = town_do::stub(env, &rig.town_id)?;
    let registered =
        match call::<_, Ack>(&town_stub, &TownRequest::AddRig { rig: rig.clone() }).await {
            Ok(_) => rig_index::insert(env, &rig, &town, owner.id()).await,
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
            &owner_stub,
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

pub async fn list_rigs(req: &Request, env: &Env, owner: &Owner, town: &TownId) -> Handled {
    let page = page(req)?;
    let list = OwnerRequest::ListRigs {
        town_id: town.clone(),
        page,
    };
    let rigs: Vec<Rig> = call(&owner.stub(env)?, &list).await?;
    Ok(json(200, &rigs))
}

pub async fn get_rig(env: &Env, owner: &Owner, rig: &RigId) -> Handled {
    let rig: Rig = call(
        &owner.stub(env)?,
        &OwnerRequest::GetRig {
            rig_id: rig.clone(),
        },
    )
    .await?;
    Ok(json(200, &rig))
}

pub async fn delete_rig(env: &Env, owner: &Owner, rig: &RigId) -> Handled {
    let owner_stub = owner.stub(env)?;
    let found: Rig = call(
        &owner_stub,
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
        &owner_stub,
        &OwnerRequest::RemoveRig {
            rig_id: rig.clone(),
        },
    )
    .await?;
    rig_index::remove(env, std::slice::from_ref(rig)).await?;
    Ok(json(200, &serde_json::json!({"id": rig, "deleted": true})))
}

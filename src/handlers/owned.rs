//! Towns and rigs through their owner DO: `/api/users/:userId/...` and `/api/orgs/:orgId/...`.
//! The router has already checked that the caller may act for the owner.
//!
//! Steps that span DOs run so that the owner DO validates first (a town or rig of another owner
//! is a 404 before anything is destroyed). A create that fails half-way removes what it had
//! already written, logging what it could not remove.

use crate::config::{self, new_id};
use crate::dos::owner::{self as owner_do, OwnerStub};
use crate::dos::town;
use crate::handlers::integrations;
use crate::http::{json, json_reply, page, read_json_body};
use crate::rig_index;
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId, UserId};
use gastown_core::model::{NewRig, NewTown, Owner, Rig, RigSource, Town};
use gastown_core::protocol::owner as o;
use gastown_core::protocol::town as t;
use gastown_core::time::rfc3339;
use serde::Serialize;
use worker::{console_error, Env, Request, Response};

type Handled = Result<Response, ApiError>;

/// The answer to a delete.
#[derive(Serialize)]
struct Deleted<'a, Id> {
    id: &'a Id,
    deleted: bool,
}

fn stub(env: &Env, owner: &Owner) -> Result<OwnerStub, ApiError> {
    owner_do::stub(env, owner)
}

/// Creates a town owned by `owner`; `creator` is the calling user.
pub async fn create_town(req: &mut Request, env: &Env, owner: &Owner, creator: &UserId) -> Handled {
    let new = NewTown::parse(&read_json_body(req).await?)?;
    let id = TownId::parse(&new_id()?).map_err(ApiError::internal)?;
    let town = Town::new(id, new, owner, creator, rfc3339(config::now_ms()));
    let town_stub = town::stub(env, &town.id)?;
    let town = town_stub.call(t::Init { town }).await?;
    match stub(env, owner)?.call(o::AddTown { town }).await {
        Ok(town) => Ok(json(201, &town)),
        Err(err) => {
            if let Err(undo) = town_stub.call(t::Destroy {}).await {
                console_error!("create town: could not remove the half-made town: {undo}");
            }
            Err(err)
        }
    }
}

pub async fn list_towns(req: &Request, env: &Env, owner: &Owner) -> Handled {
    let page = page(req)?;
    let towns = stub(env, owner)?.call(o::ListTowns { page }).await?;
    Ok(json_reply(200, towns))
}

pub async fn get_town(env: &Env, owner: &Owner, town_id: TownId) -> Handled {
    let town = stub(env, owner)?.call(o::GetTown { town_id }).await?;
    Ok(json_reply(200, town))
}

/// Ownership is checked first; then the town's DO (state and alarm) is destroyed; then the
/// owner's record and the rig index entries go.
pub async fn delete_town(env: &Env, owner: &Owner, town_id: TownId) -> Handled {
    let owner_stub = stub(env, owner)?;
    owner_stub
        .call(o::GetTown {
            town_id: town_id.clone(),
        })
        .await?;
    town::stub(env, &town_id)?.call(t::Destroy {}).await?;
    let removed = owner_stub
        .call(o::RemoveTown {
            town_id: town_id.clone(),
        })
        .await?;
    rig_index::remove(env, &removed.rig_ids).await?;
    Ok(json(
        200,
        &Deleted {
            id: &town_id,
            deleted: true,
        },
    ))
}

/// Creates a rig in a town of `owner`. Credential fields in the body are ignored.
pub async fn create_rig(req: &mut Request, env: &Env, owner: &Owner) -> Handled {
    let new = NewRig::parse_with(
        &read_json_body(req).await?,
        crate::config::get(env).work.allow_local_git,
    )?;
    let id = RigId::parse(&new_id()?).map_err(ApiError::internal)?;
    let owner_stub = stub(env, owner)?;
    let town = owner_stub
        .call(o::GetTown {
            town_id: new.town_id.clone(),
        })
        .await?
        .parse()?;
    let created_at = rfc3339(config::now_ms());
    let rig = match &new.source {
        RigSource::Url {
            platform_integration_id: None,
            ..
        } => Rig::new(id, new, created_at)?,
        // A rig that names an integration takes its clone URL (and so the host its tokens go
        // to) from the integration's repository; a `git_url` that names another is refused.
        RigSource::Url {
            git_url,
            platform_integration_id: Some(integration_id),
        } => {
            let repo = gastown_core::integrations::repo_full_name(git_url)
                .ok_or_else(|| ApiError::invalid("git_url", "names no owner/repository"))?;
            let found = integrations::repository_for_rig(env, owner, integration_id, &repo)
                .await
                .map_err(|e| match e {
                    ApiError::Invalid { field, message } if field == "repo" => {
                        ApiError::invalid("git_url", message)
                    }
                    e => e,
                })?;
            if !gastown_core::integrations::same_repository(git_url, &found.git_url) {
                return Err(ApiError::invalid(
                    "git_url",
                    "is not the integration's repository: leave it out, or give the repository's own URL",
                ));
            }
            let integration_id = integration_id.clone();
            Rig::from_repository(
                id,
                new,
                integration_id,
                found.git_url,
                found.default_branch,
                created_at,
            )
        }
        RigSource::Integration {
            integration_id,
            repo,
        } => {
            // The integration must be the town owner's (the route's owner is the town's).
            let found = integrations::repository_for_rig(env, owner, integration_id, repo).await?;
            let integration_id = integration_id.clone();
            Rig::from_repository(
                id,
                new,
                integration_id,
                found.git_url,
                found.default_branch,
                created_at,
            )
        }
    };
    let rig = owner_stub.call(o::AddRig { rig }).await?;
    let town_stub = town::stub(env, &rig.town_id)?;
    let registered = match town_stub.call(t::AddRig { rig: rig.clone() }).await {
        Ok(_) => rig_index::insert(env, &rig, &town).await,
        Err(e) => Err(e),
    };
    if let Err(err) = registered {
        let rig_id = rig.id.clone();
        let undo_town = town_stub
            .call(t::RemoveRig {
                rig_id: rig_id.clone(),
            })
            .await;
        let undo_owner = owner_stub.call(o::RemoveRig { rig_id }).await;
        if let (Err(e), _) | (_, Err(e)) = (undo_town.map(|_| ()), undo_owner.map(|_| ())) {
            console_error!(
                "create rig: could not remove the half-made rig {}: {e}",
                rig.id
            );
        }
        return Err(err);
    }
    Ok(json(201, &rig))
}

pub async fn list_rigs(req: &Request, env: &Env, owner: &Owner, town_id: TownId) -> Handled {
    let page = page(req)?;
    let rigs = stub(env, owner)?
        .call(o::ListRigs { town_id, page })
        .await?;
    Ok(json_reply(200, rigs))
}

/// The rig, with what it shows of its integration (`integration: null` without one).
pub async fn get_rig(env: &Env, owner: &Owner, rig_id: RigId) -> Handled {
    let rig = stub(env, owner)?
        .call(o::GetRig { rig_id })
        .await?
        .parse()?;
    let integration = match rig.platform_integration_id.as_deref() {
        Some(id) => integrations::summary(env, id).await?,
        None => None,
    };
    #[derive(Serialize)]
    struct WithIntegration {
        #[serde(flatten)]
        rig: Rig,
        integration: Option<gastown_core::integrations::IntegrationSummary>,
    }
    Ok(json(200, &WithIntegration { rig, integration }))
}

pub async fn delete_rig(env: &Env, owner: &Owner, rig_id: RigId) -> Handled {
    let owner_stub = stub(env, owner)?;
    let found = owner_stub
        .call(o::GetRig {
            rig_id: rig_id.clone(),
        })
        .await?;
    town::stub(env, &found.parse()?.town_id)?
        .call(t::RemoveRig {
            rig_id: rig_id.clone(),
        })
        .await?;
    owner_stub
        .call(o::RemoveRig {
            rig_id: rig_id.clone(),
        })
        .await?;
    rig_index::remove(env, std::slice::from_ref(&rig_id)).await?;
    Ok(json(
        200,
        &Deleted {
            id: &rig_id,
            deleted: true,
        },
    ))
}

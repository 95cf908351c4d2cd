//! Towns and rigs through their owner DO: `/api/users/:userId/...` and `/api/orgs/:orgId/...`.
//! The router has already checked that the caller may act for the owner.
//!
//! Each route is one call to the owner's DO. Creating and deleting towns and rigs span the
//! owner's record, the town's DO and the rig index: the owner's DO runs those steps itself,
//! validating first (a town or rig of another owner is a 404 before anything is destroyed)
//! and undoing a create that fails half-way. A rig from an integration has its repository
//! resolved with the provider first (`platforms::repositories`), before any DO is called.

use crate::config::{self, new_id};
use crate::dos::owner::{self as owner_do, OwnerStub};
use crate::http::{json, json_reply, page, read_json_body};
use crate::platforms::repositories;
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId, UserId};
use gastown_core::model::{NewRig, NewTown, Owner, Rig, RigSource, Town};
use gastown_core::protocol::owner as o;
use gastown_core::rig_patch::{RigChange, RigPatch, RigSourceFields, SourceChange, SourcePlan};
use gastown_core::time::rfc3339;
use serde::Serialize;
use worker::{Env, Request, Response};

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
    let town = stub(env, owner)?.call(o::CreateTown { town }).await?;
    Ok(json(201, &town))
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
/// owner's record and the rig index entries go (`o::DeleteTown`).
pub async fn delete_town(env: &Env, owner: &Owner, town_id: TownId) -> Handled {
    stub(env, owner)?
        .call(o::DeleteTown {
            town_id: town_id.clone(),
        })
        .await?;
    Ok(json(
        200,
        &Deleted {
            id: &town_id,
            deleted: true,
        },
    ))
}

/// An org owner (`user`; the router checked the role) takes over a town whose creator's
/// account was deleted. It starts nothing: the town is `stopped` until someone starts it.
pub async fn claim_town(env: &Env, owner: &Owner, town_id: TownId, user: &UserId) -> Handled {
    let town = stub(env, owner)?
        .call(o::ClaimTown {
            town_id,
            user_id: user.clone(),
        })
        .await?;
    Ok(json(200, &town))
}

/// Creates a rig in a town of `owner`. Credential fields in the body are ignored.
pub async fn create_rig(req: &mut Request, env: &Env, owner: &Owner) -> Handled {
    let new = NewRig::parse_with(
        &read_json_body(req).await?,
        crate::config::get(env).work.allow_local_git,
    )?;
    let id = RigId::parse(&new_id()?).map_err(ApiError::internal)?;
    let created_at = rfc3339(config::now_ms());
    // A rig that names an integration takes its clone URL (and so the host its tokens go to)
    // from one of the integration's repositories, which must be the town owner's (the route's
    // owner is the town's); a `git_url` that names another repository is refused.
    let (integration_id, found) = match &new.source {
        RigSource::Url {
            platform_integration_id: None,
            ..
        } => {
            let rig = Rig::new(id, new, created_at)?;
            return Ok(json(
                201,
                &stub(env, owner)?.call(o::CreateRig { rig }).await?,
            ));
        }
        RigSource::Url {
            git_url,
            platform_integration_id: Some(integration_id),
        } => {
            let repo = gastown_core::integrations::repo_full_name(git_url)
                .ok_or_else(|| ApiError::invalid("git_url", "names no owner/repository"))?;
            let found = repositories::repository_for_rig(env, owner, integration_id, &repo)
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
            (integration_id.clone(), found)
        }
        RigSource::Integration {
            integration_id,
            repo,
        } => (
            integration_id.clone(),
            repositories::repository_for_rig(env, owner, integration_id, repo).await?,
        ),
    };
    let rig = Rig::from_repository(
        id,
        new,
        integration_id,
        found.git_url,
        found.default_branch,
        created_at,
    );
    let rig = stub(env, owner)?.call(o::CreateRig { rig }).await?;
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
        Some(id) => repositories::summary(env, id).await?,
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

/// Changes a rig of `owner` (`town`: the town the route names, if it names one). The new
/// repository, if any, is resolved with the provider first, as for a new rig; the owner's DO
/// then applies the change and tells the town's DO.
pub async fn patch_rig(
    req: &mut Request,
    env: &Env,
    owner: &Owner,
    rig_id: RigId,
    town: Option<TownId>,
) -> Handled {
    let patch = RigPatch::parse(
        &read_json_body(req).await?,
        config::get(env).work.allow_local_git,
    )?;
    let stub = stub(env, owner)?;
    let rig = stub
        .call(o::GetRig {
            rig_id: rig_id.clone(),
        })
        .await?
        .parse()?;
    if town.as_ref().is_some_and(|t| *t != rig.town_id) {
        return Err(ApiError::NotFound("rig not found".into()));
    }
    let from = RigSourceFields::of(&rig);
    let (source, found_branch) = match patch.plan(&rig)? {
        SourcePlan::Keep => (None, None),
        SourcePlan::Url { git_url } => (
            Some(RigSourceFields {
                git_url,
                platform_integration_id: None,
            }),
            None,
        ),
        SourcePlan::Integration {
            integration_id,
            repo,
            git_url,
            same_repo,
        } => {
            let found = repositories::repository_for_rig(env, owner, &integration_id, &repo)
                .await
                .map_err(|e| match e {
                    ApiError::Invalid { field, message }
                        if field == "repo" && git_url.is_some() =>
                    {
                        ApiError::invalid("git_url", message)
                    }
                    e => e,
                })?;
            if git_url.as_deref().is_some_and(|given| {
                !gastown_core::integrations::same_repository(given, &found.git_url)
            }) {
                return Err(ApiError::invalid(
                    "git_url",
                    "is not the integration's repository: leave it out, or give the repository's own URL",
                ));
            }
            let branch = (!same_repo).then_some(found.default_branch);
            (
                Some(RigSourceFields {
                    git_url: found.git_url,
                    platform_integration_id: Some(integration_id),
                }),
                branch,
            )
        }
    };
    let change = RigChange {
        name: patch.name,
        default_branch: patch.default_branch.or(found_branch),
        source: source.map(|to| SourceChange { to, from }),
    };
    let rig = stub
        .call(o::PatchRig {
            rig_id,
            town_id: town,
            change,
        })
        .await?;
    Ok(json(200, &rig))
}

pub async fn delete_rig(env: &Env, owner: &Owner, rig_id: RigId) -> Handled {
    stub(env, owner)?
        .call(o::DeleteRig {
            rig_id: rig_id.clone(),
        })
        .await?;
    Ok(json(
        200,
        &Deleted {
            id: &rig_id,
            deleted: true,
        },
    ))
}

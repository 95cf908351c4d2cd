//! Town routes, `/api/towns/:townId/...` (user token). One call to the town's own DO resolves
//! its ownership; the decision is `authz::town_role` over that record and the token's claims, so
//! no owner DO is consulted and personal and org towns take the same path.

use crate::container_do;
use crate::http::{call, json, page, read_json_body};
use crate::owner::Owner;
use crate::town_do;
use gastown_core::auth::UserClaims;
use gastown_core::authz::{self, TownRole};
use gastown_core::do_api::{
    ContainerRequest, ContainerStatus, OwnerRequest, TokenPushed, TownRequest,
};
use gastown_core::error::ApiError;
use gastown_core::ids::TownId;
use gastown_core::model::{Rig, Town};
use gastown_core::town_config::TownConfig;
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
    let town: Town = call(&town_do::stub(env, town)?, &TownRequest::Get).await?;
    let role = authz::town_role(claims, &town)?;
    Ok((town, role))
}

pub async fn get(env: &Env, claims: &UserClaims, town: &TownId) -> Handled {
    let (town, _) = access(env, claims, town).await?;
    Ok(json(200, &town))
}

pub async fn list_rigs(req: &Request, env: &Env, claims: &UserClaims, town: &TownId) -> Handled {
    let (town, _) = access(env, claims, town).await?;
    let list = OwnerRequest::ListRigs {
        town_id: town.id.clone(),
        page: page(req)?,
    };
    let rigs: Vec<Rig> = call(&Owner::of(&town)?.stub(env)?, &list).await?;
    Ok(json(200, &rigs))
}

/// Everyone the town admits may read its config; secrets are always masked.
pub async fn get_config(env: &Env, claims: &UserClaims, town: &TownId) -> Handled {
    let (town, _) = access(env, claims, town).await?;
    let config: TownConfig = call(&town_do::stub(env, &town.id)?, &TownRequest::GetConfig).await?;
    Ok(json(200, &config.view(&town)))
}

/// Only the personal owner, an org owner or the town's creator may change config.
pub async fn patch_config(
    req: &mut Request,
    env: &Env,
    claims: &UserClaims,
    town: &TownId,
) -> Handled {
    let (town, role) = access(env, claims, town).await?;
    if !role.manages_town() {
        return Err(ApiError::Forbidden(
            "only the town's owner or creator, or an org owner, may change its config".into(),
        ));
    }
    let body = String::from_utf8(read_json_body(req).await?)
        .map_err(|_| ApiError::InvalidJson("body is not UTF-8".into()))?;
    let config: TownConfig = call(
        &town_do::stub(env, &town.id)?,
        &TownRequest::PatchConfig { body },
    )
    .await?;
    Ok(json(200, &config.view(&town)))
}

/// State, env var names and token expiry of the town's container; never a value or a token.
pub async fn get_container(env: &Env, claims: &UserClaims, town: &TownId) -> Handled {
    let (town, _) = access(env, claims, town).await?;
    let status: ContainerStatus = call(
        &container_do::stub(env, &town.id)?,
        &ContainerRequest::Status,
    )
    .await?;
    Ok(json(200, &status))
}

/// Starts the town's container with a fresh token and the town's env. Anyone the town admits
/// may start it; the token carries the town owner's identity, never the caller's.
pub async fn start_container(env: &Env, claims: &UserClaims, town: &TownId) -> Handled {
    let (town, _) = access(env, claims, town).await?;
    let _: TokenPushed = call(&town_do::stub(env, &town.id)?, &TownRequest::StartContainer).await?;
    let status: ContainerStatus = call(
        &container_do::stub(env, &town.id)?,
        &ContainerRequest::Status,
    )
    .await?;
    Ok(json(200, &status))
}

/// Pushes a fresh container token now. For those who manage the town; answers with the new
/// expiry only.
pub async fn force_token_refresh(env: &Env, claims: &UserClaims, town: &TownId) -> Handled {
    let (town, role) = access(env, claims, town).await?;
    if !role.manages_town() {
        return Err(ApiError::Forbidden(
            "only the town's owner or creator, or an org owner, may rotate its container token"
                .into(),
        ));
    }
    let pushed: TokenPushed = call(
        &town_do::stub(env, &town.id)?,
        &TownRequest::ForceTokenRefresh,
    )
    .await?;
    Ok(json(
        200,
        &serde_json::json!({ "token_expires_at": pushed.token_expires_at }),
    ))
}

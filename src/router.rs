//! The front door. For every request, in this order: match the route; verify the one credential
//! kind the route accepts; hand the typed principal to the handler. No Durable Object stub is
//! looked up before the credential has been verified.

use crate::config;
use crate::handlers::{container, internal, owned, town};
use crate::http::{error_response, json, raw_json};
use crate::owner::Owner;
use gastown_core::auth::{bearer, AuthError, UserClaims};
use gastown_core::authz::{self, ContainerCaller, ContainerScope};
use gastown_core::error::ApiError;
use gastown_core::ids::{AgentId, OrgId, RigId, TownId, UserId};
use gastown_core::routes::{match_route, Method, Principal, Route, RouteError};
use worker::{Env, Request, Response};

/// A verified caller.
enum Caller {
    Anyone,
    User(UserClaims),
    Container(ContainerCaller),
    Internal,
}

pub async fn handle(mut req: Request, env: &Env) -> Response {
    // The raw method: workers-rs's `Method` reads any method it does not know as GET, which
    // would let `QUERY /api/...` (or `get`) act as a GET.
    let method = Method::parse(&req.inner().method());
    let path = req.path();
    match match_route(method, &path) {
        Ok((route, principal)) => match dispatch(&mut req, env, route, principal).await {
            Ok(resp) => resp,
            Err(err) => error_response(&err),
        },
        Err(RouteError::NotFound) => error_response(&ApiError::NotFound("no such route".into())),
        Err(RouteError::MethodNotAllowed(allowed)) => {
            let mut resp = error_response(&ApiError::MethodNotAllowed);
            let allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            let _ = resp.headers_mut().set("allow", &allow.join(", "));
            resp
        }
    }
}

/// The town (and rig and agent, where the path names them) a container route is scoped to.
fn container_scope(route: &Route) -> Option<(&TownId, Option<&RigId>, Option<&AgentId>)> {
    match route {
        Route::RefreshContainerToken { town } | Route::MayorRigs { town } => {
            Some((town, None, None))
        }
        Route::AgentHeartbeat { town, rig, agent } => Some((town, Some(rig), Some(agent))),
        _ => None,
    }
}

fn authenticate(
    req: &Request,
    route: &Route,
    principal: Principal,
    env: &Env,
) -> Result<Caller, ApiError> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    match principal {
        Principal::Public => Ok(Caller::Anyone),
        Principal::User => {
            let auth = header("authorization");
            let token = bearer(auth.as_deref())
                .ok_or(ApiError::Unauthorized(AuthError::Missing.message()))?;
            let now = i64::try_from(config::now_ms() / 1000).unwrap_or(i64::MAX);
            config::get(env)
                .keys
                .verify_user(token, now)
                .map(Caller::User)
                .map_err(authz::auth_error)
        }
        Principal::Internal => {
            if config::get(env)
                .internal_key
                .matches(header("x-internal-api-key").as_deref())
            {
                Ok(Caller::Internal)
            } else {
                Err(ApiError::Unauthorized(
                    "missing or invalid internal api key",
                ))
            }
        }
        Principal::Container => {
            let auth = header("authorization");
            let token = bearer(auth.as_deref())
                .ok_or(ApiError::Unauthorized(AuthError::Missing.message()))?;
            let (town, route_rig, route_agent) = container_scope(route)
                .ok_or_else(|| ApiError::internal("container route without a town"))?;
            let header_rig = header("x-gastown-rig-id");
            let header_agent = header("x-gastown-agent-id");
            let scope = ContainerScope {
                route_rig,
                route_agent,
                header_rig: header_rig.as_deref(),
                header_agent: header_agent.as_deref(),
            };
            let now = i64::try_from(config::now_ms() / 1000).unwrap_or(i64::MAX);
            authz::container(&config::get(env).keys, token, now, town, scope).map(Caller::Container)
        }
    }
}

async fn dispatch(
    req: &mut Request,
    env: &Env,
    route: Route,
    principal: Principal,
) -> Result<Response, ApiError> {
    let caller = authenticate(req, &route, principal, env)?;
    match (route, caller) {
        (Route::Health, _) => Ok(json(200, &serde_json::json!({"status": "ok"}))),
        (Route::OpenApi, _) => raw_json(gastown_core::openapi::DOCUMENT),
        (route, Caller::User(claims)) => user_route(req, env, route, &claims).await,
        (Route::RefreshContainerToken { .. }, Caller::Container(c)) => {
            container::refresh_token(env, &c).await
        }
        (Route::AgentHeartbeat { .. }, Caller::Container(c)) => container::heartbeat(env, &c).await,
        (Route::MayorRigs { .. }, Caller::Container(c)) => container::mayor_rigs(env, &c).await,
        (Route::InternalTownHealth { town }, Caller::Internal) => {
            internal::town_health(env, &town).await
        }
        (Route::InternalRigLookup { rig }, Caller::Internal) => {
            internal::rig_lookup(env, &rig).await
        }
        (Route::InternalDropTownAlarm { town }, Caller::Internal) => {
            internal::drop_town_alarm(env, &town).await
        }
        (route, _) => Err(ApiError::internal(format!(
            "route {route:?} reached dispatch with the wrong principal"
        ))),
    }
}

/// Personal and org routes: authorise against the path's owner, then act through that owner's
/// DO. Town routes: authorised by the town's recorded ownership (`handlers::town`).
async fn user_route(
    req: &mut Request,
    env: &Env,
    route: Route,
    c: &UserClaims,
) -> Result<Response, ApiError> {
    let personal = |user: &UserId| authz::personal(c, user).map(|()| Owner::User(user.clone()));
    let member = |org: &OrgId| authz::org_member(c, org).map(|_| Owner::Org(org.clone()));
    let org_owner = |org: &OrgId| authz::org_owner(c, org).map(|()| Owner::Org(org.clone()));
    match route {
        Route::CreateUserTown { user } => {
            owned::create_town(req, env, &personal(&user)?, &c.user_id).await
        }
        Route::ListUserTowns { user } => owned::list_towns(req, env, &personal(&user)?).await,
        Route::GetUserTown { user, town } => owned::get_town(env, &personal(&user)?, &town).await,
        Route::DeleteUserTown { user, town } => {
            owned::delete_town(env, &personal(&user)?, &town).await
        }
        Route::CreateUserRig { user } => owned::create_rig(req, env, &personal(&user)?).await,
        Route::ListUserTownRigs { user, town } => {
            owned::list_rigs(req, env, &personal(&user)?, &town).await
        }
        Route::GetUserRig { user, rig } => owned::get_rig(env, &personal(&user)?, &rig).await,
        Route::DeleteUserRig { user, rig } => owned::delete_rig(env, &personal(&user)?, &rig).await,
        Route::CreateOrgTown { org } => {
            owned::create_town(req, env, &member(&org)?, &c.user_id).await
        }
        Route::ListOrgTowns { org } => owned::list_towns(req, env, &member(&org)?).await,
        Route::GetOrgTown { org, town } => owned::get_town(env, &member(&org)?, &town).await,
        Route::DeleteOrgTown { org, town } => {
            owned::delete_town(env, &org_owner(&org)?, &town).await
        }
        Route::CreateOrgRig { org } => owned::create_rig(req, env, &member(&org)?).await,
        Route::ListOrgTownRigs { org, town } => {
            owned::list_rigs(req, env, &member(&org)?, &town).await
        }
        Route::GetOrgRig { org, rig } => owned::get_rig(env, &member(&org)?, &rig).await,
        Route::DeleteOrgRig { org, rig } => owned::delete_rig(env, &org_owner(&org)?, &rig).await,
        Route::GetTown { town } => town::get(env, c, &town).await,
        Route::ListTownRigs { town } => town::list_rigs(req, env, c, &town).await,
        Route::GetTownConfig { town } => town::get_config(env, c, &town).await,
        Route::PatchTownConfig { town } => town::patch_config(req, env, c, &town).await,
        Route::GetTownContainer { town } => town::get_container(env, c, &town).await,
        Route::StartTownContainer { town } => town::start_container(env, c, &town).await,
        Route::ForceContainerTokenRefresh { town } => {
            town::force_token_refresh(env, c, &town).await
        }
        route => Err(ApiError::internal(format!(
            "route {route:?} is not a user route"
        ))),
    }
}

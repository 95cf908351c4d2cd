//! The front door. For every request, in this order: match the route; verify the one credential
//! kind the route accepts; hand the typed principal to the handler. No Durable Object stub is
//! looked up before the credential has been verified.

use crate::config;
use crate::handlers::{internal, personal};
use crate::http::{error_response, json};
use gastown_core::auth::{bearer, AuthError, UserClaims};
use gastown_core::error::ApiError;
use gastown_core::routes::{match_route, Method, Principal, Route, RouteError};
use worker::{Env, Request, Response};

/// A verified caller.
enum Caller {
    Anyone,
    User(UserClaims),
    Internal,
}

pub async fn handle(mut req: Request, env: &Env) -> Response {
    let method = Method::parse(req.method().as_ref());
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

fn auth_failure(err: AuthError) -> ApiError {
    match err {
        AuthError::NotConfigured => ApiError::internal("a token secret is not configured"),
        other => ApiError::Unauthorized(other.message()),
    }
}

fn authenticate(req: &Request, principal: Principal, env: &Env) -> Result<Caller, ApiError> {
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
                .map_err(auth_failure)
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
        Principal::Container => Err(ApiError::Unauthorized(AuthError::WrongKind.message())),
    }
}

async fn dispatch(
    req: &mut Request,
    env: &Env,
    route: Route,
    principal: Principal,
) -> Result<Response, ApiError> {
    let caller = authenticate(req, principal, env)?;
    match (route, caller) {
        (Route::Health, _) => Ok(json(200, &serde_json::json!({"status": "ok"}))),
        (Route::CreateUserTown { user }, Caller::User(c)) => {
            personal::create_town(req, env, &c, &user).await
        }
        (Route::ListUserTowns { user }, Caller::User(c)) => {
            personal::list_towns(env, &c, &user).await
        }
        (Route::GetUserTown { user, town }, Caller::User(c)) => {
            personal::get_town(env, &c, &user, &town).await
        }
        (Route::DeleteUserTown { user, town }, Caller::User(c)) => {
            personal::delete_town(env, &c, &user, &town).await
        }
        (Route::CreateUserRig { user }, Caller::User(c)) => {
            personal::create_rig(req, env, &c, &user).await
        }
        (Route::ListUserTownRigs { user, town }, Caller::User(c)) => {
            personal::list_rigs(env, &c, &user, &town).await
        }
        (Route::GetUserRig { user, rig }, Caller::User(c)) => {
            personal::get_rig(env, &c, &user, &rig).await
        }
        (Route::DeleteUserRig { user, rig }, Caller::User(c)) => {
            personal::delete_rig(env, &c, &user, &rig).await
        }
        (Route::InternalTownHealth { town }, Caller::Internal) => {
            internal::town_health(env, &town).await
        }
        (Route::InternalRigLookup { rig }, Caller::Internal) => {
            internal::rig_lookup(env, &rig).await
        }
        (route, _) => Err(ApiError::internal(format!(
            "route {route:?} reached dispatch with the wrong principal"
        ))),
    }
}

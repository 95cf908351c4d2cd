//! The front door. For every request, in this order: match the route; verify the one credential
//! kind the route's principal accepts; hand the typed principal to the handler. No Durable
//! Object stub is looked up before the credential has been verified.
//!
//! Dispatch is one exhaustive match per principal: a route without a handler does not compile.

use crate::config;
use crate::handlers::{container, integrations, internal, owned, town};
use crate::http::{error_response, json_text, raw_json};
use gastown_core::auth::{bearer, AuthError, UserClaims};
use gastown_core::authz::{self, ContainerCaller, ContainerScope};
use gastown_core::error::ApiError;
use gastown_core::routes::{
    match_route, ContainerRoute, IntegrationAction, InternalRoute, Method, OwnedAction,
    PublicRoute, Route, RouteError, StreamRoute, UserRoute,
};
use gastown_core::stream::{self, StreamOpen, StreamQuery};
use worker::{Env, Request, Response};

pub async fn handle(mut req: Request, env: &Env) -> Response {
    // Settings that cannot run (a refresh slower than the token lifetime, say) refuse every
    // request, so a bad deployment is seen at once rather than when the first token lapses.
    if let Some(problem) = &config::get(env).refused {
        return error_response(&ApiError::internal(format!(
            "configuration refused: {problem}"
        )));
    }
    // The raw method: workers-rs's `Method` reads any method it does not know as GET, which
    // would let `QUERY /api/...` (or `get`) act as a GET.
    let method = Method::parse(&req.inner().method());
    let route = match match_route(method, &req.path()) {
        Ok(route) => route,
        Err(RouteError::NotFound) => {
            return error_response(&ApiError::NotFound("no such route".into()))
        }
        Err(RouteError::MethodNotAllowed(allowed)) => {
            let mut resp = error_response(&ApiError::MethodNotAllowed);
            let allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            let _ = resp.headers_mut().set("allow", &allow.join(", "));
            return resp;
        }
    };
    let result = match route {
        Route::Public(route) => public(&mut req, env, route).await,
        Route::User(route) => match user(&req, env) {
            Ok(claims) => user_route(&mut req, env, route, &claims).await,
            Err(e) => Err(e),
        },
        Route::Container(route) => match container_caller(&req, env, &route) {
            Ok(caller) => container_route(&mut req, env, route, &caller).await,
            Err(e) => Err(e),
        },
        Route::Internal(route) => match internal_key(&req, env) {
            Ok(()) => internal_route(&mut req, env, route).await,
            Err(e) => Err(e),
        },
        Route::Stream(route) => match stream_ticket(&req, env, &route) {
            Ok(open) => town::open_stream(env, &route, &open).await,
            Err(e) => Err(e),
        },
    };
    result.unwrap_or_else(|err| error_response(&err))
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

fn bearer_token(req: &Request) -> Result<String, ApiError> {
    let auth = header(req, "authorization");
    bearer(auth.as_deref())
        .map(str::to_owned)
        .ok_or(ApiError::Unauthorized(AuthError::Missing.message()))
}

/// A verified dashboard user token.
fn user(req: &Request, env: &Env) -> Result<UserClaims, ApiError> {
    let token = bearer_token(req)?;
    config::get(env)
        .keys
        .verify_user(&token, config::now_s())
        .map_err(authz::auth_error)
}

/// A verified container (or legacy agent) token of the route's town.
fn container_caller(
    req: &Request,
    env: &Env,
    route: &ContainerRoute,
) -> Result<ContainerCaller, ApiError> {
    let token = bearer_token(req)?;
    let (town, route_rig, route_agent) = route.scope();
    let header_rig = header(req, "x-gastown-rig-id");
    let header_agent = header(req, "x-gastown-agent-id");
    let scope = ContainerScope {
        route_rig,
        route_agent,
        header_rig: header_rig.as_deref(),
        header_agent: header_agent.as_deref(),
    };
    authz::container(&config::get(env).keys, &token, config::now_s(), town, scope)
}

/// A stream ticket (`?ticket=`) signed for this town and scope and not expired, on a
/// WebSocket upgrade. That it was not used before, only the town's DO can tell.
fn stream_ticket(req: &Request, env: &Env, route: &StreamRoute) -> Result<StreamOpen, ApiError> {
    let url = req.url().map_err(ApiError::internal)?;
    let query = StreamQuery::parse(url.query())?;
    let settings = config::get(env);
    let key = settings
        .ticket_key
        .as_deref()
        .ok_or_else(|| ApiError::internal("GASTOWN_JWT_SECRET is not configured"))?;
    let claims = stream::verify_ticket(
        key,
        &query.ticket,
        &route.town,
        &route.scope,
        config::now_s(),
    )
    .map_err(|e| ApiError::Unauthorized(e.message()))?;
    let upgrade = header(req, "upgrade").unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(ApiError::BadRequest(
            "this route opens a WebSocket: send Upgrade: websocket".into(),
        ));
    }
    Ok(StreamOpen {
        user: claims.user,
        scope: claims.scope,
        nonce: claims.nonce,
        exp: claims.exp,
        after: query.after,
    })
}

/// The internal API key, compared in constant time.
fn internal_key(req: &Request, env: &Env) -> Result<(), ApiError> {
    if config::get(env)
        .internal_key
        .matches(header(req, "x-internal-api-key").as_deref())
    {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "missing or invalid internal api key",
        ))
    }
}

/// Public routes. The two connect-flow redirects authenticate by their signed `state`, the
/// webhook by its signature: each handler checks before it acts.
async fn public(req: &mut Request, env: &Env, route: PublicRoute) -> Result<Response, ApiError> {
    match route {
        PublicRoute::Health => Ok(json_text(200, r#"{"status":"ok"}"#.to_owned())),
        PublicRoute::OpenApi => raw_json(gastown_core::openapi::DOCUMENT),
        PublicRoute::GithubInstalled => integrations::github_installed(req, env).await,
        PublicRoute::GitlabCallback => integrations::gitlab_callback(req, env).await,
        PublicRoute::GithubWebhook => integrations::github_webhook(req, env).await,
        PublicRoute::GitlabWebhook => integrations::gitlab_webhook(req, env).await,
        PublicRoute::GithubUserConnectCallback => {
            integrations::github_user_callback(req, env).await
        }
    }
}

/// Personal and org routes: authorise against the path's owner, then act through that owner's
/// DO. Town routes: authorised by the town's recorded ownership (`handlers::town`).
async fn user_route(
    req: &mut Request,
    env: &Env,
    route: UserRoute,
    claims: &UserClaims,
) -> Result<Response, ApiError> {
    match route {
        UserRoute::Owned { owner, action } => {
            authz::owned(claims, &owner, action.destroys())?;
            match action {
                OwnedAction::CreateTown => {
                    owned::create_town(req, env, &owner, &claims.user_id).await
                }
                OwnedAction::ListTowns => owned::list_towns(req, env, &owner).await,
                OwnedAction::GetTown(town) => owned::get_town(env, &owner, town).await,
                OwnedAction::DeleteTown(town) => owned::delete_town(env, &owner, town).await,
                OwnedAction::ClaimTown(town) => {
                    owned::claim_town(env, &owner, town, &claims.user_id).await
                }
                OwnedAction::ListTownRigs(town) => owned::list_rigs(req, env, &owner, town).await,
                OwnedAction::CreateRig => owned::create_rig(req, env, &owner).await,
                OwnedAction::GetRig(rig) => owned::get_rig(env, &owner, rig).await,
                OwnedAction::PatchRig(rig) => owned::patch_rig(req, env, &owner, rig, None).await,
                OwnedAction::DeleteRig(rig) => owned::delete_rig(env, &owner, rig).await,
                OwnedAction::ListIntegrations => integrations::list(env, &owner).await,
            }
        }
        UserRoute::Town { town, action } => town::route(req, env, claims, town, action).await,
        UserRoute::Integration(action) => match action {
            IntegrationAction::GithubInstall => {
                integrations::github_install(req, env, claims).await
            }
            IntegrationAction::GitlabConnect => {
                integrations::gitlab_connect(req, env, claims).await
            }
            IntegrationAction::Repositories(id) => {
                integrations::repositories(req, env, claims, &id).await
            }
            IntegrationAction::Delete(id) => integrations::delete(env, claims, &id).await,
            IntegrationAction::GithubUserConnect => {
                integrations::github_user_connect(env, claims).await
            }
            IntegrationAction::GithubUserStatus => {
                integrations::github_user_status(env, claims).await
            }
            IntegrationAction::GithubUserDisconnect => {
                integrations::github_user_disconnect(env, claims).await
            }
        },
    }
}

async fn container_route(
    req: &mut Request,
    env: &Env,
    route: ContainerRoute,
    caller: &ContainerCaller,
) -> Result<Response, ApiError> {
    match route {
        ContainerRoute::RefreshToken { .. } => container::refresh_token(env, caller).await,
        ContainerRoute::AgentHeartbeat { .. } => container::heartbeat(env, caller).await,
        ContainerRoute::AgentStatus { .. } => container::agent_status(req, env, caller).await,
        ContainerRoute::AgentDone { .. } => container::agent_done(req, env, caller).await,
        ContainerRoute::AgentExit { .. } => container::agent_exit(req, env, caller).await,
        ContainerRoute::AgentEvents { .. } => container::agent_events(req, env, caller).await,
        ContainerRoute::MayorTool { tool, .. } => {
            container::mayor_tool(req, env, caller, tool).await
        }
        ContainerRoute::SandboxToken { .. } => container::sandbox_token(env, caller).await,
        ContainerRoute::GitToken { .. } => {
            integrations::container_git_token(req, env, caller).await
        }
    }
}

async fn internal_route(
    #[cfg_attr(not(feature = "test-hooks"), allow(unused_variables))] req: &mut Request,
    env: &Env,
    route: InternalRoute,
) -> Result<Response, ApiError> {
    match route {
        InternalRoute::SandboxToken { town } => internal::sandbox_token(env, &town).await,
        InternalRoute::RigGitToken { rig } => integrations::internal_git_token(env, &rig).await,
        InternalRoute::DeleteUser { user } => integrations::delete_user(env, &user).await,
        #[cfg(feature = "test-hooks")]
        InternalRoute::RegisterAgent { town } => internal::register_agent(req, env, &town).await,
        InternalRoute::TownHealth { town } => internal::town_health(env, &town).await,
        InternalRoute::RigLookup { rig } => internal::rig_lookup(env, &rig).await,
        #[cfg(feature = "test-hooks")]
        InternalRoute::DropTownAlarm { town } => internal::drop_town_alarm(env, &town).await,
    }
}

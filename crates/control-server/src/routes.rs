//! The control server's routes: which path and method name which handler ([`Route`], the
//! debug routes only in `Build::Debug`), the order of the checks every request goes through
//! before its handler runs (Host, route, credentials, content type, length, body; nothing is
//! read past a refusal), and what the handlers share for their bodies ([`parse`],
//! [`same_town`]). The handlers are the modules named for what they own: [`crate::towns`],
//! [`crate::agents`], [`crate::merges`] and, with the debug routes, `crate::debug`.

use crate::agents;
use crate::auth::{authenticate, host_allowed};
use crate::http::{error, read_body, read_head, ReadFail, Reply};
use crate::merges;
use crate::server::Build;
use crate::state::Shared;
use crate::towns;
use gastown_core::control::{
    AGENTS_START_PATH, CONTENT_TYPE_JSON, HEALTH_PATH, MAX_BODY_BYTES, MERGE_PATH,
    REFRESH_TOKEN_PATH, STOP_PATH, SYNC_CONFIG_PATH, TOWN_ID_HEADER,
};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::net::TcpStream;
use std::time::Instant;

/// A request's route, named by its path alone; its method is checked after.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Health,
    RefreshToken,
    SyncConfig,
    Stop,
    AgentsStart,
    /// The path's agent id, unchecked.
    AgentStop(String),
    AgentStatus(String),
    /// A further message to the agent's running session.
    AgentMessage(String),
    /// The refinery's direct merge of a rig's branch.
    Merge,
    #[cfg(feature = "debug-routes")]
    DebugTown(String),
    #[cfg(feature = "debug-routes")]
    DebugFail,
    #[cfg(feature = "debug-routes")]
    DebugEnv,
}

impl Route {
    fn is_post(&self) -> bool {
        match self {
            Route::RefreshToken
            | Route::SyncConfig
            | Route::Stop
            | Route::AgentsStart
            | Route::AgentStop(_)
            | Route::AgentMessage(_)
            | Route::Merge => true,
            #[cfg(feature = "debug-routes")]
            Route::DebugFail => true,
            _ => false,
        }
    }
}

/// The route `method` and `path` name in `build`: 404 for no such path, 405 for another method.
fn route(build: Build, method: &str, path: &str) -> Result<Route, Reply> {
    let found = match path {
        HEALTH_PATH => Some(Route::Health),
        REFRESH_TOKEN_PATH => Some(Route::RefreshToken),
        SYNC_CONFIG_PATH => Some(Route::SyncConfig),
        STOP_PATH => Some(Route::Stop),
        AGENTS_START_PATH => Some(Route::AgentsStart),
        MERGE_PATH => Some(Route::Merge),
        _ => agent_route(path).or_else(|| debug_route(build, path)),
    };
    let Some(found) = found else {
        return Err(error(404, "no such route"));
    };
    let want = if found.is_post() { "POST" } else { "GET" };
    if method == want {
        Ok(found)
    } else {
        Err(error(405, "method not allowed"))
    }
}

/// `/agents/:id/stop` and `/agents/:id/status`; the id is checked once authenticated.
fn agent_route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match segments.as_slice() {
        ["agents", id, "stop"] if !id.is_empty() => Some(Route::AgentStop((*id).to_owned())),
        ["agents", id, "status"] if !id.is_empty() => Some(Route::AgentStatus((*id).to_owned())),
        ["agents", id, "message"] if !id.is_empty() => Some(Route::AgentMessage((*id).to_owned())),
        _ => None,
    }
}

#[cfg(feature = "debug-routes")]
fn debug_route(build: Build, path: &str) -> Option<Route> {
    if build != Build::Debug {
        return None;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["debug", "towns", town] if !town.is_empty() => Some(Route::DebugTown((*town).to_owned())),
        ["debug", "fail"] => Some(Route::DebugFail),
        ["debug", "env"] => Some(Route::DebugEnv),
        _ => None,
    }
}

#[cfg(not(feature = "debug-routes"))]
fn debug_route(_build: Build, _path: &str) -> Option<Route> {
    None
}

/// Reads, checks and handles one request. The order of the checks is the contract: Host,
/// route, credentials, content type, length, body; nothing is read past a refusal.
pub(crate) fn request(
    stream: &mut TcpStream,
    shared: &Shared,
    deadline: Instant,
) -> Result<Reply, ReadFail> {
    let config = &shared.config;
    let mut buf = Vec::with_capacity(1024);
    let head = read_head(stream, &mut buf, deadline)?;
    let refuse = ReadFail::Reply;

    match head.one("host").map_err(refuse)? {
        Some(host) if host_allowed(host, &config.allowed_hosts) => {}
        _ => return Err(refuse(error(421, "host not allowed"))),
    }
    if !head.target.starts_with('/') {
        return Err(refuse(error(400, "request target must be a path")));
    }
    let route = route(config.build, &head.method, head.path()).map_err(refuse)?;
    if route == Route::Health {
        #[cfg(feature = "debug-routes")]
        if shared.state().fail.health {
            return Ok((503, json!({ "error": "health failing on purpose" })));
        }
        return Ok((200, json!({ "status": "ok" })));
    }

    let town = authenticate(&head, &config.auth).map_err(refuse)?;

    let body = if route.is_post() {
        let content_type = head
            .one("content-type")
            .map_err(refuse)?
            .unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if !media.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
            return Err(refuse(error(415, "content-type must be application/json")));
        }
        read_body(stream, &head, buf, MAX_BODY_BYTES, deadline)?
    } else {
        Vec::new()
    };
    Ok(handle(shared, &route, &town, &body))
}

/// The body as `T`; one that is not is the client's 400.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| error(400, &format!("bad body: {e}")))
}

/// The body's `townId` must be the town the request is authenticated for (403).
pub(crate) fn same_town(body_town: &str, town: &str) -> Result<(), Reply> {
    if body_town == town {
        Ok(())
    } else {
        Err(error(403, &format!("townId differs from {TOWN_ID_HEADER}")))
    }
}

/// Handles an authenticated request for `town`.
fn handle(shared: &Shared, route: &Route, town: &str, body: &[u8]) -> Reply {
    let result = match route {
        Route::Health => Ok((200, json!({ "status": "ok" }))),
        Route::RefreshToken => towns::refresh_token(shared, town, body),
        Route::SyncConfig => towns::sync_config(shared, town, body),
        Route::Stop => towns::stop(shared, town, body),
        Route::AgentsStart => agents::start(shared, town, body),
        Route::AgentStop(id) => agents::stop(shared, town, id, body),
        Route::AgentStatus(id) => agents::status(shared, town, id),
        Route::AgentMessage(id) => crate::kilo::message(shared, town, id, body),
        Route::Merge => merges::merge(shared, town, body),
        #[cfg(feature = "debug-routes")]
        Route::DebugTown(id) => crate::debug::town(shared, town, id),
        #[cfg(feature = "debug-routes")]
        Route::DebugFail => crate::debug::fail(shared, body),
        #[cfg(feature = "debug-routes")]
        Route::DebugEnv => Ok(crate::debug::env()),
    };
    result.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_routes() {
        let r = |method: &str, path: &str| route(Build::Production, method, path);
        assert_eq!(r("POST", "/agents/start").unwrap(), Route::AgentsStart);
        assert_eq!(
            r("POST", "/agents/a1/stop").unwrap(),
            Route::AgentStop("a1".into())
        );
        assert_eq!(
            r("GET", "/agents/a1/status").unwrap(),
            Route::AgentStatus("a1".into())
        );
        assert_eq!(r("GET", "/agents/start").unwrap_err().0, 405);
        assert_eq!(r("GET", "/agents/a1/stop").unwrap_err().0, 405);
        assert_eq!(r("POST", "/agents/a1/status").unwrap_err().0, 405);
        for bad in [
            "/agents",
            "/agents/",
            "/agents//stop",
            "/agents/a1",
            "/agents/a/b/stop",
            "/agents/a1/stop/",
            "agents/a1/stop",
        ] {
            assert_eq!(r("POST", bad).unwrap_err().0, 404, "{bad}");
        }
    }

    #[test]
    fn the_merge_route_is_a_post() {
        let r = |method: &str, path: &str| route(Build::Production, method, path);
        assert_eq!(r("POST", "/merge").unwrap(), Route::Merge);
        assert_eq!(r("GET", "/merge").unwrap_err().0, 405);
        assert_eq!(r("POST", "/merge/").unwrap_err().0, 404);
    }

    #[test]
    fn production_build_has_no_debug_routes() {
        for path in ["/debug/towns/a", "/debug/fail", "/debug/env"] {
            assert_eq!(route(Build::Production, "GET", path).unwrap_err().0, 404);
            assert_eq!(route(Build::Production, "POST", path).unwrap_err().0, 404);
        }
        assert_eq!(
            route(Build::Production, "GET", "/health").unwrap(),
            Route::Health
        );
        assert_eq!(
            route(Build::Production, "GET", "/sync-config")
                .unwrap_err()
                .0,
            405
        );
    }
}

//! The `/debug/...` routes' handlers (cargo feature `debug-routes`, only in the
//! `gastown-control-debug` binary): what the server holds for a town, the failures to inject
//! and which control variables the environment still holds. The crate docs describe each
//! route's answer.

use crate::http::{error, Reply};
use crate::routes::{parse, same_town};
use crate::state::{Shared, Town};
use gastown_core::control::{KEY_ENV, SECRET_ENV, TOWN_ID_ENV};
use serde_json::json;

/// Failures injected through `/debug/fail`.
#[derive(Default, serde::Deserialize)]
pub(crate) struct FailModes {
    #[serde(default)]
    pub(crate) refresh_token: bool,
    #[serde(default)]
    pub(crate) sync_config: bool,
    #[serde(default)]
    pub(crate) agents_start: bool,
    /// `/health` answers 503: a container alive but deaf, as the worker's health checks see it.
    #[serde(default)]
    pub(crate) health: bool,
}

/// `POST /debug/fail`: the failures injected from now on, replacing the last ones.
pub(crate) fn fail(shared: &Shared, body: &[u8]) -> Result<Reply, Reply> {
    let modes: FailModes = parse(body)?;
    shared.state().fail = modes;
    Ok((200, json!({ "ok": true })))
}

/// `GET /debug/towns/:id`: what the server holds for the town; 404 only for a town it holds
/// nothing of.
pub(crate) fn town(shared: &Shared, town: &str, id: &str) -> Result<Reply, Reply> {
    same_town(id, town)?;
    let dir = shared.town_dir(id)?;
    // The registry's lock is taken (and released) before the state's.
    let agents = shared.agents.debug_view(id);
    let state = shared.state();
    let (agents, agents_start_attempts) = match (state.towns.get(id), agents) {
        (None, None) => return Err(error(404, "no such town")),
        (_, agents) => agents.unwrap_or_default(),
    };
    let empty = Town::default();
    let t = state.towns.get(id).unwrap_or(&empty);
    Ok((
        200,
        json!({
            "token": t.token,
            "token_updates": t.token_updates,
            "env": t.env,
            "env_updates": t.env_updates,
            "workdir": dir,
            "gateway_refresh_attempts": t.gateway_refresh.attempts,
            "gateway_refreshes": t.gateway_refresh.successes,
            "gateway_refresh_failures": t.gateway_refresh.failures,
            "agents": agents,
            "agents_start_attempts": agents_start_attempts,
        }),
    ))
}

/// `GET /debug/env`: which control variables this process, and a child it starts now, still see.
pub(crate) fn env() -> Reply {
    let names = [KEY_ENV, SECRET_ENV, TOWN_ID_ENV];
    let in_process: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| std::env::var_os(n).is_some())
        .collect();
    // A child inherits the environment as it is now, not as the process was started.
    let in_child: Option<Vec<&str>> = std::process::Command::new("env").output().ok().map(|out| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        names
            .iter()
            .copied()
            .filter(|n| text.lines().any(|l| l.starts_with(&format!("{n}="))))
            .collect()
    });
    (200, json!({ "process": in_process, "child": in_child }))
}

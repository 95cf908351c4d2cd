//! The town's own routes, as the worker drives its container: `POST /refresh-token` (the
//! container token, kept in memory and written to the town's files with its gitconfig and its
//! `gh` shim), `POST /sync-config` (the town's env and settings files) and `POST /stop`
//! (everything the town held, in memory and in its credential files, dropped; its agents
//! killed). The files themselves are [`crate::workdir`]'s.

use crate::http::{error, Reply};
use crate::routes::{parse, same_town};
use crate::state::Shared;
use crate::workdir;
use gastown_core::control::{
    RefreshTokenBody, RefreshTokenReply, StopBody, SyncConfigBody, GATEWAY_TOKEN_ENV,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Takes the town's new container token: kept in memory (for the self-refresh) and written
/// to its file (for the git credential helper and the `gh` shim), with the town's gitconfig and
/// `gh` shim brought up to date.
pub(crate) fn refresh_token(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
    let req: RefreshTokenBody = parse(body)?;
    same_town(&req.town_id, town)?;
    if req.token.is_empty() {
        return Err(error(400, "token is required"));
    }
    // It becomes a line of a file and an `authorization` header.
    if !workdir::is_plain_token(&req.token) {
        return Err(error(400, "token holds characters a token does not"));
    }
    let dir = shared.town_dir(town)?;
    // The files that run this server's executable for the agents: none without one.
    let text_of = |what: &str, make: &dyn Fn(&Path) -> Option<String>| {
        let text = make(shared.config.credential_helper.as_deref()?);
        if text.is_none() {
            eprintln!("gastown-control: no {what} for town {town}: a path it cannot carry");
        }
        text
    };
    let (config, workdir, worker) = (
        &shared.config,
        &shared.config.workdir,
        shared.config.worker_url.as_deref(),
    );
    let gitconfig = text_of("gitconfig", &|exe| {
        workdir::gitconfig_text(exe, workdir, town, worker, config.git_ca_file.as_deref())
    });
    let gh_shim = text_of("gh shim", &|exe| {
        workdir::gh_shim_text(exe, workdir, town, worker, config.gh_path.as_deref())
    });
    let gt_shim = text_of("gt shim", &workdir::gt_shim_text);
    let mut state = shared.state();
    #[cfg(feature = "debug-routes")]
    if state.fail.refresh_token {
        return Err(error(503, "refresh-token failing on purpose"));
    }
    let agent = shared.config.agent_user;
    workdir::write_container_token(&dir, &req.token, agent)
        .and_then(|()| match &gitconfig {
            Some(text) => workdir::write_gitconfig(&dir, text, agent),
            None => Ok(()),
        })
        .and_then(|()| match &gh_shim {
            Some(text) => workdir::write_shim(&dir, workdir::GH_SHIM_FILE, text, agent),
            None => Ok(()),
        })
        .and_then(|()| match &gt_shim {
            Some(text) => workdir::write_shim(&dir, workdir::GT_SHIM_FILE, text, agent),
            None => Ok(()),
        })
        .map_err(|e| {
            // The error names a path at most, never a file's content.
            eprintln!("gastown-control: cannot write the files of town {town}: {e}");
            error(500, "cannot write the town's files")
        })?;
    let entry = state.towns.entry(req.town_id).or_default();
    entry.token = Some(req.token);
    entry.token_updates += 1;
    let reply = RefreshTokenReply {
        ok: true,
        had_env: entry.env_updates > 0,
    };
    Ok((200, json!(reply)))
}

/// The town's container stops: what it held (token, env) is gone, as it would be with the
/// container, and so are the credentials in its files (container token, gateway env, git
/// token cache), whether or not this process knew the town (it may have restarted since),
/// and its agents are killed.
pub(crate) fn stop(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
    let req: StopBody = parse(body)?;
    same_town(&req.town_id, town)?;
    let held = {
        let mut state = shared.state();
        let held = state.towns.remove(&req.town_id).is_some();
        // A town id that names no directory has no files.
        if let Ok(dir) = shared.town_dir(town) {
            workdir::remove_credentials(&dir).map_err(|e| {
                eprintln!("gastown-control: cannot remove the credentials of town {town}: {e}");
                error(500, "cannot remove the town's credentials")
            })?;
        }
        held
    };
    // After the token is gone (and the state lock released: the registry's comes first), so
    // no agent of the town starts after this.
    let killed = shared.agents.stop_town(town);
    Ok((200, json!({ "ok": true, "stopped": held || killed > 0 })))
}

/// Replaces the town's env and rewrites its files (see [`crate::workdir`]). Everything is checked
/// before anything is written, so a refused sync leaves the town as it was.
pub(crate) fn sync_config(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
    let req: SyncConfigBody = parse(body)?;
    same_town(&req.town_id, town)?;
    for rig in req.settings.rigs.keys() {
        workdir::check_rig_id(rig).map_err(|e| error(400, &e))?;
    }
    let gateway_token = gateway_token(&req.env);
    if gateway_token.is_some_and(|t| !workdir::is_plain_token(t)) {
        return Err(error(
            400,
            &format!("{GATEWAY_TOKEN_ENV} holds characters a token does not"),
        ));
    }
    let dir = shared.town_dir(town)?;
    let mut state = shared.state();
    #[cfg(feature = "debug-routes")]
    if state.fail.sync_config {
        return Err(error(503, "sync-config failing on purpose"));
    }
    let agent = shared.config.agent_user;
    workdir::write_settings(&dir, &req.settings, agent)
        .and_then(|()| workdir::write_gateway_env(&dir, gateway_token, agent))
        .map_err(|e| {
            // The error names a path at most, never a file's content.
            eprintln!("gastown-control: cannot write the files of town {town}: {e}");
            error(500, "cannot write the town's files")
        })?;
    let entry = state.towns.entry(req.town_id).or_default();
    // The whole env is replaced: a key the worker no longer sends is gone.
    entry.env = req.env;
    entry.env_updates += 1;
    Ok((
        200,
        json!({ "ok": true, "names": entry.env.keys().collect::<Vec<_>>() }),
    ))
}

/// The gateway token of a town's env; an empty one counts as none.
fn gateway_token(env: &BTreeMap<String, String>) -> Option<&str> {
    env.get(GATEWAY_TOKEN_ENV)
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

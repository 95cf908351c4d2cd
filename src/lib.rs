//! Gastown Cloud control plane: one Cloudflare Worker and its Durable Objects.
//!
//! - `router` matches the route, verifies the one principal kind it accepts, and only then calls
//!   a handler; handlers live in `handlers/`, one module per resource.
//! - `dos/`: the Durable Objects (`GastownUserDO`, `GastownOrgDO`, `TownDO`, `TownContainerDO`)
//!   and the typed stub every caller uses to reach them.
//! - `storage`: SQLite helpers the DOs share; `rig_index`: the D1 rig index; `config`: settings
//!   and secrets read once per isolate.
//! - Pure decisions (tokens, validation, routes, the DO protocols, the alarm's policy, errors)
//!   live in the `gastown-core` crate.

mod config;
mod d1;
mod dos;
mod handlers;
mod http;
mod org_towns;
mod platforms;
mod rig_index;
mod router;
mod storage;

use worker::{event, Context, Env, Request, Response, Result};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    Ok(router::handle(req, &env).await)
}

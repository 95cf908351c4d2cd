//! Gastown Cloud control plane: one Cloudflare Worker and its Durable Objects.
//!
//! - `router` matches the route, verifies the one principal kind it accepts, and only then calls
//!   a handler; handlers live in `handlers/`, one module per resource.
//! - One module per Durable Object: `user_do` (`GastownUserDO`), `org_do` (`GastownOrgDO`),
//!   `town_do` (`TownDO`). `owner_store` is what the two owner DOs share; `owner` picks the
//!   owner DO of a town.
//! - Pure decisions (tokens, validation, routes, errors) live in the `gastown-core` crate.

mod config;
mod container_do;
mod handlers;
mod http;
mod org_do;
mod owner;
mod owner_store;
mod rig_index;
mod router;
mod storage;
mod town_do;
mod user_do;

use worker::{event, Context, Env, Request, Response, Result};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    Ok(router::handle(req, &env).await)
}

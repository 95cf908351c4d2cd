//! `gastown-control`: the control server a town's container runs on port 8080 (DESIGN.md §7).
//! `TownContainerDO` calls it to hand over a fresh container token and the town's env; the
//! processes it will run read both from here, so a refresh reaches them without a restart.
//!
//! One process can serve several towns (local dev and tests run one for all of them), so state
//! is kept per `townId`. `--debug` adds `/debug/...` routes that tests use to read that state and
//! to make the server fail on purpose; never pass it in production.
//!
//! Usage: `gastown-control [--host 127.0.0.1] [--port 8080] [--debug]`

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use tiny_http::{Header, Method, Request, Response, Server};

const MAX_BODY: u64 = 256 * 1024;

#[derive(Default)]
struct Town {
    token: Option<String>,
    token_updates: u64,
    env: BTreeMap<String, String>,
    env_updates: u64,
}

/// Failures injected through `/debug/fail`.
#[derive(Default, Deserialize)]
struct FailModes {
    #[serde(default)]
    refresh_token: bool,
    #[serde(default)]
    sync_config: bool,
}

struct State {
    towns: HashMap<String, Town>,
    fail: FailModes,
    debug: bool,
}

#[derive(Deserialize)]
struct RefreshToken {
    token: String,
    #[serde(rename = "townId")]
    town_id: String,
}

#[derive(Deserialize)]
struct SyncConfig {
    env: BTreeMap<String, String>,
    #[serde(rename = "townId")]
    town_id: String,
}

type Reply = (u16, Value);

fn error(status: u16, message: &str) -> Reply {
    (status, json!({ "error": message }))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| error(400, &format!("bad body: {e}")))
}

impl State {
    fn handle(&mut self, method: &Method, path: &str, body: &[u8]) -> Reply {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (Method::Get, ["health"]) => {
                (200, json!({ "status": "ok", "towns": self.towns.len() }))
            }
            (Method::Post, ["refresh-token"]) => {
                if self.fail.refresh_token {
                    return error(503, "refresh-token failing on purpose");
                }
                let req: RefreshToken = match parse(body) {
                    Ok(r) => r,
                    Err(e) => return e,
                };
                if req.token.is_empty() || req.town_id.is_empty() {
                    return error(400, "token and townId are required");
                }
                let town = self.towns.entry(req.town_id).or_default();
                town.token = Some(req.token);
                town.token_updates += 1;
                (200, json!({ "ok": true }))
            }
            (Method::Post, ["sync-config"]) => {
                if self.fail.sync_config {
                    return error(503, "sync-config failing on purpose");
                }
                let req: SyncConfig = match parse(body) {
                    Ok(r) => r,
                    Err(e) => return e,
                };
                let town = self.towns.entry(req.town_id).or_default();
                // The whole env is replaced: a key the worker no longer sends is gone.
                town.env = req.env;
                town.env_updates += 1;
                (
                    200,
                    json!({ "ok": true, "names": town.env.keys().collect::<Vec<_>>() }),
                )
            }
            (Method::Get, ["debug", "towns", town]) if self.debug => match self.towns.get(*town) {
                Some(t) => (
                    200,
                    json!({ "token": t.token, "token_updates": t.token_updates, "env": t.env, "env_updates": t.env_updates }),
                ),
                None => error(404, "no such town"),
            },
            (Method::Post, ["debug", "fail"]) if self.debug => match parse::<FailModes>(body) {
                Ok(modes) => {
                    self.fail = modes;
                    (200, json!({ "ok": true }))
                }
                Err(e) => e,
            },
            _ => error(404, "no such route"),
        }
    }
}

fn respond(request: Request, (status, body): Reply) {
    let header =
        Header::from_bytes(&b"content-type"[..], &b"application/json"[..]).expect("static header");
    let response = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header);
    if let Err(e) = request.respond(response) {
        eprintln!("gastown-control: could not answer: {e}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let host = value_of("--host").unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = value_of("--port").unwrap_or_else(|| "8080".to_owned());
    let addr = format!("{host}:{port}");
    let server = match Server::http(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gastown-control: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let mut state = State {
        towns: HashMap::new(),
        fail: FailModes::default(),
        debug: args.iter().any(|a| a == "--debug"),
    };
    println!("gastown-control listening on http://{addr}");
    for mut request in server.incoming_requests() {
        let mut body = Vec::new();
        let read = request
            .as_reader()
            .take(MAX_BODY + 1)
            .read_to_end(&mut body);
        let reply = match read {
            Ok(n) if n as u64 > MAX_BODY => error(413, "body too large"),
            Ok(_) => {
                let path = request
                    .url()
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let method = request.method().clone();
                state.handle(&method, &path, &body)
            }
            Err(e) => error(400, &format!("unreadable body: {e}")),
        };
        respond(request, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            towns: HashMap::new(),
            fail: FailModes::default(),
            debug: true,
        }
    }

    #[test]
    fn keeps_token_and_env_per_town() {
        let mut s = state();
        assert_eq!(
            s.handle(
                &Method::Post,
                "/refresh-token",
                br#"{"token":"t1","townId":"a"}"#
            )
            .0,
            200
        );
        assert_eq!(
            s.handle(
                &Method::Post,
                "/sync-config",
                br#"{"env":{"A":"1","B":"2"},"townId":"a"}"#
            )
            .0,
            200
        );
        assert_eq!(
            s.handle(
                &Method::Post,
                "/sync-config",
                br#"{"env":{"A":"1"},"townId":"a"}"#
            )
            .0,
            200
        );
        let (status, body) = s.handle(&Method::Get, "/debug/towns/a", b"");
        assert_eq!(status, 200);
        assert_eq!(body["token"], "t1");
        assert_eq!(
            body["env"],
            json!({"A": "1"}),
            "a key no longer sent is removed"
        );
        assert_eq!(s.handle(&Method::Get, "/debug/towns/b", b"").0, 404);
    }

    #[test]
    fn fails_on_purpose_and_rejects_bad_bodies() {
        let mut s = state();
        assert_eq!(
            s.handle(&Method::Post, "/debug/fail", br#"{"refresh_token":true}"#)
                .0,
            200
        );
        assert_eq!(
            s.handle(
                &Method::Post,
                "/refresh-token",
                br#"{"token":"t","townId":"a"}"#
            )
            .0,
            503
        );
        assert_eq!(
            s.handle(&Method::Post, "/sync-config", br#"{"env":{},"townId":"a"}"#)
                .0,
            200
        );
        assert_eq!(s.handle(&Method::Post, "/sync-config", b"nope").0, 400);
        assert_eq!(s.handle(&Method::Post, "/debug/fail", b"{}").0, 200);
        assert_eq!(
            s.handle(
                &Method::Post,
                "/refresh-token",
                br#"{"token":"t","townId":"a"}"#
            )
            .0,
            200
        );
        assert_eq!(
            s.handle(
                &Method::Post,
                "/refresh-token",
                br#"{"token":"","townId":"a"}"#
            )
            .0,
            400
        );
        assert_eq!(s.handle(&Method::Get, "/health", b"").0, 200);
    }

    #[test]
    fn debug_routes_need_the_flag() {
        let mut s = state();
        s.debug = false;
        assert_eq!(s.handle(&Method::Get, "/debug/towns/a", b"").0, 404);
        assert_eq!(s.handle(&Method::Post, "/debug/fail", b"{}").0, 404);
    }
}

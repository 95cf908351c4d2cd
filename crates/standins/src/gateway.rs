//! `gastown-gateway`: a stand-in for the Kilo gateway, for local dev and tests only (it is
//! never deployed). It checks a sandbox token exactly as the real gateway must, answers a
//! fixed chat completion, and records who used which model so a test can check that usage is
//! attributed to the right user and organization.
//!
//! # Routes
//!
//! * `GET /health` → `{"ok":true}`.
//! * `POST /api/gateway/chat/completions` with `authorization: Bearer <sandbox token>`: the
//!   token must pass [`Keys::verify_sandbox`] with `NEXTAUTH_SECRET` (a user, container,
//!   expired, forged or mistyped token is refused 401); the body must be JSON with a string
//!   `model` and an array `messages` (400). The answer is an OpenAI-style completion whose
//!   content is always [`REPLY_TEXT`]; `stream` is ignored.
//! * `GET /debug/usage` → `{"calls":[UsageRecord…]}`, accepted calls in order. Open to anyone:
//!   this binary holds nothing worth hiding.
//!
//! Refusals are `{"error":{"code":"…","message":"…"}}`. Requests are read as the control
//! server reads them ([`gastown_control::http`]): one per connection, a thread each, a read
//! deadline, a bounded head and body.

use gastown_control::cli::{self, Args};
use gastown_control::http::{
    error, listen, one_exchange, read_body, read_head, serve_each, ReadFail, Reply,
    DEFAULT_READ_TIMEOUT,
};
use gastown_core::auth::{Keys, SandboxClaims};
use gastown_core::control::{bearer, AUTHORIZATION_HEADER, GATEWAY_CHAT_PATH, HEALTH_PATH};
use serde::Serialize;
use serde_json::{json, Value};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The secret sandbox tokens are signed with (the dashboard's).
pub const SECRET_ENV: &str = "NEXTAUTH_SECRET";
/// Where the recorded usage is read.
pub const USAGE_PATH: &str = "/debug/usage";
/// Largest chat body read: a conversation is much larger than a control request.
pub const MAX_CHAT_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The content of every completion.
pub const REPLY_TEXT: &str = "stand-in gateway reply";
/// The `completion_tokens` of every completion (about [`REPLY_TEXT`]'s length / 4).
pub const COMPLETION_TOKENS: u64 = 5;
/// Characters counted as one prompt token.
const CHARS_PER_TOKEN: u64 = 4;

/// What `--help` prints, and a bad argument after its error.
pub const USAGE: &str =
    "usage: NEXTAUTH_SECRET=… gastown-gateway [--host 127.0.0.1] [--port 8787] \
[--read-timeout-ms 5000]
  A stand-in Kilo gateway for local dev and tests: POST /api/gateway/chat/completions with a
  sandbox token, GET /debug/usage for the calls it accepted, GET /health.";

/// Command-line options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub read_timeout: Duration,
}

impl Options {
    /// Parses the arguments after the program name.
    ///
    /// # Errors
    /// A message naming the bad argument.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options {
            host: "127.0.0.1".to_owned(),
            port: 8787,
            read_timeout: DEFAULT_READ_TIMEOUT,
        };
        let mut it = Args::new(args);
        while let Some(arg) = it.next() {
            match arg {
                "--host" => opts.host = it.value(arg)?,
                "--port" => opts.port = cli::port(&it.value(arg)?)?,
                "--read-timeout-ms" => opts.read_timeout = cli::read_timeout(&it.value(arg)?)?,
                other => return Err(cli::unknown(other)),
            }
        }
        Ok(opts)
    }
}

/// One accepted call, as `/debug/usage` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    /// The token's `sub`.
    pub user_id: String,
    pub organization_id: Option<String>,
    pub town_id: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The whole program: reads the secret, parses the arguments, listens and serves until killed.
/// Returns the exit code on failure to start.
pub fn cli_main() -> i32 {
    let opts = match cli::read("gastown-gateway", USAGE, &cli::args(), Options::parse) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let secret = match std::env::var(SECRET_ENV) {
        Ok(s) if !s.is_empty() => s,
        _ => {
            eprintln!("gastown-gateway: refusing to start: {SECRET_ENV} is not set");
            return 1;
        }
    };
    let (listener, bound) = match listen("gastown-gateway", &opts.host, opts.port) {
        Ok(l) => l,
        Err(code) => return code,
    };
    // Tests read the address from this line.
    println!("gastown-gateway listening on http://{bound}");
    match serve(listener, &secret, opts.read_timeout) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gastown-gateway: {e}");
            1
        }
    }
}

struct Gateway {
    keys: Keys,
    /// Accepted calls, in order; a call's id is its position (from 1).
    usage: Mutex<Vec<UsageRecord>>,
}

impl Gateway {
    fn usage(&self) -> MutexGuard<'_, Vec<UsageRecord>> {
        // A push cannot be left half-done by a panic.
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serves the stand-in gateway on `listener`, verifying sandbox tokens with `secret`.
///
/// # Errors
/// When the listener fails for good.
pub fn serve(listener: TcpListener, secret: &str, read_timeout: Duration) -> io::Result<()> {
    let gateway = Arc::new(Gateway {
        keys: Keys::new(Some(secret), None),
        usage: Mutex::new(Vec::new()),
    });
    serve_each(listener, "gastown-gateway", move |stream| {
        one_exchange(stream, read_timeout, |stream, deadline| {
            match request(stream, &gateway, deadline) {
                Ok(reply) => Ok(reshape(reply)),
                Err(ReadFail::Reply(reply)) => Err(ReadFail::Reply(reshape(reply))),
                Err(ReadFail::Closed) => Err(ReadFail::Closed),
            }
        });
    })
}

/// The gateway's error shape for a refusal made in the shared `{"error": "…"}` shape.
fn reshape((status, body): Reply) -> Reply {
    match body.get("error").and_then(Value::as_str) {
        Some(message) if status >= 400 => (
            status,
            json!({ "error": { "code": code(status), "message": message } }),
        ),
        _ => (status, body),
    }
}

fn code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "body_too_large",
        431 => "head_too_large",
        503 => "unavailable",
        _ => "error",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Chat,
    Usage,
}

fn route(method: &str, path: &str) -> Result<Route, Reply> {
    let (found, want) = match path {
        HEALTH_PATH => (Route::Health, "GET"),
        GATEWAY_CHAT_PATH => (Route::Chat, "POST"),
        USAGE_PATH => (Route::Usage, "GET"),
        _ => return Err(error(404, "no such route")),
    };
    if method == want {
        Ok(found)
    } else {
        Err(error(405, "method not allowed"))
    }
}

/// Reads and answers one request: route, then the token, then the body.
fn request(
    stream: &mut TcpStream,
    gateway: &Gateway,
    deadline: Instant,
) -> Result<Reply, ReadFail> {
    let refuse = ReadFail::Reply;
    let mut buf = Vec::with_capacity(1024);
    let head = read_head(stream, &mut buf, deadline)?;
    match route(&head.method, head.path()).map_err(refuse)? {
        Route::Health => Ok((200, json!({ "ok": true }))),
        Route::Usage => Ok((200, json!({ "calls": *gateway.usage() }))),
        Route::Chat => {
            let header = head.one(AUTHORIZATION_HEADER).map_err(refuse)?;
            let claims = authorize(&gateway.keys, header, now_secs()).map_err(refuse)?;
            let body = read_body(stream, &head, buf, MAX_CHAT_BODY_BYTES, deadline)?;
            Ok(chat(gateway, claims, &body).unwrap_or_else(|e| e))
        }
    }
}

/// The sandbox claims of the `authorization` header's bearer token.
fn authorize(keys: &Keys, header: Option<&str>, now: i64) -> Result<SandboxClaims, Reply> {
    let token = header
        .and_then(bearer)
        .ok_or_else(|| error(401, "missing bearer token"))?;
    // The message names the reason, never the token.
    keys.verify_sandbox(token, now)
        .map_err(|e| error(401, e.message()))
}

/// Answers a completion for `claims` and records its usage.
fn chat(gateway: &Gateway, claims: SandboxClaims, body: &[u8]) -> Result<Reply, Reply> {
    let request: Value =
        serde_json::from_slice(body).map_err(|_| error(400, "body is not JSON"))?;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| error(400, "model must be a non-empty string"))?;
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| error(400, "messages must be an array"))?;
    let prompt_tokens = prompt_tokens(messages);
    let record = UsageRecord {
        user_id: claims.user_id,
        organization_id: claims.organization_id,
        town_id: claims.town_id.as_str().to_owned(),
        model: model.to_owned(),
        prompt_tokens,
        completion_tokens: COMPLETION_TOKENS,
    };
    let n = {
        let mut usage = gateway.usage();
        usage.push(record);
        usage.len()
    };
    Ok((
        200,
        json!({
            "id": format!("chatcmpl-standin-{n}"),
            "object": "chat.completion",
            "created": now_secs(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": REPLY_TEXT },
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": prompt_tokens + COMPLETION_TOKENS,
            },
        }),
    ))
}

/// The characters of the messages' text (a string `content`, or the `text` of each part of
/// an array `content`) over [`CHARS_PER_TOKEN`], at least 1.
fn prompt_tokens(messages: &[Value]) -> u64 {
    let text_chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count() as u64);
    let chars: u64 = messages
        .iter()
        .filter_map(|m| m.get("content"))
        .map(|content| match content {
            Value::Array(parts) => parts
                .iter()
                .map(|p| p.get("text").map_or(0, text_chars))
                .sum(),
            other => text_chars(other),
        })
        .sum();
    (chars / CHARS_PER_TOKEN).max(1)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gastown_core::auth::{sign_container, sign_sandbox};
    use gastown_core::ids::{OrgId, TownId};

    const SECRET: &str = "stand-in-gateway-test-secret-0123456789";

    #[test]
    fn options() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = Options::parse(&[]).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 8787));
        assert_eq!(o.read_timeout, DEFAULT_READ_TIMEOUT);
        let o = Options::parse(&args(&["--port", "0", "--read-timeout-ms", "250"])).unwrap();
        assert_eq!((o.port, o.read_timeout), (0, Duration::from_millis(250)));
        assert!(Options::parse(&args(&["--port", "x"])).is_err());
        assert!(Options::parse(&args(&["--read-timeout-ms", "0"])).is_err());
        assert!(Options::parse(&args(&["--workdir", "x"])).is_err());
    }

    #[test]
    fn prompt_tokens_count_text_characters() {
        assert_eq!(prompt_tokens(&[]), 1);
        let messages = json!([
            { "role": "system", "content": "12345678" },
            { "role": "user", "content": [{ "type": "text", "text": "abcd" }, { "type": "image_url" }] },
            { "role": "assistant", "content": null },
        ]);
        assert_eq!(prompt_tokens(messages.as_array().unwrap()), 3);
    }

    #[test]
    fn only_sandbox_tokens_are_authorized() {
        let keys = Keys::new(Some(SECRET), None);
        let now = 1_700_000_000;
        let town = TownId::parse("town-a").unwrap();
        let org = OrgId::parse("org-1").unwrap();
        let (token, _) = sign_sandbox(&keys, "u1", &town, Some(&org), now).unwrap();
        let claims = authorize(&keys, Some(&format!("Bearer {token}")), now).unwrap();
        assert_eq!(
            (claims.user_id.as_str(), claims.organization_id.as_deref()),
            ("u1", Some("org-1"))
        );
        assert_eq!(authorize(&keys, None, now).unwrap_err().0, 401);
        assert_eq!(
            authorize(&keys, Some(&format!("Basic {token}")), now)
                .unwrap_err()
                .0,
            401
        );
        let both = Keys::new(Some(SECRET), Some(SECRET));
        let (container, _) = sign_container(&both, &town, "u1", 1, now).unwrap();
        let refused = authorize(&keys, Some(&format!("Bearer {container}")), now).unwrap_err();
        assert_eq!(refused.0, 401);
        assert!(!refused.1.to_string().contains(&container));
    }

    #[test]
    fn refusals_take_the_gateway_shape() {
        assert_eq!(
            reshape(error(401, "token expired")),
            (
                401,
                json!({ "error": { "code": "unauthorized", "message": "token expired" } })
            )
        );
        let ok = (200, json!({ "ok": true }));
        assert_eq!(reshape(ok.clone()), ok);
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/health"), Ok(Route::Health));
        assert_eq!(route("POST", GATEWAY_CHAT_PATH), Ok(Route::Chat));
        assert_eq!(route("GET", USAGE_PATH), Ok(Route::Usage));
        assert_eq!(route("GET", GATEWAY_CHAT_PATH).unwrap_err().0, 405);
        assert_eq!(route("GET", "/nope").unwrap_err().0, 404);
    }
}

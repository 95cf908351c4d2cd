//! `gastown-gateway`: a stand-in for the Kilo gateway, for local dev and tests only (it is
//! never deployed). It checks a sandbox token exactly as the real gateway must, answers as the
//! scripted model of [`crate::script`] says (so a real agent, the Kilo CLI, can be driven
//! through a known sequence of tool calls), and records who used which model so a test can
//! check that usage is attributed to the right user and organization.
//!
//! # Routes
//!
//! * `GET /health` → `{"ok":true}`.
//! * `POST /api/gateway/chat/completions` with `authorization: Bearer <sandbox token>`: the
//!   token must pass [`Keys::verify_sandbox`] with `NEXTAUTH_SECRET` (a user, container,
//!   expired, forged or mistyped token is refused 401, before the body is read); the body must
//!   be a JSON [`ChatRequest`], a non-empty string `model` and an array `messages` (400). The
//!   answer is the script's [`Turn`]: with `"stream": true`, `200` `text/event-stream`, events
//!   `data: <chunk>\n\n` (a `chat.completion.chunk` each: the role, then the tool call, its
//!   name first and then its JSON arguments in fragments, or the text, then the
//!   `finish_reason` `tool_calls` or `stop`, then one with no choices and the `usage`), then
//!   `data: [DONE]\n\n` and the connection closed; otherwise one `chat.completion` whose
//!   `message` holds the `tool_calls` or the `content`. A slow text ([`SLOW_DIRECTIVE`]) is
//!   streamed in [`SLOW_CHUNKS`] pieces [`SLOW_PAUSE`] apart (sent at once when not
//!   streamed).
//! * `GET /debug/usage` → `{"calls":[UsageRecord…]}`, accepted calls in order, completion
//!   tokens counted from what was answered.
//! * `GET /debug/requests` → `{"requests":[RequestRecord…]}`, the last [`REQUESTS_KEPT`]
//!   accepted calls in order: model, `stream`, tool names, script step, tool outputs (each cut
//!   to [`MAX_TOOL_OUTPUT_CHARS`] characters), user messages (each cut to
//!   [`MAX_USER_TEXT_CHARS`]) and the answer; never a header.
//!
//! The debug routes are open to anyone: this binary holds nothing worth hiding, and they
//! never show a token. Refusals are `{"error":{"code":"…","message":"…"}}`. Requests are read
//! as the control server reads them ([`gastown_control::http`]): one per connection, a thread
//! each, a read deadline, a bounded head and body; a stream is written here, as it goes.

use crate::script::{self, ChatRequest, Message, Say, Turn};
use gastown_control::cli::{self, Args};
use gastown_control::http::{
    error, listen, one_exchange, read_body, read_head, serve_each, ReadFail, Reply,
    DEFAULT_READ_TIMEOUT,
};
use gastown_core::auth::{Keys, SandboxClaims};
use gastown_core::control::{bearer, AUTHORIZATION_HEADER, GATEWAY_CHAT_PATH, HEALTH_PATH};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::script::{MAX_TOOL_OUTPUT_CHARS, REPLY_TEXT, SLOW_DIRECTIVE};

/// The secret sandbox tokens are signed with (the dashboard's).
pub const SECRET_ENV: &str = "NEXTAUTH_SECRET";
/// Where the recorded usage is read.
pub const USAGE_PATH: &str = "/debug/usage";
/// Where the recent requests are read.
pub const REQUESTS_PATH: &str = "/debug/requests";
/// How many requests [`REQUESTS_PATH`] keeps.
pub const REQUESTS_KEPT: usize = 100;
/// Largest chat body read: a conversation is much larger than a control request.
pub const MAX_CHAT_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The pieces a slow text is streamed in.
pub const SLOW_CHUNKS: usize = 20;
/// The pause before each piece of a slow text but the first.
pub const SLOW_PAUSE: Duration = Duration::from_millis(200);
/// Characters counted as one token.
const CHARS_PER_TOKEN: u64 = 4;
/// The longest fragment of a tool call's arguments in a stream.
const ARGUMENTS_FRAGMENT_CHARS: usize = 32;

/// What `--help` prints, and a bad argument after its error.
pub const USAGE: &str =
    "usage: NEXTAUTH_SECRET=… gastown-gateway [--host 127.0.0.1] [--port 8787] \
[--read-timeout-ms 5000]
  A stand-in Kilo gateway for local dev and tests: POST /api/gateway/chat/completions with a
  sandbox token (answered by a scripted model), GET /debug/usage for the calls it accepted,
  GET /debug/requests for what the last ones asked and were answered, GET /health.";

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
    /// The token's `exp`: which of the town's gateway tokens paid for the call (a token is
    /// never shown).
    pub token_expires_at: i64,
}

/// Longest user message kept in a [`RequestRecord`], in characters.
pub const MAX_USER_TEXT_CHARS: usize = 8000;

/// One accepted call, as `/debug/requests` shows it: what the script read and answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// When the call was answered, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The token's town.
    pub town_id: String,
    pub model: String,
    pub stream: bool,
    /// The names of the tools offered.
    pub tools: Vec<String>,
    /// The agent script's step: the number of tool results.
    pub step: usize,
    /// The tool results, each cut to [`MAX_TOOL_OUTPUT_CHARS`] characters.
    pub tool_outputs: Vec<String>,
    /// The user messages' text, oldest first, each cut to [`MAX_USER_TEXT_CHARS`] characters
    /// (what the agent was told, and in which order).
    pub user_texts: Vec<String>,
    /// `{"text": …}` or `{"call": {"name": …, "arguments": {…}}}`.
    pub answer: Say,
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
    /// Accepted calls, in order; a call's number is its position (from 1).
    usage: Mutex<Vec<UsageRecord>>,
    /// The last [`REQUESTS_KEPT`] accepted calls, in order.
    requests: Mutex<VecDeque<RequestRecord>>,
}

/// A push cannot be left half-done by a panic, so a poisoned lock is still good.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Gateway {
    /// Records an accepted call; its number, from 1.
    fn record(&self, usage: UsageRecord, request: RequestRecord) -> usize {
        let n = {
            let mut calls = lock(&self.usage);
            calls.push(usage);
            calls.len()
        };
        let mut requests = lock(&self.requests);
        if requests.len() == REQUESTS_KEPT {
            requests.pop_front();
        }
        requests.push_back(request);
        n
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
        requests: Mutex::new(VecDeque::new()),
    });
    serve_each(listener, "gastown-gateway", move |stream| {
        one_exchange(stream, read_timeout, |stream, deadline| {
            match request(stream, &gateway, deadline) {
                Ok(Answer::Json(reply)) => Ok(reshape(reply)),
                Ok(Answer::Stream(completion)) => {
                    // A client that goes away mid-stream (an aborted session) is no failure.
                    let _ = write_stream(stream, &completion);
                    // Written: `one_exchange` has nothing left to write, and closes.
                    Err(ReadFail::Closed)
                }
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
    Requests,
}

fn route(method: &str, path: &str) -> Result<Route, Reply> {
    let (found, want) = match path {
        HEALTH_PATH => (Route::Health, "GET"),
        GATEWAY_CHAT_PATH => (Route::Chat, "POST"),
        USAGE_PATH => (Route::Usage, "GET"),
        REQUESTS_PATH => (Route::Requests, "GET"),
        _ => return Err(error(404, "no such route")),
    };
    if method == want {
        Ok(found)
    } else {
        Err(error(405, "method not allowed"))
    }
}

/// How a request is answered: one JSON reply, or a completion streamed as events.
enum Answer {
    Json(Reply),
    Stream(Completion),
}

/// Reads and answers one request: route, then the token, then the body.
fn request(
    stream: &mut TcpStream,
    gateway: &Gateway,
    deadline: Instant,
) -> Result<Answer, ReadFail> {
    let refuse = ReadFail::Reply;
    let mut buf = Vec::with_capacity(1024);
    let head = read_head(stream, &mut buf, deadline)?;
    let json = |reply| Ok(Answer::Json(reply));
    match route(&head.method, head.path()).map_err(refuse)? {
        Route::Health => json((200, json!({ "ok": true }))),
        Route::Usage => json((200, json!({ "calls": *lock(&gateway.usage) }))),
        Route::Requests => json((200, json!({ "requests": *lock(&gateway.requests) }))),
        Route::Chat => {
            let header = head.one(AUTHORIZATION_HEADER).map_err(refuse)?;
            let claims = authorize(&gateway.keys, header, now_secs()).map_err(refuse)?;
            let body = read_body(stream, &head, buf, MAX_CHAT_BODY_BYTES, deadline)?;
            Ok(chat(gateway, claims, &body).unwrap_or_else(Answer::Json))
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

/// The chat request in `body`.
fn parse_chat(body: &[u8]) -> Result<ChatRequest, Reply> {
    let value: Value = serde_json::from_slice(body).map_err(|_| error(400, "body is not JSON"))?;
    let request: ChatRequest = serde_json::from_value(value)
        .map_err(|e| error(400, &format!("not a chat request: {e}")))?;
    if request.model.is_empty() {
        return Err(error(400, "model must be a non-empty string"));
    }
    Ok(request)
}

/// Answers a completion for `claims` as the script says and records the call.
fn chat(gateway: &Gateway, claims: SandboxClaims, body: &[u8]) -> Result<Answer, Reply> {
    let request = parse_chat(body)?;
    let turn = script::turn(&request);
    let streams = request.streams();
    let usage = Usage::new(
        prompt_tokens(&request.messages),
        completion_tokens(&turn.say),
    );
    let n = gateway.record(
        UsageRecord {
            user_id: claims.user_id,
            organization_id: claims.organization_id,
            town_id: claims.town_id.as_str().to_owned(),
            model: request.model.clone(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            token_expires_at: claims.expires_at,
        },
        RequestRecord {
            at_ms: now_ms(),
            town_id: claims.town_id.as_str().to_owned(),
            model: request.model.clone(),
            stream: streams,
            tools: request.tool_names(),
            step: request.step(),
            tool_outputs: request.tool_outputs(),
            user_texts: request
                .user_texts()
                .into_iter()
                .map(|t| t.chars().take(MAX_USER_TEXT_CHARS).collect())
                .collect(),
            answer: turn.say.clone(),
        },
    );
    let completion = Completion {
        id: format!("chatcmpl-standin-{n}"),
        call_id: format!("call_{n}"),
        created: now_secs(),
        model: request.model,
        turn,
        usage,
    };
    Ok(if streams {
        Answer::Stream(completion)
    } else {
        Answer::Json((200, completion.message()))
    })
}

/// The characters of the messages' text (a string `content`, or the `text` of each part of
/// an array `content`) over [`CHARS_PER_TOKEN`], at least 1.
fn prompt_tokens(messages: &[Message]) -> u64 {
    let chars: usize = messages.iter().map(|m| m.content.chars()).sum();
    tokens(chars)
}

/// The characters of the text, or of the tool's name and JSON arguments, over
/// [`CHARS_PER_TOKEN`], at least 1.
fn completion_tokens(say: &Say) -> u64 {
    tokens(match say {
        Say::Text(text) => text.chars().count(),
        Say::Call { name, arguments } => {
            name.chars().count() + arguments.to_string().chars().count()
        }
    })
}

fn tokens(chars: usize) -> u64 {
    (u64::try_from(chars).unwrap_or(u64::MAX) / CHARS_PER_TOKEN).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Usage {
    fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// One answer of the script, ready to be sent either way.
#[derive(Debug, Clone, PartialEq)]
struct Completion {
    id: String,
    /// The id of the tool call, when there is one.
    call_id: String,
    created: i64,
    model: String,
    turn: Turn,
    usage: Usage,
}

impl Completion {
    /// The whole answer as one `chat.completion`.
    fn message(&self) -> Value {
        let (message, finish_reason) = match &self.turn.say {
            Say::Text(text) => (json!({ "role": "assistant", "content": text }), "stop"),
            Say::Call { name, arguments } => (
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "id": self.call_id,
                        "type": "function",
                        "function": { "name": name, "arguments": arguments.to_string() },
                    }],
                }),
                "tool_calls",
            ),
        };
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason }],
            "usage": self.usage,
        })
    }

    /// The answer as `chat.completion.chunk`s, each with the pause to make before sending it.
    fn chunks(&self) -> Vec<(Duration, Value)> {
        let delta = |delta: Value, finish_reason: Option<&str>| {
            self.chunk(json!([{ "index": 0, "delta": delta, "finish_reason": finish_reason }]))
        };
        let at_once = |chunk| (Duration::ZERO, chunk);
        let mut chunks = vec![at_once(delta(
            json!({ "role": "assistant", "content": "" }),
            None,
        ))];
        let finish_reason = match &self.turn.say {
            Say::Call { name, arguments } => {
                chunks.push(at_once(delta(
                    json!({ "tool_calls": [{
                        "index": 0,
                        "id": self.call_id,
                        "type": "function",
                        "function": { "name": name, "arguments": "" },
                    }] }),
                    None,
                )));
                let arguments = arguments.to_string();
                let fragments = arguments.chars().count().div_ceil(ARGUMENTS_FRAGMENT_CHARS);
                for fragment in pieces(&arguments, fragments) {
                    chunks.push(at_once(delta(
                        json!({ "tool_calls": [{ "index": 0, "function": { "arguments": fragment } }] }),
                        None,
                    )));
                }
                "tool_calls"
            }
            Say::Text(text) if self.turn.slow => {
                for (i, piece) in pieces(text, SLOW_CHUNKS).into_iter().enumerate() {
                    let pause = if i == 0 { Duration::ZERO } else { SLOW_PAUSE };
                    chunks.push((pause, delta(json!({ "content": piece }), None)));
                }
                "stop"
            }
            Say::Text(text) => {
                chunks.push(at_once(delta(json!({ "content": text }), None)));
                "stop"
            }
        };
        chunks.push(at_once(delta(json!({}), Some(finish_reason))));
        let mut usage = self.chunk(json!([]));
        usage["usage"] = json!(self.usage);
        chunks.push(at_once(usage));
        chunks
    }

    /// A chunk with `choices`.
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

/// `text` cut into `n` (at least 1) pieces of about the same length, on character boundaries;
/// some are empty when there are more pieces than characters.
fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1);
    let cut = |i: usize| i * chars.len() / n;
    (0..n)
        .map(|i| chars[cut(i)..cut(i + 1)].iter().collect())
        .collect()
}

/// Writes `completion` as server-sent events, each written as soon as it is due, then
/// `[DONE]`, and closes the sending side. The end of the body is the end of the connection.
fn write_stream(stream: &mut TcpStream, completion: &Completion) -> io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n\
          x-content-type-options: nosniff\r\nconnection: close\r\n\r\n",
    )?;
    for (pause, chunk) in completion.chunks() {
        std::thread::sleep(pause);
        stream.write_all(format!("data: {chunk}\n\n").as_bytes())?;
    }
    stream.write_all(b"data: [DONE]\n\n")?;
    stream.flush()?;
    stream.shutdown(Shutdown::Write)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    fn tokens_count_text_characters() {
        assert_eq!(prompt_tokens(&[]), 1);
        let messages: Vec<Message> = serde_json::from_value(json!([
            { "role": "system", "content": "12345678" },
            { "role": "user", "content": [{ "type": "text", "text": "abcd" }, { "type": "image_url" }] },
            { "role": "assistant", "content": null },
        ]))
        .unwrap();
        assert_eq!(prompt_tokens(&messages), 3);
        assert_eq!(completion_tokens(&Say::Text(REPLY_TEXT.to_owned())), 5);
        assert_eq!(completion_tokens(&Say::Text(String::new())), 1);
        let call = Say::Call {
            name: "bash",
            arguments: json!({ "command": "true" }),
        };
        // "bash" and `{"command":"true"}`: 4 + 18 characters.
        assert_eq!(completion_tokens(&call), 5);
    }

    fn completion(say: Say, slow: bool) -> Completion {
        Completion {
            id: "chatcmpl-standin-3".to_owned(),
            call_id: "call_3".to_owned(),
            created: 1_700_000_000,
            model: "kilo/m".to_owned(),
            turn: Turn { say, slow },
            usage: Usage::new(7, 2),
        }
    }

    #[test]
    fn a_tool_call_is_one_message_or_chunks_of_its_arguments() {
        let arguments = json!({ "filePath": "gastown/gt-1.md", "content": "# T\n\nbody ü\n" });
        let c = completion(
            Say::Call {
                name: "write",
                arguments: arguments.clone(),
            },
            false,
        );
        let message = c.message();
        assert_eq!(message["object"], "chat.completion");
        assert_eq!(message["choices"][0]["finish_reason"], "tool_calls");
        let call = &message["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(
            (&call["id"], &call["type"]),
            (&json!("call_3"), &json!("function"))
        );
        let sent: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(sent, arguments);
        assert_eq!(
            message["usage"],
            json!({ "prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9 })
        );

        let chunks: Vec<Value> = c
            .chunks()
            .into_iter()
            .map(|(pause, chunk)| {
                assert_eq!(pause, Duration::ZERO);
                assert_eq!(
                    (
                        &chunk["id"],
                        &chunk["object"],
                        &chunk["created"],
                        &chunk["model"]
                    ),
                    (
                        &json!("chatcmpl-standin-3"),
                        &json!("chat.completion.chunk"),
                        &json!(1_700_000_000),
                        &json!("kilo/m")
                    )
                );
                chunk
            })
            .collect();
        let delta = |i: usize| &chunks[i]["choices"][0]["delta"];
        assert_eq!(*delta(0), json!({ "role": "assistant", "content": "" }));
        assert_eq!(
            delta(1)["tool_calls"],
            json!([{ "index": 0, "id": "call_3", "type": "function", "function": { "name": "write", "arguments": "" } }])
        );
        let fragments = &chunks[2..chunks.len() - 2];
        assert!(fragments.len() > 1, "{chunks:?}");
        let joined: String = fragments
            .iter()
            .map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&joined).unwrap(), arguments);
        let finish = &chunks[chunks.len() - 2]["choices"];
        assert_eq!(
            *finish,
            json!([{ "index": 0, "delta": {}, "finish_reason": "tool_calls" }])
        );
        let last = &chunks[chunks.len() - 1];
        assert_eq!(
            (&last["choices"], &last["usage"]["total_tokens"]),
            (&json!([]), &json!(9))
        );
    }

    #[test]
    fn a_text_is_one_chunk_or_slow_pieces() {
        let c = completion(Say::Text("hello".to_owned()), false);
        assert_eq!(
            c.message()["choices"],
            json!([{ "index": 0, "message": { "role": "assistant", "content": "hello" }, "finish_reason": "stop" }])
        );
        let chunks = c.chunks();
        assert_eq!(chunks.len(), 4);
        assert_eq!(
            chunks[1].1["choices"][0]["delta"],
            json!({ "content": "hello" })
        );
        assert_eq!(chunks[2].1["choices"][0]["finish_reason"], "stop");

        let slow = completion(Say::Text(REPLY_TEXT.to_owned()), true).chunks();
        let pieces = &slow[1..slow.len() - 2];
        assert_eq!(pieces.len(), SLOW_CHUNKS);
        let pauses: Vec<Duration> = pieces.iter().map(|(p, _)| *p).collect();
        assert_eq!(pauses[0], Duration::ZERO);
        assert!(pauses[1..].iter().all(|p| *p == SLOW_PAUSE));
        let text: String = pieces
            .iter()
            .map(|(_, c)| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, REPLY_TEXT);
    }

    #[test]
    fn pieces_keep_every_character() {
        assert_eq!(pieces("aébc", 2), ["aé", "bc"]);
        assert_eq!(pieces("ab", 4), ["", "a", "", "b"]);
        assert_eq!(pieces("", 0), [""]);
    }

    #[test]
    fn requests_keep_the_last_hundred() {
        let gateway = Gateway {
            keys: Keys::new(Some(SECRET), None),
            usage: Mutex::new(Vec::new()),
            requests: Mutex::new(VecDeque::new()),
        };
        for i in 0..REQUESTS_KEPT + 3 {
            let usage = UsageRecord {
                user_id: "u".to_owned(),
                organization_id: None,
                town_id: "t".to_owned(),
                model: format!("m{i}"),
                prompt_tokens: 1,
                completion_tokens: 1,
                token_expires_at: 0,
            };
            let request = RequestRecord {
                at_ms: 0,
                town_id: "t".to_owned(),
                model: format!("m{i}"),
                stream: false,
                tools: Vec::new(),
                step: 0,
                tool_outputs: Vec::new(),
                user_texts: Vec::new(),
                answer: Say::Text(String::new()),
            };
            assert_eq!(gateway.record(usage, request), i + 1);
        }
        let requests = lock(&gateway.requests);
        assert_eq!(requests.len(), REQUESTS_KEPT);
        assert_eq!(requests[0].model, "m3");
        assert_eq!(lock(&gateway.usage).len(), REQUESTS_KEPT + 3);
    }

    #[test]
    fn only_sandbox_tokens_are_authorized() {
        let keys = Keys::new(Some(SECRET), None);
        let now = 1_700_000_000;
        let town = TownId::parse("town-a").unwrap();
        let org = OrgId::parse("org-1").unwrap();
        let (token, _) = sign_sandbox(
            &keys,
            "u1",
            &town,
            Some(&org),
            now,
            gastown_core::auth::SANDBOX_TOKEN_TTL_SECS,
        )
        .unwrap();
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
        let (container, _) = sign_container(
            &both,
            &town,
            "u1",
            1,
            now,
            gastown_core::auth::CONTAINER_TOKEN_TTL_SECS,
        )
        .unwrap();
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
        assert_eq!(route("GET", REQUESTS_PATH), Ok(Route::Requests));
        assert_eq!(route("POST", REQUESTS_PATH).unwrap_err().0, 405);
        assert_eq!(route("GET", GATEWAY_CHAT_PATH).unwrap_err().0, 405);
        assert_eq!(route("GET", "/nope").unwrap_err().0, 404);
    }
}

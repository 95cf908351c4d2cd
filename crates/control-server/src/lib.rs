//! `gastown-control`: the control server a town's container runs on port 8080 (DESIGN.md §7).
//! `TownContainerDO` calls it to hand over a fresh container token and the town's env; the
//! processes it will run read both from here, so a refresh reaches them without a restart.
//! The wire contract (bodies, headers, secret derivation) is [`gastown_core::control`].
//!
//! # Who may call it
//!
//! The coding agents run in the same container and can reach this port, so nothing but
//! `GET /health` (which says only `{"status":"ok"}`) is answered without proof that the caller is
//! the worker:
//!
//! * `authorization: Bearer <secret>` and `x-gastown-town-id: <town>`, where the secret is
//!   `control_secret(GASTOWN_CONTROL_KEY, town)`, compared in constant time (401 otherwise);
//! * a body's `townId` equal to that header (403);
//! * in production (one town per container, [`Auth::Town`]) only the container's own town (403);
//! * `content-type: application/json` on every POST (415), so a browser's cross-site "simple"
//!   request (text/plain, form) is refused before anything is read;
//! * a `Host` on the allow-list (default `container`, `localhost`, `127.0.0.1`, `[::1]`, any
//!   port), so a DNS-rebound page cannot talk to it (421);
//! * a `content-length` of at most 256 KiB (413; 411 without one).
//!
//! # Keeping the secret from the agents
//!
//! The credential arrives in the environment (`GASTOWN_CONTROL_SECRET` + `GASTOWN_TOWN_ID` in
//! production, `GASTOWN_CONTROL_KEY` in local dev and tests) and [`Auth::take_from_env`] removes
//! it from this process's environment before the first connection is accepted, so a process
//! this server starts later does not inherit it; from then on it lives only in this process's
//! memory. `/proc/<pid>/environ` still shows the environment the process was *started* with,
//! and `/proc/<pid>/mem` shows its memory, but both are readable only by the same user (and
//! root): the agents must run as another, unprivileged user (`agent` in `container/Dockerfile`),
//! never as the server's user and never as root.
//!
//! # Head-of-line blocking
//!
//! Every connection gets its own thread (at most [`MAX_CONNECTIONS`] at once) and one request;
//! its head and body must arrive within the read deadline (5 s by default) or the connection is
//! answered 408 and closed, so a stalled upload holds only its own thread.
//!
//! # Debug routes
//!
//! With the cargo feature `debug-routes`, and only in the `gastown-control-debug` binary
//! ([`Build::Debug`]), `/debug/...` routes let tests read a town's state, make the server fail on
//! purpose and check the credential left the environment. They take the same headers as the
//! other routes. The production binary `gastown-control` answers 404 there.

use gastown_core::control::{
    bearer, control_secret, secret_matches, RefreshTokenBody, RefreshTokenReply, StopBody,
    SyncConfigBody, AUTHORIZATION_HEADER, CONTENT_TYPE_JSON, HEALTH_PATH, KEY_ENV, MAX_BODY_BYTES,
    REFRESH_TOKEN_PATH, SECRET_ENV, STOP_PATH, SYNC_CONFIG_PATH, TOWN_ID_ENV, TOWN_ID_HEADER,
};
use gastown_core::ids::TownId;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Connections served at once; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Longest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Default deadline for reading a whole request.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest master key or derived secret accepted at start.
pub const MIN_SECRET_BYTES: usize = 32;
/// Hosts accepted when no `--allowed-host` is given (each with or without a port).
pub const DEFAULT_ALLOWED_HOSTS: [&str; 4] = ["container", "localhost", "127.0.0.1", "[::1]"];

const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEADERS: usize = 64;

/// Which binary is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `gastown-control`: no debug routes.
    Production,
    /// `gastown-control-debug`: with the `/debug/...` routes.
    #[cfg(feature = "debug-routes")]
    Debug,
}

/// The credential the server checks every control request against.
#[derive(Clone)]
pub enum Auth {
    /// Production: one town per container, started with that town's derived secret.
    Town { town_id: String, secret: String },
    /// Local dev and tests: one server for every town, holding the master key.
    Key(Vec<u8>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Town { town_id, .. } => write!(f, "Auth::Town({town_id}, ****)"),
            Auth::Key(_) => f.write_str("Auth::Key(****)"),
        }
    }
}

impl Auth {
    /// Reads the credential from the environment and removes every control variable from it,
    /// whatever the outcome. Call it before any thread is started.
    ///
    /// # Errors
    /// A message for the operator when no usable credential is configured.
    pub fn take_from_env() -> Result<Auth, String> {
        let take = |name: &str| {
            let value = std::env::var_os(name);
            std::env::remove_var(name);
            value.map(|v| v.into_string().map_err(|_| format!("{name} is not UTF-8")))
        };
        let key = take(KEY_ENV).transpose()?;
        let secret = take(SECRET_ENV).transpose()?;
        let town = take(TOWN_ID_ENV).transpose()?;
        Auth::from_values(key, secret, town)
    }

    /// The credential from the values of `GASTOWN_CONTROL_KEY`, `GASTOWN_CONTROL_SECRET` and
    /// `GASTOWN_TOWN_ID` (empty counts as unset).
    ///
    /// # Errors
    /// A message for the operator when they name no usable credential.
    pub fn from_values(
        key: Option<String>,
        secret: Option<String>,
        town: Option<String>,
    ) -> Result<Auth, String> {
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        match (set(key), set(secret), set(town)) {
            (Some(_), Some(_), _) => Err(format!(
                "set either {KEY_ENV} (one server for many towns) or {SECRET_ENV} with \
                 {TOWN_ID_ENV} (one town per container), not both"
            )),
            (Some(key), None, _) if key.len() < MIN_SECRET_BYTES => Err(format!(
                "{KEY_ENV} must be at least {MIN_SECRET_BYTES} bytes"
            )),
            (Some(key), None, _) => Ok(Auth::Key(key.into_bytes())),
            (None, Some(_), None) => Err(format!("{SECRET_ENV} is set but {TOWN_ID_ENV} is not")),
            (None, Some(secret), Some(_)) if secret.len() < MIN_SECRET_BYTES => Err(format!(
                "{SECRET_ENV} must be at least {MIN_SECRET_BYTES} bytes"
            )),
            (None, Some(secret), Some(town_id)) => match TownId::parse(&town_id) {
                Ok(_) => Ok(Auth::Town { town_id, secret }),
                Err(e) => Err(format!("{TOWN_ID_ENV} {e}")),
            },
            (None, None, _) => Err(format!(
                "no credential: set {SECRET_ENV} and {TOWN_ID_ENV} (production: the secret \
                 derived for this container's town) or {KEY_ENV} (local dev and tests: the \
                 master key); the control server never runs unauthenticated"
            )),
        }
    }

    /// Checks the request's credential for `town`. `Err` is the refusal to send.
    fn check(&self, town: &str, presented: &str) -> Result<(), Reply> {
        match self {
            Auth::Town { town_id, secret } => {
                // The secret is checked first, so a caller without it learns nothing about the
                // town this container serves.
                if !secret_matches(secret, presented) {
                    return Err(error(401, "bad credentials"));
                }
                if town != town_id {
                    return Err(error(403, "this container serves another town"));
                }
                Ok(())
            }
            Auth::Key(key) => {
                if secret_matches(&control_secret(key, town), presented) {
                    Ok(())
                } else {
                    Err(error(401, "bad credentials"))
                }
            }
        }
    }
}

/// Everything the server needs besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    pub auth: Auth,
    /// Lowercase host names (without port) a request's `Host` may name.
    pub allowed_hosts: Vec<String>,
    /// Deadline for reading a request's head and body.
    pub read_timeout: Duration,
    pub build: Build,
}

/// Command-line options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub allowed_hosts: Vec<String>,
    pub read_timeout: Duration,
}

pub const USAGE: &str = "usage: gastown-control [--host 127.0.0.1] [--port 8080] \
[--allowed-host NAME]... [--read-timeout-ms 5000]
  credentials (read from the environment, then removed from it):
    GASTOWN_CONTROL_SECRET + GASTOWN_TOWN_ID   production: one town per container
    GASTOWN_CONTROL_KEY                        local dev and tests: the master key
  --allowed-host replaces the default list (container, localhost, 127.0.0.1, [::1]).";

impl Options {
    /// Parses the arguments after the program name.
    ///
    /// # Errors
    /// A message naming the bad argument.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options {
            host: "127.0.0.1".to_owned(),
            port: 8080,
            allowed_hosts: Vec::new(),
            read_timeout: DEFAULT_READ_TIMEOUT,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{arg} needs a value"))
            };
            match arg.as_str() {
                "--host" => opts.host = value()?,
                "--port" => {
                    opts.port = value()?
                        .parse()
                        .map_err(|_| "--port needs a port number".to_owned())?;
                }
                "--allowed-host" => {
                    let name = value()?.to_ascii_lowercase();
                    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') {
                        return Err(format!("--allowed-host {name:?} is not a host name"));
                    }
                    opts.allowed_hosts.push(name);
                }
                "--read-timeout-ms" => {
                    let ms: u64 = value()?
                        .parse()
                        .map_err(|_| "--read-timeout-ms needs milliseconds".to_owned())?;
                    if ms == 0 {
                        return Err("--read-timeout-ms must be positive".to_owned());
                    }
                    opts.read_timeout = Duration::from_millis(ms);
                }
                "--debug" => {
                    return Err(
                        "--debug: this binary has no debug routes (they exist only in \
                                gastown-control-debug, for tests)"
                            .to_owned(),
                    )
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if opts.allowed_hosts.is_empty() {
            opts.allowed_hosts = DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| (*h).to_owned())
                .collect();
        }
        Ok(opts)
    }
}

/// The whole program: takes the credential out of the environment, parses the arguments,
/// listens and serves until killed. Returns the exit code on failure to start.
pub fn cli_main(build: Build) -> i32 {
    // First, while this is the only thread: nothing started later inherits the credential.
    let auth = Auth::take_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return 0;
    }
    let opts = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gastown-control: {e}\n{USAGE}");
            return 2;
        }
    };
    let auth = match auth {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gastown-control: refusing to start: {e}");
            return 1;
        }
    };
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gastown-control: cannot listen on {addr}: {e}");
            return 1;
        }
    };
    let mode = match &auth {
        Auth::Town { town_id, .. } => format!("town {town_id}"),
        Auth::Key(_) => "every town (master key)".to_owned(),
    };
    // The bound address (with `--port 0`, the port the system chose); tests read this line.
    let bound = listener
        .local_addr()
        .map_or_else(|_| addr.clone(), |a| a.to_string());
    println!("gastown-control listening on http://{bound} for {mode}");
    let config = Config {
        auth,
        allowed_hosts: opts.allowed_hosts,
        read_timeout: opts.read_timeout,
        build,
    };
    match serve(listener, config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gastown-control: {e}");
            1
        }
    }
}

#[derive(Default)]
struct Town {
    token: Option<String>,
    token_updates: u64,
    env: BTreeMap<String, String>,
    env_updates: u64,
}

/// Failures injected through `/debug/fail`.
#[cfg(feature = "debug-routes")]
#[derive(Default, serde::Deserialize)]
struct FailModes {
    #[serde(default)]
    refresh_token: bool,
    #[serde(default)]
    sync_config: bool,
}

#[derive(Default)]
struct State {
    towns: HashMap<String, Town>,
    #[cfg(feature = "debug-routes")]
    fail: FailModes,
}

struct Shared {
    config: Config,
    state: Mutex<State>,
    active: AtomicUsize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic never leaves the state half-written (every update is a few assignments).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Accepts connections until the listener fails, each served on its own thread.
///
/// # Errors
/// When a thread cannot be started or the listener fails for good.
pub fn serve(listener: TcpListener, config: Config) -> io::Result<()> {
    let shared = Arc::new(Shared {
        config,
        state: Mutex::new(State::default()),
        active: AtomicUsize::new(0),
    });
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                eprintln!("gastown-control: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = write_reply(&mut stream, &error(503, "too many connections"));
            continue;
        }
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("gastown-control-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                connection(stream, &shared);
                shared.active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            eprintln!("gastown-control: cannot start a thread: {e}");
        }
    }
    Ok(())
}

type Reply = (u16, Value);

fn error(status: u16, message: &str) -> Reply {
    (status, json!({ "error": message }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn write_reply(stream: &mut TcpStream, &(status, ref body): &Reply) -> io::Result<()> {
    let body = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 401 {
        head.push_str("www-authenticate: Bearer\r\n");
    }
    head.push_str("\r\n");
    head.push_str(&body);
    stream.write_all(head.as_bytes())?;
    stream.flush()
}

/// What reading a request ran into.
enum ReadFail {
    /// The peer went away (or sent nothing): no answer.
    Closed,
    /// Answer this and close.
    Reply(Reply),
}

/// Reads until `buf` holds at least `want` bytes, the deadline passes or the peer closes.
fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    mut done: impl FnMut(&[u8]) -> bool,
) -> Result<(), ReadFail> {
    let mut chunk = [0u8; 8192];
    while !done(buf) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFail::Reply(error(408, "request not received in time")));
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return Err(ReadFail::Closed);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadFail::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadFail::Reply(error(408, "request not received in time")))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadFail::Closed),
        }
    }
    Ok(())
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// The value of the header `name` if it occurs exactly once; `Err` if it repeats.
    fn one(&self, name: &str) -> Result<Option<&str>, Reply> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(error(400, &format!("{name} given more than once")));
        }
        match first {
            None => Ok(None),
            Some((_, v)) => std::str::from_utf8(v)
                .map(|s| Some(s.trim()))
                .map_err(|_| error(400, &format!("{name} is not UTF-8"))),
        }
    }
}

/// Reads the head; `buf` keeps whatever of the body came with it.
fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Head, ReadFail> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    method: req.method.unwrap_or_default().to_owned(),
                    target: req.path.unwrap_or_default().to_owned(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                        .collect(),
                };
                buf.drain(..len);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(ReadFail::Reply(error(431, "request head too large")))
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadFail::Reply(error(431, "too many headers")))
            }
            Err(_) => return Err(ReadFail::Reply(error(400, "malformed request"))),
        }
        let before = buf.len();
        read_until(stream, buf, deadline, |b| b.len() > before)?;
    }
}

/// Whether `host` (a `Host` header value) names one of `allowed` (lowercase, without port).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    let name = if host.starts_with('[') {
        // [v6] or [v6]:port
        match host.find(']') {
            Some(end) => {
                let rest = &host[end + 1..];
                if !(rest.is_empty() || is_port_suffix(rest)) {
                    return false;
                }
                &host[..=end]
            }
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port_suffix(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host.as_str(),
        }
    };
    !name.is_empty() && allowed.iter().any(|a| a == name)
}

fn is_port_suffix(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Health,
    RefreshToken,
    SyncConfig,
    Stop,
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
            Route::RefreshToken | Route::SyncConfig | Route::Stop => true,
            #[cfg(feature = "debug-routes")]
            Route::DebugFail => true,
            _ => false,
        }
    }
}

fn route(build: Build, method: &str, path: &str) -> Result<Route, Reply> {
    let found = match path {
        HEALTH_PATH => Some(Route::Health),
        REFRESH_TOKEN_PATH => Some(Route::RefreshToken),
        SYNC_CONFIG_PATH => Some(Route::SyncConfig),
        STOP_PATH => Some(Route::Stop),
        _ => debug_route(build, path),
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

/// Serves one connection: one request, one answer, close.
fn connection(mut stream: TcpStream, shared: &Shared) {
    let deadline = Instant::now() + shared.config.read_timeout;
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let reply = match request(&mut stream, shared, deadline) {
        Ok(reply) => reply,
        Err(ReadFail::Reply(reply)) => reply,
        Err(ReadFail::Closed) => return,
    };
    if write_reply(&mut stream, &reply).is_err() {
        return;
    }
    linger(&mut stream);
}

/// Closes gracefully: a request body left unread would make the kernel reset the connection
/// and the client could lose the answer, so read (and drop) what is still coming, briefly.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_secs(1);
    let mut chunk = [0u8; 8192];
    let mut drained = 0usize;
    while drained < 2 * MAX_BODY_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero()
            || stream
                .set_read_timeout(Some(left.min(Duration::from_millis(250))))
                .is_err()
        {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Reads, checks and handles one request. The order of the checks is the contract: Host,
/// route, credentials, content type, length, body; nothing is read past a refusal.
fn request(stream: &mut TcpStream, shared: &Shared, deadline: Instant) -> Result<Reply, ReadFail> {
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
    let path = head.target.split('?').next().unwrap_or_default();
    let route = route(config.build, &head.method, path).map_err(refuse)?;
    if route == Route::Health {
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
        if head.one("transfer-encoding").map_err(refuse)?.is_some() {
            return Err(refuse(error(
                411,
                "send a content-length, not a transfer-encoding",
            )));
        }
        let length = match head.one("content-length").map_err(refuse)? {
            None => return Err(refuse(error(411, "content-length required"))),
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                v.parse::<usize>().unwrap_or(usize::MAX)
            }
            Some(_) => return Err(refuse(error(400, "bad content-length"))),
        };
        if length > MAX_BODY_BYTES {
            return Err(refuse(error(413, "body too large")));
        }
        read_until(stream, &mut buf, deadline, |b| b.len() >= length)?;
        buf.truncate(length);
        buf
    } else {
        Vec::new()
    };
    Ok(handle(shared, &route, &town, &body))
}

/// The town the request is authenticated for.
fn authenticate(head: &Head, auth: &Auth) -> Result<String, Reply> {
    let unauthorized = || error(401, "bad credentials");
    let presented = head
        .one(AUTHORIZATION_HEADER)?
        .and_then(bearer)
        .ok_or_else(unauthorized)?;
    let town = head.one(TOWN_ID_HEADER)?.ok_or_else(unauthorized)?;
    if TownId::parse(town).is_err() {
        return Err(error(400, &format!("bad {TOWN_ID_HEADER}")));
    }
    auth.check(town, presented)?;
    Ok(town.to_owned())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| error(400, &format!("bad body: {e}")))
}

fn same_town(body_town: &str, town: &str) -> Result<(), Reply> {
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
        Route::RefreshToken => refresh_token(shared, town, body),
        Route::SyncConfig => sync_config(shared, town, body),
        Route::Stop => stop(shared, town, body),
        #[cfg(feature = "debug-routes")]
        Route::DebugTown(id) => debug_town(shared, town, id),
        #[cfg(feature = "debug-routes")]
        Route::DebugFail => parse::<FailModes>(body).map(|modes| {
            shared.state().fail = modes;
            (200, json!({ "ok": true }))
        }),
        #[cfg(feature = "debug-routes")]
        Route::DebugEnv => Ok(debug_env()),
    };
    result.unwrap_or_else(|e| e)
}

fn refresh_token(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
    let req: RefreshTokenBody = parse(body)?;
    same_town(&req.town_id, town)?;
    if req.token.is_empty() {
        return Err(error(400, "token is required"));
    }
    let mut state = shared.state();
    #[cfg(feature = "debug-routes")]
    if state.fail.refresh_token {
        return Err(error(503, "refresh-token failing on purpose"));
    }
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
/// container.
fn stop(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
    let req: StopBody = parse(body)?;
    same_town(&req.town_id, town)?;
    let stopped = shared.state().towns.remove(&req.town_id).is_some();
    Ok((200, json!({ "ok": true, "stopped": stopped })))
}

fn sync_config(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
    let req: SyncConfigBody = parse(body)?;
    same_town(&req.town_id, town)?;
    let mut state = shared.state();
    #[cfg(feature = "debug-routes")]
    if state.fail.sync_config {
        return Err(error(503, "sync-config failing on purpose"));
    }
    let entry = state.towns.entry(req.town_id).or_default();
    // The whole env is replaced: a key the worker no longer sends is gone.
    entry.env = req.env;
    entry.env_updates += 1;
    Ok((
        200,
        json!({ "ok": true, "names": entry.env.keys().collect::<Vec<_>>() }),
    ))
}

#[cfg(feature = "debug-routes")]
fn debug_town(shared: &Shared, town: &str, id: &str) -> Result<Reply, Reply> {
    same_town(id, town)?;
    let state = shared.state();
    let t = state
        .towns
        .get(id)
        .ok_or_else(|| error(404, "no such town"))?;
    Ok((
        200,
        json!({ "token": t.token, "token_updates": t.token_updates, "env": t.env, "env_updates": t.env_updates }),
    ))
}

/// Which control variables this process, and a child it starts now, still see.
#[cfg(feature = "debug-routes")]
fn debug_env() -> Reply {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        DEFAULT_ALLOWED_HOSTS
            .iter()
            .map(|h| (*h).to_owned())
            .collect()
    }

    #[test]
    fn host_allow_list() {
        let h = hosts();
        for ok in [
            "container",
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8788",
            "[::1]",
            "[::1]:8080",
            "container:8080",
        ] {
            assert!(host_allowed(ok, &h), "{ok}");
        }
        for bad in [
            "",
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "localhost:",
            "localhost:abc",
            "[::1]x",
            "[::2]:80",
            "::1",
            "container:8080:1",
        ] {
            assert!(!host_allowed(bad, &h), "{bad}");
        }
    }

    #[test]
    fn credentials_from_values() {
        let s = |v: &str| Some(v.to_owned());
        let long = "k".repeat(MIN_SECRET_BYTES);
        assert!(matches!(
            Auth::from_values(s(&long), None, None),
            Ok(Auth::Key(_))
        ));
        assert!(matches!(
            Auth::from_values(None, s(&long), s("town-a")),
            Ok(Auth::Town { .. })
        ));
        assert!(Auth::from_values(None, None, None).is_err());
        assert!(Auth::from_values(s(""), s(""), None).is_err());
        assert!(Auth::from_values(s("short"), None, None).is_err());
        assert!(Auth::from_values(None, s(&long), None).is_err());
        assert!(Auth::from_values(None, s(&long), s("bad town")).is_err());
        assert!(Auth::from_values(s(&long), s(&long), s("t")).is_err());
        assert!(!format!("{:?}", Auth::Key(long.clone().into_bytes())).contains(&long));
    }

    #[test]
    fn town_auth_checks_secret_then_town() {
        let key = b"dev-gastown-control-key-change-me-0123456789";
        let auth = Auth::Town {
            town_id: "a".into(),
            secret: control_secret(key, "a"),
        };
        assert!(auth.check("a", &control_secret(key, "a")).is_ok());
        assert_eq!(
            auth.check("a", &control_secret(key, "b")).unwrap_err().0,
            401
        );
        assert_eq!(
            auth.check("b", &control_secret(key, "b")).unwrap_err().0,
            401
        );
        assert_eq!(
            auth.check("b", &control_secret(key, "a")).unwrap_err().0,
            403
        );
        let auth = Auth::Key(key.to_vec());
        assert!(auth.check("b", &control_secret(key, "b")).is_ok());
        assert_eq!(
            auth.check("b", &control_secret(key, "a")).unwrap_err().0,
            401
        );
    }

    #[test]
    fn options() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = Options::parse(&[]).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 8080));
        assert_eq!(o.allowed_hosts, hosts());
        let o = Options::parse(&args(&[
            "--allowed-host",
            "Example.internal",
            "--allowed-host",
            "x",
            "--read-timeout-ms",
            "300",
        ]))
        .unwrap();
        assert_eq!(o.allowed_hosts, ["example.internal", "x"]);
        assert_eq!(o.read_timeout, Duration::from_millis(300));
        assert!(Options::parse(&args(&["--debug"])).is_err());
        assert!(Options::parse(&args(&["--port"])).is_err());
        assert!(Options::parse(&args(&["--read-timeout-ms", "0"])).is_err());
        assert!(Options::parse(&args(&["--bogus"])).is_err());
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

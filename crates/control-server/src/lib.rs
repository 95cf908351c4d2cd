//! `gastown-control`: the control server a town's container runs on port 8080 (DESIGN.md §7).
//! `TownContainerDO` calls it to hand over a fresh container token and the town's env; the
//! processes it will run read both from here, so a refresh reaches them without a restart.
//! The wire contract (bodies, headers, secret derivation) is [`gastown_core::control`].
//!
//! # Routes
//!
//! * `GET /health` → `{"status":"ok"}`, the only route open to anyone;
//! * `POST /refresh-token` `{token, townId}`: the town's container token (see below);
//! * `POST /sync-config` `{env, settings, townId}`: the town's env and settings files;
//! * `POST /stop` `{townId}`: the town's container stops: token, env and credential files
//!   dropped, its agents killed;
//! * `POST /agents/start` (`AgentStartBody`) → `AgentProcessStatus`: runs one agent;
//! * `POST /agents/:id/stop` `{townId}` → `{"ok":true,"stopped":<was running>}`;
//! * `GET /agents/:id/status` → `AgentProcessStatus` (404 for an agent never started);
//! * with the debug routes only: `GET /debug/towns/:id`, `POST /debug/fail`, `GET /debug/env`.
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
//! # The agent user
//!
//! `--agent-uid N --agent-gid N` (or `GASTOWN_AGENT_UID` and `GASTOWN_AGENT_GID`; both or
//! neither, numeric, never 0) make the server, which must then run as root, start every agent
//! with that uid and gid and no supplementary group. The town's files are laid out so that the
//! agent reaches what it reads and nothing else: directories on its way are the server's,
//! group N, mode 0710 (pass through, never list); the files it reads (`.container-token`,
//! `.env.gateway`, `gitconfig`, the settings files) are the server's, group N, mode 0640; it
//! owns its work dir and the git token cache `.git-tokens/` (mode 0700), nothing else. A work
//! directory the server creates is made the server's, group N, mode 0710; an existing one is
//! left as it is, but the server refuses to start unless the agent can pass through every
//! directory from `/` down to it. [`workdir`] has the whole layout; [`agent_user`] the rules.
//! Without the options nothing changes hands and the modes are those below.
//!
//! # The town's files
//!
//! Each town's files live in `<workdir>/<townId>/` (`--workdir`, or `GASTOWN_WORKDIR`, default
//! `./gastown-work`, created at start), where every new agent session reads them; see
//! [`workdir`] for the layout and its invariants. Every `POST /sync-config` rewrites them:
//!
//! * `settings/config.json` and `<rigId>/settings/config.json`: the body's `settings`, each an
//!   [`AgentSettings`](gastown_core::agent_settings::AgentSettings) as serde writes it; the file
//!   of a rig the body no longer names is removed. A bad rig id refuses the whole sync (400,
//!   nothing written).
//! * `.env.gateway`: `KILO_JWT=<token>` and a newline, mode 0600 (0640, group the agent's,
//!   with an agent user), while the synced env holds `KILO_JWT` (non-empty); removed when it
//!   does not. A `KILO_JWT` with characters no token has (a newline, a space, `$`, …) refuses
//!   the whole sync (400), since shells source the file.
//!
//! Each file is replaced atomically. No token is ever logged.
//!
//! # Git credentials for agents
//!
//! No token is ever baked into a git remote: agents' git asks a credential helper for one per
//! operation. On every `POST /refresh-token` the server also writes, in the town's directory,
//!
//! * `.container-token`: the container token and a newline, mode 0600 (0640, group the
//!   agent's, with an agent user: agents of the town call the worker with it anyway; the
//!   helper, a child of git and not of this server, reads it from here). A token with
//!   characters no token has is refused (400);
//! * `gitconfig` (when missing or different): a `[credential]` section that clears the
//!   helpers of the system's config, names `<this executable> git-credential --workdir
//!   <workdir> --town <town> [--worker-url <worker>]` as the helper (a `!` shell command,
//!   each word single-quoted, the whole double-quoted for git's config) and sets
//!   `useHttpPath = true`. No token lives in it.
//!
//! An agent session points `GIT_CONFIG_GLOBAL` at `<workdir>/<town>/gitconfig` and sets
//! `GASTOWN_RIG_ID` to its rig; then every `git fetch`/`git push` over HTTPS runs
//! `gastown-control git-credential get`, which hands git the rig's token from the cache
//! `<workdir>/<town>/.git-tokens/<rig>.json` while it has more than 5 minutes to live, and
//! otherwise fetches a new one from the worker (`POST <worker>/api/towns/<town>/rigs/<rig>/
//! git-token`, with the container token). `gastown-control git-token` prints the same token
//! alone, for `GIT_TOKEN=$(gastown-control git-token)`. Both subcommands exist in both server
//! binaries and never need or read the server's credential. [`git_credential`] states the
//! rules. `POST /stop` removes `.container-token`, `.env.gateway` and `.git-tokens/`.
//!
//! # The gateway token's self-refresh
//!
//! The gateway token (`KILO_JWT`, a sandbox token of 24 h) must not lapse while the town runs,
//! whether or not the worker syncs again. With `--worker-url` (or `GASTOWN_WORKER_URL`), a
//! background thread wakes every `--gateway-refresh-ms` (12 h by default) and, for each town
//! whose container token it holds, asks the worker for a new gateway token with that container
//! token (`POST <worker>/api/towns/<town>/sandbox-token`), then stores it in the town's env and
//! rewrites `.env.gateway`. A failure is logged (the status, never a token) and retried at the
//! next wake. The private module `self_refresh` states the rules.
//!
//! # Agents
//!
//! `POST /agents/start` runs one of the town's agents as a child process of this server (as
//! the agent user when one is configured, see above): the agent command (`--agent-command
//! PATH [ARGS]`, or `GASTOWN_AGENT_COMMAND`, split on whitespace, no shell; by default
//! `gastown-demo-agent` beside this executable) in
//! `<workdir>/<town>/agents/<agentId>/` (emptied on each start; also its `HOME`), stdout and
//! stderr appended to `<workdir>/<town>/agents/<agentId>.log`. Its environment starts empty:
//! `PATH`, the body's `env`, then the server's own variables (which win): `GASTOWN_TOWN_ID`,
//! `GASTOWN_AGENT_ID`, `GASTOWN_AGENT_ROLE`, `GASTOWN_AGENT_NAME`, `GASTOWN_RIG_ID`,
//! `GASTOWN_BEAD_ID`, `GASTOWN_BEAD_TITLE`, `GASTOWN_BEAD_BODY`, `GASTOWN_GIT_URL`,
//! `GASTOWN_DEFAULT_BRANCH`, `GASTOWN_BRANCH`, `GASTOWN_MODEL` (each when known),
//! `GASTOWN_WORKER_URL` (the body's `worker_url`, else `--worker-url`; 400 with neither),
//! `GASTOWN_CONTAINER_TOKEN_FILE`, `GASTOWN_GATEWAY_ENV_FILE`, `GIT_CONFIG_GLOBAL` (when the
//! town has a gitconfig), `HOME` and `GASTOWN_WORK_DIR`. An agent reads the container token
//! from its file on every call, so a `/refresh-token` reaches running agents. A start needs the
//! town's container token (409 `town not started` otherwise); one for a running agent id kills
//! that process first; at most 32 agents run at once (503). `POST /stop` kills the town's
//! agents. The public module [`agents`] states the rules; [`demo_agent`] is the stand-in agent.
//!
//! # The stand-in gateway
//!
//! [`gateway`] is a stand-in for the Kilo gateway that checks sandbox tokens and records who
//! used which model: the binary `gastown-gateway`, for local dev and tests only.
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
//! purpose and check the credential left the environment. `/debug/towns/:id` shows what the
//! server holds for the town (container token, env, update counts), its `workdir` and the
//! self-refresh counts (`gateway_refresh_attempts`, `gateway_refreshes`,
//! `gateway_refresh_failures`), its `agents` (`[{agent_id, state, pid, exit_code, starts}]`)
//! and `agents_start_attempts` (every `/agents/start` for the town past authentication,
//! refused or not); it answers 404 only for a town the server holds nothing of (neither token
//! nor env nor an agent start). `POST /debug/fail` takes `{"refresh_token", "sync_config",
//! "agents_start"}` (booleans, each false when absent; the last makes every `/agents/start`
//! answer 503). They take the same headers as the other routes. The production binary
//! `gastown-control` answers 404 there.

pub mod agent_user;
pub mod agents;
pub mod demo_agent;
pub mod gateway;
pub mod git_credential;
mod http;
mod self_refresh;
pub mod workdir;

pub use agent_user::AgentUser;
use agent_user::{AGENT_GID_ENV, AGENT_UID_ENV};
pub use agents::AgentCommand;
use agents::AGENT_COMMAND_ENV;
use gastown_core::control::{
    bearer, control_secret, secret_matches, RefreshTokenBody, RefreshTokenReply, StopBody,
    SyncConfigBody, AGENTS_START_PATH, AUTHORIZATION_HEADER, CONTENT_TYPE_JSON, GATEWAY_TOKEN_ENV,
    HEALTH_PATH, KEY_ENV, MAX_BODY_BYTES, REFRESH_TOKEN_PATH, SECRET_ENV, STOP_PATH,
    SYNC_CONFIG_PATH, TOWN_ID_ENV, TOWN_ID_HEADER, WORKER_URL_ENV,
};
use gastown_core::ids::TownId;
use http::{error, one_exchange, read_body, read_head, serve_each, Head, ReadFail, Reply};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
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

/// The work directory when neither `--workdir` nor [`WORKDIR_ENV`] names one (relative to the
/// directory the server starts in).
pub const DEFAULT_WORKDIR: &str = "gastown-work";
/// Names the work directory when `--workdir` does not.
pub const WORKDIR_ENV: &str = "GASTOWN_WORKDIR";
/// Default interval of the gateway token's self-refresh: 12 h, half a sandbox token's life.
pub const DEFAULT_GATEWAY_REFRESH: Duration = Duration::from_secs(12 * 60 * 60);
/// Shortest `--gateway-refresh-ms`.
pub const MIN_GATEWAY_REFRESH_MS: u64 = 100;

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
    /// Where each town's files live (`<workdir>/<townId>/`); must exist.
    pub workdir: PathBuf,
    /// The worker's origin (`http://…` or `https://…`, no trailing `/`); `None` turns the
    /// gateway token's self-refresh off.
    pub worker_url: Option<String>,
    /// How often the self-refresh wakes.
    pub gateway_refresh: Duration,
    /// The executable each town's gitconfig names as git's credential helper (this one's
    /// `git-credential` subcommand); `None` writes no gitconfig.
    pub credential_helper: Option<PathBuf>,
    /// What each agent runs; `None` refuses every `/agents/start` (500).
    pub agent_command: Option<AgentCommand>,
    /// Whom the agents run as; `None`: the server's own user, as the server's files are laid
    /// out without one.
    pub agent_user: Option<AgentUser>,
}

/// Command-line options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub allowed_hosts: Vec<String>,
    pub read_timeout: Duration,
    pub workdir: PathBuf,
    pub worker_url: Option<String>,
    pub gateway_refresh: Duration,
    /// `None`: the default, [`agents::DEMO_AGENT_BIN`] beside this executable.
    pub agent_command: Option<AgentCommand>,
    /// `--agent-uid` and `--agent-gid`.
    pub agent_user: Option<AgentUser>,
}

pub const USAGE: &str = "usage: gastown-control [--host 127.0.0.1] [--port 8080] \
[--allowed-host NAME]... [--read-timeout-ms 5000] [--workdir ./gastown-work] \
[--worker-url URL] [--gateway-refresh-ms 43200000] [--agent-command PATH] \
[--agent-uid N --agent-gid N]
  credentials (read from the environment, then removed from it):
    GASTOWN_CONTROL_SECRET + GASTOWN_TOWN_ID   production: one town per container
    GASTOWN_CONTROL_KEY                        local dev and tests: the master key
  --allowed-host replaces the default list (container, localhost, 127.0.0.1, [::1]).
  --workdir (or GASTOWN_WORKDIR): each town's files go to DIR/<townId>/, rewritten on every
    sync-config: settings/config.json, <rigId>/settings/config.json and .env.gateway
    (KILO_JWT=<token>, mode 0600); on every refresh-token: .container-token (<token>, mode
    0600) and gitconfig (git's credential helper for agent sessions). stop removes
    .env.gateway, .container-token and .git-tokens/. Created if missing.
  --worker-url (or GASTOWN_WORKER_URL): the worker's origin, http:// or https://. With it,
    every --gateway-refresh-ms (at least 100; default 12 h) each town's gateway token is
    renewed from POST URL/api/towns/<townId>/sandbox-token with the town's container token.
    Agents call back URL unless their start names another.
  --agent-command (or GASTOWN_AGENT_COMMAND): what POST /agents/start runs, an executable
    path then arguments, split on whitespace (no shell). Default: gastown-demo-agent beside
    this executable. Each agent runs in DIR/<townId>/agents/<agentId>/ (emptied on each
    start) with an environment of PATH, the start's env and the GASTOWN_* variables the
    server sets (nothing else of the server's), output appended to
    DIR/<townId>/agents/<agentId>.log; at most 32 at once. stop kills the town's agents.
  --agent-uid and --agent-gid (or GASTOWN_AGENT_UID and GASTOWN_AGENT_GID): numeric ids, both
    or neither, not 0. Agents then run as that uid and gid (no other group); the server must
    run as root. The agent's group passes through DIR (0710 when the server creates it; an
    existing DIR and every directory above it must let the agent pass, or the server refuses
    to start), DIR/<townId>/ and its agents/ and settings directories (group N, 0710) and
    reads .container-token, .env.gateway, gitconfig and the settings files (group N, 0640);
    the agent owns its work dir and DIR/<townId>/.git-tokens/ (0700). Without them agents run
    as the server's user and nothing changes hands.
subcommands (no server credential needed; see `gastown-control git-credential --help`):
  gastown-control git-credential [--worker-url URL] [--town ID] [--rig ID] [--workdir DIR]
    <get|store|erase>     git's credential helper for the rig's repository
  gastown-control git-token [same options]     prints the rig's current git token";

impl Options {
    /// Parses the arguments after the program name, with no fallback from the environment.
    ///
    /// # Errors
    /// A message naming the bad argument.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        Options::parse_with_env(args, |_| None)
    }

    /// Parses the arguments after the program name; `env` gives the value of a variable
    /// ([`WORKDIR_ENV`], [`WORKER_URL_ENV`], [`agents::AGENT_COMMAND_ENV`]) an option left
    /// unset falls back to.
    ///
    /// # Errors
    /// A message naming the bad argument or variable.
    pub fn parse_with_env(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Options, String> {
        let mut opts = Options {
            host: "127.0.0.1".to_owned(),
            port: 8080,
            allowed_hosts: Vec::new(),
            read_timeout: DEFAULT_READ_TIMEOUT,
            workdir: PathBuf::new(),
            worker_url: None,
            gateway_refresh: DEFAULT_GATEWAY_REFRESH,
            agent_command: None,
            agent_user: None,
        };
        let mut workdir = None;
        let mut worker_url = None;
        let mut agent_command = None;
        let (mut agent_uid, mut agent_gid) = (None, None);
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{arg} needs a value"))
            };
            match arg.as_str() {
                "--host" => opts.host = value()?,
                "--port" => opts.port = port_arg(&value()?)?,
                "--allowed-host" => {
                    let name = value()?.to_ascii_lowercase();
                    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') {
                        return Err(format!("--allowed-host {name:?} is not a host name"));
                    }
                    opts.allowed_hosts.push(name);
                }
                "--read-timeout-ms" => opts.read_timeout = read_timeout_arg(&value()?)?,
                "--workdir" => workdir = Some(value()?),
                "--worker-url" => worker_url = Some(value()?),
                "--agent-command" => agent_command = Some(value()?),
                "--agent-uid" => agent_uid = Some(value()?),
                "--agent-gid" => agent_gid = Some(value()?),
                "--gateway-refresh-ms" => {
                    let ms: u64 = value()?
                        .parse()
                        .map_err(|_| "--gateway-refresh-ms needs milliseconds".to_owned())?;
                    if ms < MIN_GATEWAY_REFRESH_MS {
                        return Err(format!(
                            "--gateway-refresh-ms must be at least {MIN_GATEWAY_REFRESH_MS}"
                        ));
                    }
                    opts.gateway_refresh = Duration::from_millis(ms);
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
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        opts.workdir = match set(workdir).or_else(|| set(env(WORKDIR_ENV))) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(DEFAULT_WORKDIR),
        };
        opts.worker_url = match (set(worker_url), set(env(WORKER_URL_ENV))) {
            (Some(url), _) => Some(worker_origin(&url).map_err(|e| format!("--worker-url {e}"))?),
            (None, Some(url)) => {
                Some(worker_origin(&url).map_err(|e| format!("{WORKER_URL_ENV} {e}"))?)
            }
            (None, None) => None,
        };
        opts.agent_command = match (set(agent_command), set(env(AGENT_COMMAND_ENV))) {
            (Some(text), _) => {
                Some(AgentCommand::parse(&text).map_err(|e| format!("--agent-command: {e}"))?)
            }
            (None, Some(text)) => {
                Some(AgentCommand::parse(&text).map_err(|e| format!("{AGENT_COMMAND_ENV}: {e}"))?)
            }
            (None, None) => None,
        };
        let id = |flag: &'static str, value: Option<String>, name: &'static str| {
            set(value)
                .map(|v| (flag, v))
                .or_else(|| set(env(name)).map(|v| (name, v)))
        };
        let uid = id("--agent-uid", agent_uid, AGENT_UID_ENV);
        let gid = id("--agent-gid", agent_gid, AGENT_GID_ENV);
        opts.agent_user = AgentUser::from_values(
            uid.as_ref().map(|(from, text)| (*from, text.as_str())),
            gid.as_ref().map(|(from, text)| (*from, text.as_str())),
        )?;
        Ok(opts)
    }
}

/// The worker's origin as requests are built from it: `http://` or `https://`, a host, no
/// trailing `/`, nothing a header or a request line would choke on.
fn worker_origin(url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{url:?} names no host"));
    }
    if trimmed
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
    {
        return Err(format!("{url:?} is not a plain origin"));
    }
    Ok(trimmed.to_owned())
}

/// `--port`'s value (both servers take it).
///
/// # Errors
/// A message for the operator.
pub(crate) fn port_arg(value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| "--port needs a port number".to_owned())
}

/// `--read-timeout-ms`'s value: positive milliseconds (both servers take it).
///
/// # Errors
/// A message for the operator.
pub(crate) fn read_timeout_arg(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(0) => Err("--read-timeout-ms must be positive".to_owned()),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err("--read-timeout-ms needs milliseconds".to_owned()),
    }
}

/// The whole program: takes the credential out of the environment, parses the arguments,
/// listens and serves until killed. Returns the exit code on failure to start.
pub fn cli_main(build: Build) -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The git credential helper runs as a child of an agent's git, never with the server's
    // credential, and must neither need it nor touch it.
    if let Some(sub) = args.first().map(String::as_str).filter(|a| {
        *a == workdir::GIT_CREDENTIAL_SUBCOMMAND || *a == git_credential::GIT_TOKEN_SUBCOMMAND
    }) {
        return git_credential::cli_main(sub, &args[1..]);
    }
    // First, while this is the only thread: nothing started later inherits the credential.
    let auth = Auth::take_from_env();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return 0;
    }
    let opts = match Options::parse_with_env(&args, |name| std::env::var(name).ok()) {
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
    if opts.agent_user.is_some() {
        if let Err(e) = agent_user::check_server() {
            eprintln!("gastown-control: refusing to start: {e}");
            return 1;
        }
    }
    let workdir = match workdir::create_root(&opts.workdir, opts.agent_user)
        .and_then(|()| std::fs::canonicalize(&opts.workdir))
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!(
                "gastown-control: cannot use the work directory {}: {e}",
                opts.workdir.display()
            );
            return 1;
        }
    };
    if let Some(agent) = opts.agent_user {
        if let Err(e) = agent_user::check_workdir(agent, &workdir) {
            eprintln!("gastown-control: refusing to start: {e}");
            return 1;
        }
    }
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
    // Nothing more goes to stdout: whoever read the line above may have closed the pipe.
    let renewal = match &opts.worker_url {
        Some(url) => format!(
            "gateway tokens renewed from {url} every {} ms",
            opts.gateway_refresh.as_millis()
        ),
        None => "gateway tokens not renewed (no --worker-url)".to_owned(),
    };
    eprintln!(
        "gastown-control: town files in {}; {renewal}",
        workdir.display()
    );
    let credential_helper = match std::env::current_exe() {
        Ok(exe) => Some(exe),
        Err(e) => {
            eprintln!("gastown-control: no gitconfig for agents (own path unknown: {e})");
            None
        }
    };
    let agent_command = opts
        .agent_command
        .or_else(|| credential_helper.as_deref().and_then(AgentCommand::beside));
    let as_whom = match opts.agent_user {
        Some(a) => format!("as uid {} gid {}", a.uid(), a.gid()),
        None => "as the server's own user (no --agent-uid)".to_owned(),
    };
    match &agent_command {
        Some(c) => eprintln!(
            "gastown-control: agents run {} {as_whom}",
            c.program.display()
        ),
        None => eprintln!("gastown-control: no agent command: /agents/start will fail"),
    }
    let config = Config {
        auth,
        allowed_hosts: opts.allowed_hosts,
        read_timeout: opts.read_timeout,
        build,
        workdir,
        worker_url: opts.worker_url,
        gateway_refresh: opts.gateway_refresh,
        credential_helper,
        agent_command,
        agent_user: opts.agent_user,
    };
    match serve(listener, config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gastown-control: {e}");
            1
        }
    }
}

/// What the server holds for one town.
#[derive(Default)]
struct Town {
    /// The container token from the last `/refresh-token`.
    token: Option<String>,
    token_updates: u64,
    /// The env from the last `/sync-config`, with `KILO_JWT` replaced by each self-refresh.
    env: BTreeMap<String, String>,
    /// Syncs only: the self-refresh does not count, so `had_env` stays a worker's matter.
    env_updates: u64,
    gateway_refresh: self_refresh::Counts,
}

/// Failures injected through `/debug/fail`.
#[cfg(feature = "debug-routes")]
#[derive(Default, serde::Deserialize)]
struct FailModes {
    #[serde(default)]
    refresh_token: bool,
    #[serde(default)]
    sync_config: bool,
    #[serde(default)]
    agents_start: bool,
}

#[derive(Default)]
struct State {
    towns: HashMap<String, Town>,
    #[cfg(feature = "debug-routes")]
    fail: FailModes,
}

struct Shared {
    config: Config,
    /// Also held while a town's files are written, so the files and `towns` never disagree
    /// (the files are small; the self-refresh never holds it across a call to the worker).
    state: Mutex<State>,
    /// The towns' agent processes (locked before `state` when both are needed).
    agents: agents::Registry,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic never leaves the state half-written (every update is a few assignments).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `<workdir>/<town>`.
    fn town_dir(&self, town: &str) -> Result<PathBuf, Reply> {
        workdir::town_dir(&self.config.workdir, town)
            .ok_or_else(|| error(400, "town id cannot name a directory"))
    }
}

/// Accepts connections until the listener fails, each served on its own thread; with a
/// worker URL, renews the towns' gateway tokens in the background.
///
/// # Errors
/// When the self-refresh thread cannot be started or the listener fails for good.
pub fn serve(listener: TcpListener, config: Config) -> io::Result<()> {
    let shared = Arc::new(Shared {
        config,
        state: Mutex::new(State::default()),
        agents: agents::Registry::default(),
    });
    self_refresh::start(&shared)?;
    let read_timeout = shared.config.read_timeout;
    serve_each(listener, "gastown-control", move |stream| {
        one_exchange(stream, read_timeout, |stream, deadline| {
            request(stream, &shared, deadline)
        });
    })
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
    AgentsStart,
    /// The path's agent id, unchecked.
    AgentStop(String),
    AgentStatus(String),
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
            | Route::AgentStop(_) => true,
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
        AGENTS_START_PATH => Some(Route::AgentsStart),
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
    let route = route(config.build, &head.method, head.path()).map_err(refuse)?;
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
        read_body(stream, &head, buf, MAX_BODY_BYTES, deadline)?
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
        Route::AgentsStart => agents::start(shared, town, body),
        Route::AgentStop(id) => agents::stop(shared, town, id, body),
        Route::AgentStatus(id) => agents::status(shared, town, id),
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

/// Takes the town's new container token: kept in memory (for the self-refresh) and written
/// to its file (for the git credential helper), with the town's gitconfig brought up to date.
fn refresh_token(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
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
    let gitconfig = shared.config.credential_helper.as_deref().and_then(|exe| {
        let text = workdir::gitconfig_text(
            exe,
            &shared.config.workdir,
            town,
            shared.config.worker_url.as_deref(),
        );
        if text.is_none() {
            eprintln!("gastown-control: no gitconfig for town {town}: a path git cannot carry");
        }
        text
    });
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
fn stop(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
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

/// Replaces the town's env and rewrites its files (see the crate docs). Everything is checked
/// before anything is written, so a refused sync leaves the town as it was.
fn sync_config(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
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

#[cfg(feature = "debug-routes")]
fn debug_town(shared: &Shared, town: &str, id: &str) -> Result<Reply, Reply> {
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
    fn workdir_and_self_refresh_options() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = Options::parse(&[]).unwrap();
        assert_eq!(o.workdir, PathBuf::from("gastown-work"));
        assert_eq!(o.worker_url, None);
        assert_eq!(o.gateway_refresh, Duration::from_millis(43_200_000));

        let o = Options::parse(&args(&[
            "--workdir",
            "/srv/towns",
            "--worker-url",
            "http://127.0.0.1:8787/",
            "--gateway-refresh-ms",
            "100",
        ]))
        .unwrap();
        assert_eq!(o.workdir, PathBuf::from("/srv/towns"));
        assert_eq!(o.worker_url.as_deref(), Some("http://127.0.0.1:8787"));
        assert_eq!(o.gateway_refresh, Duration::from_millis(100));
        let https = Options::parse(&args(&["--worker-url", "https://gastown.example"]));
        assert_eq!(
            https.unwrap().worker_url.as_deref(),
            Some("https://gastown.example")
        );
        for bad in [
            "ftp://x",
            "x.example",
            "http://",
            "https:///path",
            "http://a b",
            "http://a?q",
        ] {
            assert!(
                Options::parse(&args(&["--worker-url", bad])).is_err(),
                "{bad}"
            );
        }
        for bad in ["99", "0", "x", "-1"] {
            assert!(
                Options::parse(&args(&["--gateway-refresh-ms", bad])).is_err(),
                "{bad}"
            );
        }
        assert!(Options::parse(&args(&["--workdir"])).is_err());
    }

    #[test]
    fn workdir_and_worker_url_fall_back_to_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let env = |name: &str| match name {
            WORKDIR_ENV => Some("/from/env".to_owned()),
            WORKER_URL_ENV => Some("https://worker.example/".to_owned()),
            _ => None,
        };
        let o = Options::parse_with_env(&[], env).unwrap();
        assert_eq!(o.workdir, PathBuf::from("/from/env"));
        assert_eq!(o.worker_url.as_deref(), Some("https://worker.example"));
        // The command line wins.
        let o = Options::parse_with_env(
            &args(&["--workdir", "w", "--worker-url", "http://localhost:1"]),
            env,
        )
        .unwrap();
        assert_eq!(o.workdir, PathBuf::from("w"));
        assert_eq!(o.worker_url.as_deref(), Some("http://localhost:1"));
        // Empty counts as unset; a bad value names the variable.
        let empty = Options::parse_with_env(&[], |_| Some(String::new())).unwrap();
        assert_eq!(
            (empty.workdir, empty.worker_url),
            (PathBuf::from(DEFAULT_WORKDIR), None)
        );
        let bad = Options::parse_with_env(&[], |n| (n == WORKER_URL_ENV).then(|| "x".into()));
        assert!(bad.unwrap_err().contains(WORKER_URL_ENV));
    }

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
    fn the_agent_command_comes_from_the_option_or_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(Options::parse(&[]).unwrap().agent_command, None);
        let o = Options::parse(&args(&["--agent-command", "/bin/sh /x/a.sh"])).unwrap();
        assert_eq!(
            o.agent_command,
            Some(AgentCommand {
                program: "/bin/sh".into(),
                args: vec!["/x/a.sh".into()],
            })
        );
        let env = |name: &str| (name == AGENT_COMMAND_ENV).then(|| "/opt/agent".to_owned());
        let o = Options::parse_with_env(&[], env).unwrap();
        assert_eq!(
            o.agent_command.unwrap().program,
            PathBuf::from("/opt/agent")
        );
        let o = Options::parse_with_env(&args(&["--agent-command", "/a"]), env).unwrap();
        assert_eq!(o.agent_command.unwrap().program, PathBuf::from("/a"));
        assert!(Options::parse(&args(&["--agent-command"])).is_err());
        assert!(Options::parse(&args(&["--agent-command", " "])).is_err());
        // An empty value counts as unset.
        let empty = Options::parse(&args(&["--agent-command", ""])).unwrap();
        assert_eq!(empty.agent_command, None);
    }

    #[test]
    fn the_agent_user_comes_in_pairs_from_options_or_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(Options::parse(&[]).unwrap().agent_user, None);
        let o = Options::parse(&args(&["--agent-uid", "10001", "--agent-gid", "10002"])).unwrap();
        assert_eq!(o.agent_user, Some(AgentUser::new(10001, 10002).unwrap()));
        let env = |name: &str| match name {
            AGENT_UID_ENV => Some("20001".to_owned()),
            AGENT_GID_ENV => Some("20002".to_owned()),
            _ => None,
        };
        let o = Options::parse_with_env(&[], env).unwrap();
        assert_eq!(o.agent_user, Some(AgentUser::new(20001, 20002).unwrap()));
        // An option wins over its own variable only.
        let o = Options::parse_with_env(&args(&["--agent-uid", "3"]), env).unwrap();
        assert_eq!(o.agent_user, Some(AgentUser::new(3, 20002).unwrap()));
        for bad in [
            &["--agent-uid", "10001"][..],
            &["--agent-gid", "10001"],
            &["--agent-uid", "0", "--agent-gid", "10001"],
            &["--agent-uid", "10001", "--agent-gid", "0"],
            &["--agent-uid", "agent", "--agent-gid", "10001"],
            &["--agent-uid", "-1", "--agent-gid", "10001"],
            &["--agent-uid"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
        }
        let half = Options::parse_with_env(&[], |n| (n == AGENT_UID_ENV).then(|| "5".into()));
        assert!(half.unwrap_err().contains(AGENT_UID_ENV));
        // Empty counts as unset.
        let empty = Options::parse_with_env(&[], |_| Some(String::new())).unwrap();
        assert_eq!(empty.agent_user, None);
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

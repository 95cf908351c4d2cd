//! A town's agents: each a child process of this server, started, stopped and watched on the
//! worker's word (`POST /agents/start`, `POST /agents/:id/stop`, `GET /agents/:id/status`; the
//! bodies are [`gastown_core::control`]'s).
//!
//! An agent runs the agent command ([`AgentCommand`]: `--agent-command`, else
//! [`DEMO_AGENT_BIN`] beside this server's executable) with no shell, in
//!
//! ```text
//! <workdir>/<town>/agents/<agent>/       its work dir (and HOME), emptied on every start
//! <workdir>/<town>/agents/<agent>.log    its stdout and stderr, appended (mode 0600)
//! ```
//!
//! The log lives outside the work dir so that a fresh clone there never sees it.
//!
//! With an agent user ([`crate::agent_user`]) the process runs as its uid and gid with no
//! supplementary group, and before each start the town's directory and `agents/` are made the
//! server's, group the agent's, mode 0710, while the work dir (created anew) and the town's
//! `.git-tokens/` are handed to the agent (mode 0700), so that the git credential helper, run
//! by the agent's git as the agent, can cache tokens there. The log stays the server's (0600):
//! the agent writes it only through the stdout and stderr it inherits.
//!
//! Rules:
//!
//! * an agent starts only in a town whose container token the server holds (409 otherwise:
//!   the worker then starts the container, pushing token and env, and tries again);
//! * its environment starts empty: `PATH` (the server's), then the body's `env`, then the
//!   variables this module sets, which win (the private `agent_env`); nothing else of the
//!   server's environment reaches it, and no value is ever logged;
//! * its `PATH` starts with the town's `bin/` when the town has a `gh` shim there (written on
//!   each `/refresh-token`), so every `gh` it runs gets `GH_TOKEN` for that run only
//!   ([`crate::gh`]); `GH_TOKEN` and `GITHUB_TOKEN` are never in its env, even if the body's
//!   `env` has them: a copy there would go stale. Nor are the town's gateway token (`KILO_JWT`)
//!   and container token (`GASTOWN_CONTAINER_TOKEN`): it reads both from their files, which a
//!   refresh rewrites;
//! * an org town's agent (the body's `organization_id`) gets the org id as
//!   `GASTOWN_ORGANIZATION_ID` and, for the Kilo CLI, in `KILO_CONFIG_CONTENT` as
//!   `{"provider":{"kilo":{"options":{"kilocodeOrganizationId":"<org>"}}}}`, merged into the
//!   JSON object the body's `env` may already hold there (a value that is no JSON object, or
//!   whose `provider.kilo.options` is no object, is refused: 400); a personal town's agent
//!   gets neither from the server;
//! * ids become paths only after [`check_agent_id`] (1 to 128 of `A-Z a-z 0-9 _ -`, and not
//!   the town's `settings`); a rig id must pass [`workdir::check_rig_id`];
//! * the worker is the authority: a start for an agent id still running kills that process
//!   first; at most [`MAX_AGENTS`] run at once in the whole server (503 beyond), so a run of
//!   starts cannot fork without bound;
//! * each agent leads a process group of its own, which holds whatever it starts (the Kilo
//!   CLI's server, a shell tool's children); each child has a thread that waits for it
//!   (polling every 50 ms) and records its exit code, `None` when a signal ended it, then kills
//!   what is left of its group and every process that carries its run's mark ([`RUN_ENV`] in
//!   its environment: the Kilo CLI starts its shell tools in sessions of their own), so nothing
//!   an agent started outlives it (a `kill -9` of the agent leaves no orphaned CLI or shell
//!   command behind). A stop kills the whole group with `SIGKILL` (no
//!   grace period) and waits, so the status right after a stop is `exited`. Agents are not
//!   killed when the server itself dies: the container's end takes them. On the server's
//!   `SIGTERM` the eviction drain (the private module `drain`) takes every running agent over
//!   ([`Registry::evict_all`]): `SIGTERM` to its group, a grace, `SIGKILL`, its work saved, its
//!   end reported; meanwhile `/agents/start` answers 503;
//! * the end of an agent is reported to the worker once at most: by its watcher when it ends on
//!   its own (not after a stop: that end is the worker's doing), else by the drain;
//! * a token refresh needs nothing from here: an agent reads the town's current container
//!   token from `GASTOWN_CONTAINER_TOKEN_FILE` on every call, and `/refresh-token` rewrites
//!   that file. The gateway token in `GASTOWN_GATEWAY_ENV_FILE` is likewise kept current by
//!   `/sync-config` and the self-refresh;
//! * `POST /stop` of the town kills all its agents; their records stay (state `exited`), so a
//!   status asked afterwards says so.
//!
//! Lock order: this registry's lock, then the server's state lock (to see the token), never
//! the other way round.

use crate::agent_user::AgentUser;
use crate::callbacks::Callbacks;
use crate::child::{kill_group, signal, Sig};
use crate::client;
use crate::git_credential;
use crate::http::{error, Reply};
use crate::routes::{parse, same_town};
use crate::state::Shared;
use crate::workdir;
use gastown_core::control::{
    AgentExitCallback, AgentProcessState, AgentProcessStatus, AgentStartBody, AgentStopBody,
    Drained, AI_AGENT_NAME_ENV, COMMIT_IDENTITY_ENV, CONTAINER_TOKEN_FILE, DEFAULT_AI_AGENT_NAME,
    DEFAULT_GIT_AUTHOR_EMAIL, DEFAULT_GIT_AUTHOR_NAME, GATEWAY_ENV_FILE, GATEWAY_TOKEN_ENV,
    GH_TOKEN_ENV, GIT_AUTHOR_EMAIL_ENV, GIT_AUTHOR_NAME_ENV, KILO_CONFIG_CONTENT_ENV,
    ORGANIZATION_ID_ENV, TOWN_ID_ENV, WORKER_URL_ENV,
};
use gastown_core::ids::AgentId;
use gastown_core::integrations::GitIdentity;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Names the agent command when `--agent-command` does not.
pub const AGENT_COMMAND_ENV: &str = "GASTOWN_AGENT_COMMAND";
/// The default agent command: this executable, beside the server's own (the demo agent of
/// `gastown-standins`, built into the same target directory).
pub const DEMO_AGENT_BIN: &str = "gastown-demo-agent";
/// Agents running at once in one server.
pub const MAX_AGENTS: usize = 32;
/// The directory, in a town's, of its agents' work dirs and logs.
pub const AGENTS_DIR: &str = "agents";
/// Longest agent id accepted as a directory name.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// The variables the server sets for every agent (they win over the body's `env`).
pub const AGENT_ID_ENV: &str = crate::git_credential::AGENT_ID_ENV;
pub const AGENT_ROLE_ENV: &str = "GASTOWN_AGENT_ROLE";
pub const AGENT_NAME_ENV: &str = "GASTOWN_AGENT_NAME";
pub const RIG_ID_ENV: &str = crate::git_credential::RIG_ID_ENV;
pub const BEAD_ID_ENV: &str = "GASTOWN_BEAD_ID";
pub const BEAD_TITLE_ENV: &str = "GASTOWN_BEAD_TITLE";
pub const BEAD_BODY_ENV: &str = "GASTOWN_BEAD_BODY";
pub const GIT_URL_ENV: &str = "GASTOWN_GIT_URL";
pub const DEFAULT_BRANCH_ENV: &str = "GASTOWN_DEFAULT_BRANCH";
pub const BRANCH_ENV: &str = "GASTOWN_BRANCH";
pub const MODEL_ENV: &str = "GASTOWN_MODEL";
pub const CONTAINER_TOKEN_FILE_ENV: &str = "GASTOWN_CONTAINER_TOKEN_FILE";
pub const GATEWAY_ENV_FILE_ENV: &str = "GASTOWN_GATEWAY_ENV_FILE";
pub const WORK_DIR_ENV: &str = "GASTOWN_WORK_DIR";
pub const GIT_CONFIG_GLOBAL_ENV: &str = "GIT_CONFIG_GLOBAL";

/// How often a child's thread looks whether it exited.
const REAP_POLL: Duration = Duration::from_millis(50);
/// Records (running or not) kept before those of exited agents are dropped.
const MAX_RECORDS: usize = 1024;
/// Mode of an agent's log: what it prints may be private.
const LOG_MODE: u32 = 0o600;

/// The program each agent runs, and its first arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl AgentCommand {
    /// An executable path, then arguments, split on whitespace (no shell, no quoting: a
    /// path with a space cannot be named here).
    ///
    /// # Errors
    /// When `text` names no program.
    pub fn parse(text: &str) -> Result<AgentCommand, String> {
        let mut words = text.split_whitespace();
        let program = words
            .next()
            .ok_or_else(|| "the agent command names no program".to_owned())?;
        Ok(AgentCommand {
            program: PathBuf::from(program),
            args: words.map(str::to_owned).collect(),
        })
    }

    /// [`DEMO_AGENT_BIN`] in the directory of `exe` (the server's own executable).
    #[must_use]
    pub fn beside(exe: &Path) -> Option<AgentCommand> {
        Some(AgentCommand {
            program: exe.parent()?.join(DEMO_AGENT_BIN),
            args: Vec::new(),
        })
    }
}

/// Checks that `id` is an agent id that can name a directory of the town's.
///
/// # Errors
/// Why it cannot, for the caller's 400.
pub fn check_agent_id(id: &str) -> Result<(), String> {
    AgentId::parse(id).map_err(|e| format!("agent id {e}"))?;
    if id.len() > MAX_AGENT_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!("agent id {id:?} may hold only A-Z a-z 0-9 _ -"));
    }
    // A rig named `agents` keeps its settings in `agents/settings/`.
    if id == workdir::SETTINGS_DIR {
        return Err(format!("agent id {id:?} names a settings directory"));
    }
    Ok(())
}

/// Whether `name` can be an environment variable's name: `[A-Za-z_][A-Za-z0-9_]*`.
#[must_use]
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The files of the town an agent is pointed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TownFiles {
    pub(crate) container_token: PathBuf,
    pub(crate) gateway_env: PathBuf,
    /// `None` when the town has no gitconfig (the server knows no credential helper).
    pub(crate) gitconfig: Option<PathBuf>,
    /// The town's `bin/`, first on the agent's `PATH`; `None` when it holds no `gh` shim.
    pub(crate) bin: Option<PathBuf>,
}

impl TownFiles {
    fn of(town_dir: &Path) -> TownFiles {
        let is_file = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
        let gitconfig = town_dir.join(workdir::GITCONFIG_FILE);
        let bin = town_dir.join(workdir::BIN_DIR);
        TownFiles {
            container_token: town_dir.join(CONTAINER_TOKEN_FILE),
            gateway_env: town_dir.join(GATEWAY_ENV_FILE),
            gitconfig: is_file(&gitconfig).then_some(gitconfig),
            bin: is_file(&bin.join(workdir::GH_SHIM_FILE)).then_some(bin),
        }
    }
}

/// The Kilo CLI's inline config with `org` as `provider.kilo.options.kilocodeOrganizationId`:
/// `existing` (the body's `KILO_CONFIG_CONTENT`, a JSON object) with that one value set, or an
/// object holding only it.
///
/// # Errors
/// When `existing` is no JSON object, or holds a `provider`, `kilo` or `options` that is no
/// object; the message names the variable, never its value.
pub(crate) fn kilo_config_with_org(existing: Option<&str>, org: &str) -> Result<String, String> {
    let mut config = match existing {
        None => Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            _ => return Err(format!("{KILO_CONFIG_CONTENT_ENV} is not a JSON object")),
        },
    };
    let mut level = &mut config;
    for key in ["provider", "kilo", "options"] {
        let next = level
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        level = next.as_object_mut().ok_or_else(|| {
            format!("{KILO_CONFIG_CONTENT_ENV} has a {key} that is not a JSON object")
        })?;
    }
    level.insert(
        "kilocodeOrganizationId".to_owned(),
        Value::String(org.to_owned()),
    );
    serde_json::to_string(&config).map_err(|e| e.to_string())
}

/// An agent's whole environment: `PATH` (`server_path`), then the body's `env`, then the
/// variables the server sets. Checks every name and value first.
///
/// # Errors
/// A message for the caller's 400, naming a variable but never a value.
pub(crate) fn agent_env(
    body: &AgentStartBody,
    worker_url: &str,
    files: &TownFiles,
    work_dir: &Path,
    server_path: Option<&str>,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    if let Some(path) = server_path {
        env.insert("PATH".to_owned(), path.to_owned());
    }
    for (name, value) in &body.env {
        if !is_env_name(name) {
            return Err(format!("env name {name:?} is not [A-Za-z_][A-Za-z0-9_]*"));
        }
        env.insert(name.clone(), value.clone());
    }
    let path_text = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| "the work directory's path is not UTF-8".to_owned())
    };
    let mut set = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            env.insert(name.to_owned(), value);
        }
    };
    set(TOWN_ID_ENV, Some(body.town_id.as_str().to_owned()));
    set(AGENT_ID_ENV, Some(body.agent_id.as_str().to_owned()));
    set(AGENT_ROLE_ENV, Some(body.role.as_str().to_owned()));
    set(AGENT_NAME_ENV, Some(body.name.clone()));
    set(
        RIG_ID_ENV,
        body.rig_id.as_ref().map(|r| r.as_str().to_owned()),
    );
    if let Some(bead) = &body.bead {
        set(BEAD_ID_ENV, Some(bead.id.clone()));
        set(BEAD_TITLE_ENV, Some(bead.title.clone()));
        set(BEAD_BODY_ENV, Some(bead.body.clone()));
    }
    set(GIT_URL_ENV, body.git_url.clone());
    set(DEFAULT_BRANCH_ENV, body.default_branch.clone());
    set(BRANCH_ENV, body.branch.clone());
    set(MODEL_ENV, body.model.clone());
    set(WORKER_URL_ENV, Some(worker_url.to_owned()));
    set(
        CONTAINER_TOKEN_FILE_ENV,
        Some(path_text(&files.container_token)?),
    );
    set(GATEWAY_ENV_FILE_ENV, Some(path_text(&files.gateway_env)?));
    if let Some(gitconfig) = &files.gitconfig {
        set(GIT_CONFIG_GLOBAL_ENV, Some(path_text(gitconfig)?));
    }
    let work = path_text(work_dir)?;
    set("HOME", Some(work.clone()));
    set(WORK_DIR_ENV, Some(work));
    if let Some(org) = &body.organization_id {
        let kilo = kilo_config_with_org(
            env.get(KILO_CONFIG_CONTENT_ENV).map(String::as_str),
            org.as_str(),
        )?;
        env.insert(KILO_CONFIG_CONTENT_ENV.to_owned(), kilo);
        env.insert(ORGANIZATION_ID_ENV.to_owned(), org.as_str().to_owned());
    }
    // Copies here would go stale under a running agent: the gh shim hands each run of gh a
    // current token, the Kilo runtime's relay and `gt` read the town's gateway and container
    // tokens from their files on every call.
    for stale in [
        GH_TOKEN_ENV,
        crate::gh::GITHUB_TOKEN_ENV,
        GATEWAY_TOKEN_ENV,
        crate::callbacks::CONTAINER_TOKEN_ENV,
    ] {
        env.remove(stale);
    }
    // A directory with `:` in its path cannot be on a PATH: then gh runs without the shim.
    if let Some(bin) = files.bin.as_deref().map(path_text).transpose()? {
        if !bin.contains(':') {
            let path = match env.get("PATH").filter(|p| !p.is_empty()) {
                Some(rest) => format!("{bin}:{rest}"),
                None => bin,
            };
            env.insert("PATH".to_owned(), path);
        }
    }
    // The system refuses a NUL in the environment; refuse it here, by name.
    if let Some((name, _)) = env.iter().find(|(_, v)| v.contains('\0')) {
        return Err(format!("the value of {name} holds a NUL character"));
    }
    Ok(env)
}

/// One child process and how it ended.
struct Process {
    pid: u32,
    /// This run's mark ([`RUN_ENV`]), inherited by everything it starts.
    run: String,
    child: Mutex<Child>,
    /// Set once it exited: its exit code, `None` when a signal ended it.
    exit: OnceLock<Option<i32>>,
    /// Set when this server stopped it (a stop, a town's stop, a start replacing it): such an
    /// end is the worker's doing and is not reported back. Also set by whoever takes the report
    /// of its end on (its watcher once it exited, or the eviction drain), so that it is sent
    /// once at most.
    stopped: AtomicBool,
    /// Set once its watcher is done: what was left of it killed, its last lines sent.
    watched: AtomicBool,
}

impl Process {
    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether it has exited, looking now.
    fn has_exited(&self) -> bool {
        if self.exit.get().is_some() {
            return true;
        }
        let mut child = self.child();
        self.look(&mut child)
    }

    fn look(&self, child: &mut Child) -> bool {
        match child.try_wait() {
            Ok(Some(status)) => {
                let _ = self.exit.set(status.code());
                true
            }
            Ok(None) => false,
            // Not ours to wait for any more (cannot happen with a `Child` we own): gone.
            Err(_) => {
                let _ = self.exit.set(None);
                true
            }
        }
    }

    /// Takes the report of its end on: true for the first caller only (none after a stop).
    fn claim_report(&self) -> bool {
        !self.stopped.swap(true, Ordering::SeqCst)
    }

    /// Kills it (`SIGKILL`) and waits for it; whether it was still running.
    fn kill(&self) -> bool {
        self.stopped.store(true, Ordering::SeqCst);
        let mut child = self.child();
        if self.exit.get().is_some() || self.look(&mut child) {
            return false;
        }
        kill_group(self.pid);
        let _ = child.kill();
        kill_marked(&self.run);
        let code = child.wait().ok().and_then(|s| s.code());
        let _ = self.exit.set(code);
        true
    }

    fn status(&self, agent_id: &str) -> AgentProcessStatus {
        self.has_exited();
        let exit = self.exit.get().copied();
        AgentProcessStatus {
            agent_id: agent_id.to_owned(),
            state: match exit {
                None => AgentProcessState::Running,
                Some(_) => AgentProcessState::Exited,
            },
            pid: Some(self.pid),
            exit_code: exit.flatten(),
        }
    }
}

/// The last process started for one agent id.
struct Record {
    process: Arc<Process>,
    /// Starts of this agent id so far.
    starts: u64,
    /// What its start said, for the report of its end.
    session: Arc<Session>,
}

/// What an agent's start said that its end needs: how to report it, and, for the eviction
/// drain, where its work is and where it goes.
struct Session {
    report: ExitReport,
    /// `<workdir>/<town>/agents/<agent>/`.
    work_dir: PathBuf,
    /// The start's `git_url` and `branch`, for a rig's agent started with both.
    save: Option<(String, String)>,
}

/// What the server knows of one town's agents.
#[derive(Default)]
struct TownAgents {
    agents: BTreeMap<String, Record>,
    /// Every `/agents/start` for the town that got past authentication, refused or not.
    start_attempts: u64,
}

/// Every town's agents.
#[derive(Default)]
pub(crate) struct Registry {
    towns: Mutex<HashMap<String, TownAgents>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, TownAgents>> {
        // Every update is a few assignments: a panic never leaves one half-done.
        self.towns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Processes running, `except` one.
    fn running(towns: &HashMap<String, TownAgents>, except: Option<&Arc<Process>>) -> usize {
        towns
            .values()
            .flat_map(|t| t.agents.values())
            .filter(|r| except.is_none_or(|e| !Arc::ptr_eq(e, &r.process)))
            .filter(|r| !r.process.has_exited())
            .count()
    }

    /// Every agent of every town still running, each taken over for the eviction drain: from
    /// now on the report of its end is the drain's to send, never its watcher's.
    pub(crate) fn evict_all(&self) -> Vec<Evicted> {
        let towns = self.lock();
        let mut evicted = Vec::new();
        for (town, t) in towns.iter() {
            for (agent, r) in &t.agents {
                if !r.process.has_exited() && r.process.claim_report() {
                    evicted.push(Evicted {
                        town: town.clone(),
                        agent: agent.clone(),
                        process: Arc::clone(&r.process),
                        session: Arc::clone(&r.session),
                    });
                }
            }
        }
        evicted
    }

    /// Kills every agent of `town`; how many were running.
    pub(crate) fn stop_town(&self, town: &str) -> usize {
        let towns = self.lock();
        towns.get(town).map_or(0, |t| {
            t.agents.values().filter(|r| r.process.kill()).count()
        })
    }

    /// `/debug/towns/:id`'s view: each agent, and the start attempts; `None` when the town
    /// never asked for an agent.
    #[cfg(feature = "debug-routes")]
    pub(crate) fn debug_view(&self, town: &str) -> Option<(Vec<serde_json::Value>, u64)> {
        let towns = self.lock();
        let t = towns.get(town)?;
        let agents = t
            .agents
            .iter()
            .map(|(id, r)| {
                let s = r.process.status(id);
                json!({
                    "agent_id": s.agent_id,
                    "state": s.state,
                    "pid": s.pid,
                    "exit_code": s.exit_code,
                    "starts": r.starts,
                })
            })
            .collect();
        Some((agents, t.start_attempts))
    }

    /// Drops the records of exited agents once there are too many.
    fn prune(towns: &mut HashMap<String, TownAgents>) {
        let records: usize = towns.values().map(|t| t.agents.len()).sum();
        if records > MAX_RECORDS {
            for t in towns.values_mut() {
                t.agents.retain(|_, r| !r.process.has_exited());
            }
        }
    }
}

/// A running agent the eviction drain took over ([`Registry::evict_all`]): its end, and the
/// report of it, are the drain's (`crate::drain`).
pub(crate) struct Evicted {
    pub(crate) town: String,
    pub(crate) agent: String,
    process: Arc<Process>,
    session: Arc<Session>,
}

impl Evicted {
    /// `SIGTERM` to its whole process group: a real agent may save its own work.
    pub(crate) fn terminate(&self) {
        signal(self.process.pid, false, TERMINATE);
    }

    /// Whether its process has exited, looking now.
    pub(crate) fn has_exited(&self) -> bool {
        self.process.has_exited()
    }

    /// `SIGKILL` to its process group when it still runs (as a stop does, waiting for it); then
    /// to whatever of its group and of its run is left, so nothing of it touches its work tree
    /// any more.
    pub(crate) fn kill(&self) {
        self.process.kill();
        kill_group(self.process.pid);
        kill_marked(&self.process.run);
    }

    /// How it ended: its exit code, `None` when a signal ended it (or it still runs).
    pub(crate) fn exit_code(&self) -> Option<i32> {
        self.process.exit.get().copied().flatten()
    }

    /// The start's `git_url` and `branch`, for a rig's agent started with both.
    pub(crate) fn save_target(&self) -> Option<(&str, &str)> {
        self.session
            .save
            .as_ref()
            .map(|(url, branch)| (url.as_str(), branch.as_str()))
    }

    /// Its work dir, `<workdir>/<town>/agents/<agent>/`.
    pub(crate) fn work_dir(&self) -> &Path {
        &self.session.work_dir
    }

    /// The environment its process was started with.
    pub(crate) fn env(&self) -> &BTreeMap<String, String> {
        &self.session.report.env
    }

    /// Waits, until `until` at most, for its watcher to be done (its last lines sent before
    /// the report of its end).
    pub(crate) fn wait_watched(&self, until: std::time::Instant) {
        while !self.process.watched.load(Ordering::SeqCst) && std::time::Instant::now() < until {
            std::thread::sleep(REAP_POLL);
        }
    }

    /// Reports its end to the worker as its watcher would, with what the drain saved.
    pub(crate) fn report(&self, drained: Option<Drained>) {
        self.session.report.send(self.exit_code(), drained);
    }
}

/// The 503 of `/agents/start` once the eviction drain began.
pub const DRAINING_ERROR: &str = "the container is draining (evicted): no agent starts here";

/// `POST /agents/start`.
pub(crate) fn start(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
    if shared.is_draining() {
        return Err(error(503, DRAINING_ERROR));
    }
    let req: AgentStartBody = parse(body)?;
    same_town(req.town_id.as_str(), town)?;
    shared
        .agents
        .lock()
        .entry(town.to_owned())
        .or_default()
        .start_attempts += 1;
    #[cfg(feature = "debug-routes")]
    if shared.state().fail.agents_start {
        return Err(error(503, "agents/start failing on purpose"));
    }
    let bad = |e: String| error(400, &e);
    check_agent_id(req.agent_id.as_str()).map_err(bad)?;
    if let Some(rig) = &req.rig_id {
        workdir::check_rig_id(rig.as_str()).map_err(bad)?;
    }
    let worker_url = match req.worker_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => client::origin(url).map_err(|e| bad(format!("worker_url {e}")))?,
        None => shared
            .config
            .worker_url
            .clone()
            .ok_or_else(|| error(400, "no worker url to call back"))?,
    };
    let town_dir = shared.town_dir(town)?;
    let work_dir = town_dir.join(AGENTS_DIR).join(req.agent_id.as_str());
    let server_path = std::env::var("PATH").ok();
    let mut env = agent_env(
        &req,
        &worker_url,
        &TownFiles::of(&town_dir),
        &work_dir,
        server_path.as_deref(),
    )
    .map_err(bad)?;
    let identity = session_identity(shared, &req, &town_dir, &worker_url);
    commit_identity(&mut env, identity.as_ref());
    let command = shared
        .config
        .agent_command
        .as_ref()
        .ok_or_else(|| error(500, "no agent command is configured"))?;

    let mut towns = shared.agents.lock();
    // Under the registry's lock too: the drain marks the server draining, then takes every
    // agent running under this lock, so no start slips past it.
    if shared.is_draining() {
        return Err(error(503, DRAINING_ERROR));
    }
    // Under the registry's lock: a `/stop` that took the token away kills, after it, every
    // agent started before; none starts after it.
    let has_token = shared
        .state()
        .towns
        .get(town)
        .is_some_and(|t| t.token.is_some());
    if !has_token {
        return Err(error(409, "town not started"));
    }
    let old = towns
        .get(town)
        .and_then(|t| t.agents.get(req.agent_id.as_str()))
        .map(|r| Arc::clone(&r.process));
    // The process this start replaces does not count.
    if Registry::running(&towns, old.as_ref()) >= MAX_AGENTS {
        return Err(error(503, "too many agents running"));
    }
    if let Some(old) = &old {
        old.kill();
    }
    let starts = towns
        .get(town)
        .and_then(|t| t.agents.get(req.agent_id.as_str()))
        .map_or(0, |r| r.starts)
        + 1;
    let place = Place {
        town_dir: &town_dir,
        agent: req.agent_id.as_str(),
        work_dir: &work_dir,
        user: shared.config.agent_user,
    };
    let log = town_dir
        .join(AGENTS_DIR)
        .join(format!("{}.log", req.agent_id));
    // Where this run's lines begin (its start line, written next, is this server's own).
    let log_from = fs::metadata(&log).map_or(0, |m| m.len());
    let process = spawn(command, &env, &place, starts).map_err(|e| {
        // The error names a path or the command at most, never the env.
        eprintln!(
            "gastown-control: cannot start agent {} of town {town}: {e}",
            req.agent_id
        );
        error(500, "cannot start the agent")
    })?;
    // As started: a quick child may be gone already, which its status will say.
    let status = AgentProcessStatus {
        agent_id: req.agent_id.as_str().to_owned(),
        state: AgentProcessState::Running,
        pid: Some(process.pid),
        exit_code: None,
    };
    // A process that ends on its own is reported to the worker: a rig's agent through its exit
    // callback, the mayor by ending its session (with the session's own key).
    let save = match (&req.rig_id, &req.git_url, &req.branch) {
        (Some(_), Some(url), Some(branch)) if !url.is_empty() && !branch.is_empty() => {
            Some((url.clone(), branch.clone()))
        }
        _ => None,
    };
    let session = Arc::new(Session {
        report: ExitReport {
            env: env.clone(),
            log: log.clone(),
            mayor: req.rig_id.is_none(),
        },
        work_dir: work_dir.clone(),
        save,
    });
    // Its lines go to the worker as its events.
    let events =
        crate::events::Forwarder::start(log, log_from, starts, town_dir.clone(), env.clone());
    watch(&process, town, req.agent_id.as_str(), &session, events);
    let entry = towns.entry(town.to_owned()).or_default();
    entry.agents.insert(
        req.agent_id.as_str().to_owned(),
        Record {
            process,
            starts,
            session,
        },
    );
    Registry::prune(&mut towns);
    eprintln!(
        "gastown-control: agent {} of town {town} started (pid {}, start {starts})",
        req.agent_id,
        status.pid.unwrap_or_default()
    );
    Ok((200, json!(status)))
}

/// The identity this session's git tokens carry, asked of the worker once as it starts, naming
/// the agent as its credential helper will (so both get tokens of the same user, the one its
/// bead's work runs as, and the worker records the session's identity). `None` for a rig not
/// reached over HTTPS, or when the worker gives none (no GitHub token, no credentials, not
/// reached): the session then commits as the town's author.
fn session_identity(
    shared: &Shared,
    req: &AgentStartBody,
    town_dir: &Path,
    worker_url: &str,
) -> Option<GitIdentity> {
    let rig = req.rig_id.as_ref()?;
    if !req.git_url.as_deref()?.starts_with("https://") {
        return None;
    }
    let started = shared
        .state()
        .towns
        .get(req.town_id.as_str())
        .is_some_and(|t| t.token.is_some());
    if !started {
        return None;
    }
    let target = git_credential::Target {
        worker_url: Some(worker_url.to_owned()),
        town: req.town_id.as_str().to_owned(),
        rig: rig.as_str().to_owned(),
        workdir: shared.config.workdir.clone(),
        agent: Some(req.agent_id.as_str().to_owned()),
    };
    // A new session: a token an earlier session of this agent cached may be another user's.
    if let Err(e) = workdir::remove_git_token_cache(town_dir, &target.cache_key()) {
        eprintln!(
            "gastown-control: agent {}: cannot drop its old git token: {e}",
            req.agent_id
        );
    }
    match git_credential::fresh_token(&target) {
        Ok(reply) => reply.identity,
        Err(failure) => {
            // The failure names a status or a kind, never a token.
            eprintln!(
                "gastown-control: agent {}: no git identity from the worker ({failure}); it commits as the town's author",
                req.agent_id
            );
            None
        }
    }
}

/// Puts who the session commits as in its env: the user's name and no-reply email for a
/// user identity; else the town's configured author, else [`DEFAULT_GIT_AUTHOR_NAME`]. As
/// git's own `GIT_AUTHOR_*` and `GIT_COMMITTER_*` (so any agent's git commits as it) and
/// as `GASTOWN_GIT_AUTHOR_*`; with [`COMMIT_IDENTITY_ENV`] saying which it is and
/// [`AI_AGENT_NAME_ENV`] the co-author (unless the start names one).
fn commit_identity(env: &mut BTreeMap<String, String>, identity: Option<&GitIdentity>) {
    let plain = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    let configured = |var: &str, default: &str| {
        env.get(var)
            .filter(|v| plain(v))
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    let (name, email, which) = match identity {
        Some(GitIdentity::User { name, email }) if plain(name) && plain(email) => {
            (name.clone(), email.clone(), "user".to_owned())
        }
        other => (
            configured(GIT_AUTHOR_NAME_ENV, DEFAULT_GIT_AUTHOR_NAME),
            configured(GIT_AUTHOR_EMAIL_ENV, DEFAULT_GIT_AUTHOR_EMAIL),
            match other {
                Some(GitIdentity::Bot { reason }) => format!("bot:{}", reason.as_str()),
                _ => "none".to_owned(),
            },
        ),
    };
    for var in ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME", GIT_AUTHOR_NAME_ENV] {
        env.insert(var.to_owned(), name.clone());
    }
    for var in [
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_EMAIL",
        GIT_AUTHOR_EMAIL_ENV,
    ] {
        env.insert(var.to_owned(), email.clone());
    }
    env.insert(COMMIT_IDENTITY_ENV.to_owned(), which);
    env.entry(AI_AGENT_NAME_ENV.to_owned())
        .or_insert_with(|| DEFAULT_AI_AGENT_NAME.to_owned());
}

/// `POST /agents/:id/stop`: idempotent; `stopped` says whether it was running.
pub(crate) fn stop(shared: &Shared, town: &str, id: &str, body: &[u8]) -> Result<Reply, Reply> {
    let req: AgentStopBody = parse(body)?;
    same_town(&req.town_id, town)?;
    check_agent_id(id).map_err(|e| error(400, &e))?;
    let towns = shared.agents.lock();
    let stopped = towns
        .get(town)
        .and_then(|t| t.agents.get(id))
        .is_some_and(|r| r.process.kill());
    Ok((200, json!({ "ok": true, "stopped": stopped })))
}

/// `GET /agents/:id/status`: 404 for an agent never started in the town.
pub(crate) fn status(shared: &Shared, town: &str, id: &str) -> Result<Reply, Reply> {
    check_agent_id(id).map_err(|e| error(400, &e))?;
    let towns = shared.agents.lock();
    let record = towns
        .get(town)
        .and_then(|t| t.agents.get(id))
        .ok_or_else(|| error(404, "no such agent"))?;
    Ok((200, json!(record.process.status(id))))
}

/// Where an agent runs, and as whom.
struct Place<'a> {
    town_dir: &'a Path,
    agent: &'a str,
    work_dir: &'a Path,
    /// `None`: as the server's own user.
    user: Option<AgentUser>,
}

/// Empties the agent's work dir, opens its log and starts the command there (as the agent
/// user, when there is one, with its directories laid out for it first).
fn spawn(
    command: &AgentCommand,
    env: &BTreeMap<String, String>,
    place: &Place<'_>,
    starts: u64,
) -> io::Result<Arc<Process>> {
    let Place {
        town_dir,
        agent,
        work_dir,
        user,
    } = *place;
    let agents_dir = town_dir.join(AGENTS_DIR);
    match user {
        Some(user) => {
            workdir::pass_dir(town_dir, user)?;
            workdir::pass_dir(&agents_dir, user)?;
            workdir::agent_dir(&town_dir.join(workdir::GIT_TOKENS_DIR), user)?;
        }
        None => real_dir(&agents_dir)?,
    }
    match fs::symlink_metadata(work_dir) {
        // `remove_dir_all` removes a symbolic link inside, never what it names.
        Ok(m) if m.is_dir() => fs::remove_dir_all(work_dir)?,
        Ok(_) => fs::remove_file(work_dir)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir(work_dir)?;
    if let Some(user) = user {
        workdir::agent_dir(work_dir, user)?;
    }
    let mut log = open_log(&agents_dir.join(format!("{agent}.log")))?;
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(
        log,
        "--- gastown-control: start {starts} of agent {agent} at {since_epoch} (unix seconds)"
    )?;
    let run = format!(
        "{}:{}/{agent}/{starts}",
        std::process::id(),
        town_name(town_dir)
    );
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .env_clear()
        .envs(env)
        .env(RUN_ENV, &run)
        .current_dir(work_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(user) = user {
        // std sets the gid, drops the supplementary groups (the parent being root), then sets
        // the uid, all before the working directory is entered and the program run.
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.uid(user.uid()).gid(user.gid());
        }
        #[cfg(not(unix))]
        let _ = user;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {e}", command.program.to_string_lossy()),
        )
    })?;
    Ok(Arc::new(Process {
        pid: child.id(),
        run,
        child: Mutex::new(child),
        exit: OnceLock::new(),
        stopped: AtomicBool::new(false),
        watched: AtomicBool::new(false),
    }))
}

/// Marks every process of one agent run, whatever group or session it moved to (the Kilo CLI
/// starts its shell tools detached): `<server pid>:<town>/<agent>/<start number>`, so runs of
/// two servers on one machine (tests, `npm run dev`) never share a mark.
pub const RUN_ENV: &str = "GASTOWN_AGENT_RUN";

fn town_name(town_dir: &Path) -> String {
    town_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `SIGKILL` to every process whose environment holds `RUN_ENV=<run>`: what an agent started
/// and left behind, in a process group of its own. Linux's `/proc`; elsewhere nothing.
fn kill_marked(run: &str) {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    let mark = format!("{RUN_ENV}={run}");
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == mark.as_bytes()) {
            signal(pid, true, KILL);
        }
    }
}

/// The signals [`signal`] sends the agents.
const KILL: Sig = Sig::Kill;
const TERMINATE: Sig = Sig::Terminate;

/// Starts the thread that waits for the process and records its exit.
fn watch(
    process: &Arc<Process>,
    town: &str,
    agent: &str,
    session: &Arc<Session>,
    events: Option<crate::events::Forwarder>,
) {
    let unwatched = Arc::clone(process);
    let (process, town, agent) = (Arc::clone(process), town.to_owned(), agent.to_owned());
    let session = Arc::clone(session);
    let watcher = move || {
        while !process.has_exited() {
            std::thread::sleep(REAP_POLL);
        }
        kill_group(process.pid);
        kill_marked(&process.run);
        let code = process.exit.get().copied().flatten();
        let how = match code {
            Some(code) => format!("with code {code}"),
            None => "on a signal".to_owned(),
        };
        eprintln!("gastown-control: agent {agent} of town {town} exited {how}");
        // Its last lines before the report of its end.
        if let Some(events) = events {
            events.finish();
        }
        // Not after a stop (the worker's doing), nor when the eviction drain took it over (the
        // drain reports it, with what it saved).
        if process.claim_report() {
            session.report.send(code, None);
        }
        process.watched.store(true, Ordering::SeqCst);
    };
    let spawned = std::thread::Builder::new()
        .name("gastown-control-agent".into())
        // Enough for the exit report's HTTP call (a TLS client included); a stack overflow
        // would take the whole server down.
        .stack_size(WATCHER_STACK)
        .spawn(watcher);
    if let Err(e) = spawned {
        // The status still looks at the child whenever it is asked.
        eprintln!("gastown-control: cannot watch an agent: {e}");
        // Nothing will send its last lines: the drain need not wait for them.
        unwatched.watched.store(true, Ordering::SeqCst);
    }
}

/// Creates `dir` if missing, replacing anything there that is not a real directory (a link
/// would send the agents elsewhere).
/// What the worker is told when an agent's process ends on its own: its exit code and the last
/// lines of its log, so its bead is handed back at once (patrol's stall time is the backstop).
struct ExitReport {
    /// The agent's session, as [`Callbacks::from_env`] reads it.
    env: BTreeMap<String, String>,
    log: PathBuf,
    /// The mayor's session: its end is said with `POST …/tools/state {"status":"idle"}`.
    mayor: bool,
}

/// The stack of the thread that watches an agent (and reports its exit).
const WATCHER_STACK: usize = 1024 * 1024;

/// Lines of an agent's log quoted in its exit report.
const EXIT_TAIL_LINES: usize = 5;

impl ExitReport {
    /// Sends it: the exit callback (with `drained` when the eviction drain saved the agent's
    /// work), or the mayor's `idle` state; a failure is logged by the call, never a token.
    fn send(&self, exit_code: Option<i32>, drained: Option<Drained>) {
        let env = |name: &str| self.env.get(name).cloned();
        if self.mayor {
            // Refused (403) when the runtime already ended the session itself, or another
            // session has begun: nothing to do then.
            if let Ok(tools) = crate::mayor_tools::MayorTools::from_env(&env) {
                let _ = tools.post_state("idle");
            }
            return;
        }
        let Ok(session) = Callbacks::from_env(&env, "gastown-control") else {
            return;
        };
        let tail = log_tail(&self.log, EXIT_TAIL_LINES);
        let body = AgentExitCallback {
            exit_code,
            output_tail: tail,
            drained,
        };
        if let Ok(body) = serde_json::to_string(&body) {
            let _ = session.call("exit", &body);
        }
    }
}

/// The last `n` lines of `path` (read from its last 8 KiB), without this server's own lines.
fn log_tail(path: &Path, n: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(8 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--- gastown-control:"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn real_dir(dir: &Path) -> io::Result<()> {
    if fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(dir)?;
    }
    fs::create_dir_all(dir)
}

/// Opens the log for appending (mode 0600), replacing a link or anything else that is not a
/// plain file.
fn open_log(path: &Path) -> io::Result<File> {
    if fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => fs::remove_dir_all(path)?,
            _ => {}
        }
    }
    workdir::open_with_mode(OpenOptions::new().append(true).create(true), LOG_MODE, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gastown_core::agent_settings::Role;
    use gastown_core::control::AgentBead;

    fn body() -> AgentStartBody {
        AgentStartBody {
            town_id: gastown_core::ids::TownId::parse("town-a").unwrap(),
            agent_id: AgentId::parse("agent-1").unwrap(),
            role: Role::Polecat,
            name: "toast".into(),
            rig_id: Some(gastown_core::ids::RigId::parse("rig-1").unwrap()),
            bead: Some(AgentBead {
                id: "bead-1".into(),
                title: "Fix it".into(),
                body: "All of it.".into(),
            }),
            git_url: Some("https://example.com/r.git".into()),
            default_branch: Some("main".into()),
            branch: None,
            model: Some("kilo/auto".into()),
            worker_url: None,
            organization_id: None,
            env: BTreeMap::from([
                ("FROM_TOWN".into(), "1".into()),
                ("GASTOWN_AGENT_ID".into(), "forged".into()),
                ("PATH".into(), "/town/bin".into()),
            ]),
        }
    }

    fn files() -> TownFiles {
        TownFiles {
            container_token: "/w/town-a/.container-token".into(),
            gateway_env: "/w/town-a/.env.gateway".into(),
            gitconfig: Some("/w/town-a/gitconfig".into()),
            bin: None,
        }
    }

    #[test]
    fn the_env_is_path_then_the_body_then_ours() {
        let work = Path::new("/w/town-a/agents/agent-1");
        let env = agent_env(&body(), "http://w", &files(), work, Some("/usr/bin:/bin")).unwrap();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("PATH"), Some("/town/bin"), "the body may set PATH");
        assert_eq!(get("FROM_TOWN"), Some("1"));
        assert_eq!(get(AGENT_ID_ENV), Some("agent-1"), "ours win");
        assert_eq!(get(TOWN_ID_ENV), Some("town-a"));
        assert_eq!(get(AGENT_ROLE_ENV), Some("polecat"));
        assert_eq!(get(AGENT_NAME_ENV), Some("toast"));
        assert_eq!(get(RIG_ID_ENV), Some("rig-1"));
        assert_eq!(get(BEAD_ID_ENV), Some("bead-1"));
        assert_eq!(get(BEAD_TITLE_ENV), Some("Fix it"));
        assert_eq!(get(BEAD_BODY_ENV), Some("All of it."));
        assert_eq!(get(GIT_URL_ENV), Some("https://example.com/r.git"));
        assert_eq!(get(DEFAULT_BRANCH_ENV), Some("main"));
        assert_eq!(get(BRANCH_ENV), None);
        assert_eq!(get(MODEL_ENV), Some("kilo/auto"));
        assert_eq!(get(WORKER_URL_ENV), Some("http://w"));
        assert_eq!(
            get(CONTAINER_TOKEN_FILE_ENV),
            Some("/w/town-a/.container-token")
        );
        assert_eq!(get(GATEWAY_ENV_FILE_ENV), Some("/w/town-a/.env.gateway"));
        assert_eq!(get(GIT_CONFIG_GLOBAL_ENV), Some("/w/town-a/gitconfig"));
        assert_eq!(get("HOME"), Some("/w/town-a/agents/agent-1"));
        assert_eq!(get(WORK_DIR_ENV), Some("/w/town-a/agents/agent-1"));

        let mut mayor = body();
        mayor.rig_id = None;
        mayor.bead = None;
        mayor.env.clear();
        let no_gitconfig = TownFiles {
            gitconfig: None,
            ..files()
        };
        let env = agent_env(&mayor, "http://w", &no_gitconfig, work, Some("/bin")).unwrap();
        for absent in [
            RIG_ID_ENV,
            BEAD_ID_ENV,
            BEAD_BODY_ENV,
            GIT_CONFIG_GLOBAL_ENV,
        ] {
            assert!(!env.contains_key(absent), "{absent}");
        }
        assert_eq!(env["PATH"], "/bin");
    }

    #[test]
    fn the_gh_shim_comes_first_on_the_path_and_no_gh_token_is_kept() {
        let work = Path::new("/w/town-a/agents/agent-1");
        let with_bin = TownFiles {
            bin: Some("/w/town-a/bin".into()),
            ..files()
        };
        let mut b = body();
        b.env.insert(GH_TOKEN_ENV.into(), "ghs_stale".into());
        b.env.insert("GITHUB_TOKEN".into(), "ghs_stale".into());
        b.env.insert("GITHUB_CLI_PAT".into(), "ghp_pat".into());
        b.env.insert("KILO_JWT".into(), "gw.stale.copy".into());
        b.env
            .insert("GASTOWN_CONTAINER_TOKEN".into(), "ct.stale.copy".into());
        let env = agent_env(&b, "http://w", &with_bin, work, Some("/usr/bin")).unwrap();
        assert!(
            !env.contains_key("KILO_JWT") && !env.contains_key("GASTOWN_CONTAINER_TOKEN"),
            "read from their files, never copied"
        );
        assert_eq!(
            env["PATH"], "/w/town-a/bin:/town/bin",
            "before the body's PATH"
        );
        assert!(!env.contains_key(GH_TOKEN_ENV) && !env.contains_key("GITHUB_TOKEN"));
        assert_eq!(env["GITHUB_CLI_PAT"], "ghp_pat", "the shim reads it");
        b.env.remove("PATH");
        let env = agent_env(&b, "http://w", &with_bin, work, Some("/usr/bin")).unwrap();
        assert_eq!(env["PATH"], "/w/town-a/bin:/usr/bin");
        let env = agent_env(&b, "http://w", &with_bin, work, None).unwrap();
        assert_eq!(env["PATH"], "/w/town-a/bin");
        // Without a shim, the PATH is as it was; with a bin no PATH can hold, too.
        let env = agent_env(&b, "http://w", &files(), work, Some("/usr/bin")).unwrap();
        assert_eq!(env["PATH"], "/usr/bin");
        let odd = TownFiles {
            bin: Some("/w:x/town-a/bin".into()),
            ..files()
        };
        let env = agent_env(&b, "http://w", &odd, work, Some("/usr/bin")).unwrap();
        assert_eq!(env["PATH"], "/usr/bin");
    }

    #[test]
    fn an_org_towns_agent_gets_its_org_in_the_env_and_the_kilo_config() {
        let work = Path::new("/w/town-a/agents/agent-1");
        let personal = agent_env(&body(), "http://w", &files(), work, None).unwrap();
        assert!(!personal.contains_key(ORGANIZATION_ID_ENV));
        assert!(!personal.contains_key(KILO_CONFIG_CONTENT_ENV));

        let mut b = body();
        b.organization_id = Some(gastown_core::ids::OrgId::parse("org-7").unwrap());
        let env = agent_env(&b, "http://w", &files(), work, None).unwrap();
        assert_eq!(env[ORGANIZATION_ID_ENV], "org-7");
        let kilo: Value = serde_json::from_str(&env[KILO_CONFIG_CONTENT_ENV]).unwrap();
        assert_eq!(
            kilo,
            json!({ "provider": { "kilo": { "options": { "kilocodeOrganizationId": "org-7" } } } })
        );

        // Merged into the body's own config; the org id of the start wins.
        b.env.insert(
            KILO_CONFIG_CONTENT_ENV.into(),
            json!({
                "model": "kilo/auto",
                "provider": { "kilo": { "options": { "baseURL": "http://gw", "kilocodeOrganizationId": "old" } }, "other": {} },
            })
            .to_string(),
        );
        let env = agent_env(&b, "http://w", &files(), work, None).unwrap();
        let kilo: Value = serde_json::from_str(&env[KILO_CONFIG_CONTENT_ENV]).unwrap();
        assert_eq!(
            kilo,
            json!({
                "model": "kilo/auto",
                "provider": { "kilo": { "options": { "baseURL": "http://gw", "kilocodeOrganizationId": "org-7" } }, "other": {} },
            })
        );
        // A config that cannot hold it is refused, naming the variable only.
        for bad in [
            "not json",
            "[1]",
            r#"{"provider": "secret-ish"}"#,
            r#"{"provider": {"kilo": {"options": 3}}}"#,
        ] {
            b.env.insert(KILO_CONFIG_CONTENT_ENV.into(), bad.into());
            let e = agent_env(&b, "http://w", &files(), work, None).unwrap_err();
            assert!(e.contains(KILO_CONFIG_CONTENT_ENV), "{e}");
            assert!(!e.contains("secret-ish"), "{e}");
        }
        // A personal town's config is left as the body gave it, whatever it is.
        b.organization_id = None;
        let env = agent_env(&b, "http://w", &files(), work, None).unwrap();
        assert_eq!(
            env[KILO_CONFIG_CONTENT_ENV],
            r#"{"provider": {"kilo": {"options": 3}}}"#
        );
    }

    #[test]
    fn bad_env_names_and_nul_values_are_refused_by_name() {
        let work = Path::new("/w");
        for name in ["", "1A", "A-B", "A B", "A=B", "É"] {
            let mut b = body();
            b.env.insert(name.into(), "v".into());
            assert!(
                agent_env(&b, "http://w", &files(), work, None).is_err(),
                "{name:?}"
            );
        }
        let mut b = body();
        b.env.insert("SECRET".into(), "a\0b".into());
        let e = agent_env(&b, "http://w", &files(), work, None).unwrap_err();
        assert!(e.contains("SECRET") && !e.contains("a\0b"), "{e}");
        let mut b = body();
        b.bead.as_mut().unwrap().body = "x\0".into();
        assert!(agent_env(&b, "http://w", &files(), work, None).is_err());
        for ok in ["A", "_", "a_1", "PATH"] {
            assert!(is_env_name(ok), "{ok}");
        }
    }

    #[test]
    fn agent_ids_name_one_directory() {
        for ok in ["a", "agent-1", "A_b", &"x".repeat(MAX_AGENT_ID_LEN)] {
            assert!(check_agent_id(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(MAX_AGENT_ID_LEN + 1);
        for bad in [
            "", ".", "..", "a/b", "a\\b", ".a", "a.b", "a b", "a%2F", "settings", "é", &long,
        ] {
            assert!(check_agent_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_agent_command_is_split_on_whitespace() {
        assert_eq!(
            AgentCommand::parse(" /bin/sh  /x/agent.sh -v ").unwrap(),
            AgentCommand {
                program: "/bin/sh".into(),
                args: vec!["/x/agent.sh".into(), "-v".into()],
            }
        );
        assert!(AgentCommand::parse("  ").is_err());
        assert_eq!(
            AgentCommand::beside(Path::new("/opt/bin/gastown-control"))
                .unwrap()
                .program,
            PathBuf::from("/opt/bin/gastown-demo-agent")
        );
    }
}

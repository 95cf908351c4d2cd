//! `gastown-control kilo-agent --kilo PATH`: the Kilo CLI as an agent runtime. The control
//! server runs it as the agent command (`--agent-command "gastown-control kilo-agent --kilo
//! /path/to/kilo"`), so it is an agent process like any other: started with the agent's env,
//! as the agent user, in the agent's work dir, stopped with it, its exit watched. For one bead
//! it
//!
//! 1. heartbeats at once, then every `GASTOWN_HEARTBEAT_MS` (default 5000) while it lives and
//!    the run shows signs of life: a step of its own (the clone, the CLI listening, the prompt)
//!    or an event of the session within the last [`QUIET_LIMIT`]. A CLI that has gone quiet for
//!    longer gets no heartbeat, so patrol stalls its bead as it would a silent agent's;
//! 2. clones `GASTOWN_GIT_URL` into `<work dir>/repo` (git's credential helper is the town's,
//!    through `GIT_CONFIG_GLOBAL`: no token in the remote) and checks out `GASTOWN_BRANCH`,
//!    continued from `origin/<branch>` when the remote has it (a pull request's feedback
//!    round), else from `origin/<GASTOWN_DEFAULT_BRANCH>` (an orphan branch in an empty
//!    repository);
//! 3. starts `kilo serve` on a free loopback port in the clone, offline ([`OFFLINE_ENV`]), its
//!    data under `<work dir>/.kilo` (outside the clone), its HTTP API behind a password made
//!    for this run, its model provider the Kilo gateway: an OpenAI-compatible provider whose
//!    base URL is this run's gateway relay ([`crate::relay`]), which passes each model call on
//!    to `KILO_GATEWAY_URL/api/gateway` with the town's gateway token of that moment (read
//!    from `GASTOWN_GATEWAY_ENV_FILE` on every call, so a refresh reaches the next call; the
//!    CLI holds only the relay's key), the model `GASTOWN_MODEL`;
//! 4. opens a session, writes where it is to `<work dir>/.kilo-session.json` (mode 0600: port,
//!    password, session id) for the control server's `POST /agents/:id/message`, and sends the
//!    role's prompt ([`PROMPT_POLECAT`], a file of the repository) with the bead;
//! 5. reads the session's events until it is idle and has stayed idle [`LINGER`] (a message
//!    sent meanwhile makes it busy again), posting the CLI's errors as statuses;
//! 6. stops the CLI and exits 0; 1 when the CLI failed or ended on its own, 2 for bad settings.
//!
//! The agent reports its own work with `gt` (`gt done` closes the bead), so the runtime says
//! nothing of the bead's outcome.

use crate::callbacks::Callbacks;
use crate::cli::Args;
use base64::Engine;
use gastown_core::control::{GATEWAY_ENV_FILE, ORGANIZATION_ID_ENV};
use gastown_core::mayor::{MAYOR_MEMORY_ENV, MAYOR_PROMPT_ENV};
use gastown_core::vocab::Role;
use serde_json::{json, Value};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The subcommand.
pub const KILO_AGENT_SUBCOMMAND: &str = "kilo-agent";
/// The polecat's prompt: the bead's instructions, versioned with the code.
pub const PROMPT_POLECAT: &str = include_str!("../prompts/polecat.md");
/// The mayor's prompt: its tools and how it answers.
pub const PROMPT_MAYOR: &str = include_str!("../prompts/mayor.md");
/// How long a mayor's session waits for the next message before it ends (the next message
/// then starts another, resuming the conversation from the town's transcript).
const MAYOR_LINGER: Duration = Duration::from_secs(30 * 60);
/// How long the session may stay idle before the runtime ends it (a message in between makes it
/// busy again).
const LINGER: Duration = Duration::from_secs(10);
/// How long `kilo serve` may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest a session may run (a stalled one is ended by patrol long before).
const SESSION_LIMIT: Duration = Duration::from_secs(6 * 60 * 60);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the session may show no event before the runtime stops heartbeating for it (a
/// shell command that prints nothing for this long looks the same as a wedged CLI).
pub const QUIET_LIMIT: Duration = Duration::from_secs(15 * 60);

/// When the run last showed a sign of life, in ms since it started.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    /// What the session does ([`Phase`]), as the mayor's heartbeats say it.
    phase: Arc<AtomicU8>,
}

/// A session's phase: before its first prompt, answering, or waiting for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting = 0,
    Working = 1,
    Waiting = 2,
}

impl Phase {
    /// As the mayor's `POST …/tools/state` names it.
    fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Working => "working",
            Phase::Waiting => "waiting",
        }
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            phase: Arc::new(AtomicU8::new(Phase::Starting as u8)),
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Working,
            _ => Phase::Waiting,
        }
    }

    fn seen(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last sign of life.
    fn quiet_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}
/// The file the session's whereabouts go to, in the work dir.
pub const SESSION_FILE: &str = ".kilo-session.json";
/// The provider id of the gateway in the CLI's config.
const PROVIDER: &str = "gateway";
/// The CLI's env variable holding the gateway relay's key (its provider's API key).
const RELAY_KEY_ENV: &str = "GASTOWN_KILO_RELAY_KEY";

/// The switches that keep the CLI from the network (model catalogue, telemetry, updates,
/// sharing, plugins, LSP downloads) and from any configuration but ours.
pub const OFFLINE_ENV: &[(&str, &str)] = &[
    ("KILO_DISABLE_MODELS_FETCH", "1"),
    ("KILO_TELEMETRY_LEVEL", "off"),
    ("KILO_DISABLE_AUTOUPDATE", "1"),
    ("KILO_DISABLE_SHARE", "1"),
    ("KILO_DISABLE_SESSION_INGEST", "1"),
    ("KILO_DISABLE_LSP_DOWNLOAD", "1"),
    ("KILO_DISABLE_DEFAULT_PLUGINS", "1"),
    ("KILO_NO_DAEMON", "1"),
    ("KILO_DISABLE_PRESENCE", "1"),
    ("KILO_DISABLE_CLAUDE_CODE", "1"),
    ("KILO_DISABLE_EXTERNAL_SKILLS", "1"),
    ("KILO_DISABLE_PROJECT_CONFIG", "1"),
];

const EXIT_FAILED: i32 = 1;
const EXIT_REFUSED: i32 = 2;

fn say(line: &str) {
    eprintln!("gastown-kilo: {line}");
}

/// An event of the session for the town's live view (the control server forwards the agent's
/// log lines, and reads this prefix as the event's kind): `gastown-kilo: event <kind> <text>`.
fn tell(kind: &str, text: &str) {
    say(&format!("event {kind} {text}"));
}

/// A milestone of the run, for reading the agent's log (and `npm run bench`):
/// `gastown-kilo: mark <name> <ms since the Unix epoch>`. The names: `started`, `cloned`,
/// `cli-listening`, `prompt-sent`, `idle-end`.
fn mark(name: &str) {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    say(&format!("mark {name} {ms}"));
}

/// Runs the runtime with the process's environment; the exit code.
pub fn cli_main(args: &[String]) -> i32 {
    let mut kilo = None;
    let mut it = Args::new(args);
    while let Some(arg) = it.next() {
        match arg {
            "--kilo" => match it.value(arg) {
                Ok(v) => kilo = Some(PathBuf::from(v)),
                Err(e) => {
                    say(&e);
                    return EXIT_REFUSED;
                }
            },
            other => {
                say(&format!("unexpected argument {other:?}"));
                return EXIT_REFUSED;
            }
        }
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(kilo) = kilo.or_else(|| env("GASTOWN_KILO_PATH").map(PathBuf::from)) else {
        say("no Kilo CLI: give --kilo PATH");
        return EXIT_REFUSED;
    };
    let worker = match Reporter::from_env(&env) {
        Ok(w) => w,
        Err(e) => {
            say(&e);
            return EXIT_REFUSED;
        }
    };
    mark("started");
    let activity = Activity::new();
    worker.heartbeat(activity.phase());
    let beats = heartbeats(&env, activity.clone());
    let outcome = Session::from_env(&env, kilo).and_then(|s| s.run(&worker, &activity));
    drop(beats);
    // A mayor's session ends: its key is worthless from now on, and the next message starts
    // another.
    worker.state("idle");
    match outcome {
        Ok(()) => 0,
        Err((code, message)) => {
            say(&message);
            worker.status(&message);
            code
        }
    }
}

/// Whom the runtime reports to: a polecat's (or refinery's) callbacks, or the mayor's tools.
enum Reporter {
    Agent(Callbacks),
    Mayor(crate::mayor_tools::MayorTools),
}

impl Reporter {
    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Reporter, String> {
        if env(crate::agents::AGENT_ROLE_ENV).as_deref() == Some(Role::Mayor.as_str()) {
            crate::mayor_tools::MayorTools::from_env(env).map(Reporter::Mayor)
        } else {
            Callbacks::from_env(env, "gastown-kilo").map(Reporter::Agent)
        }
    }

    /// A line for the bead's log (the mayor has no bead: its log only).
    fn status(&self, message: &str) {
        match self {
            Reporter::Agent(c) => {
                let _ = c.status(message);
            }
            Reporter::Mayor(_) => say(message),
        }
    }

    /// The agent lives. The mayor's session says so by saying what it does (a waiting mayor
    /// sends nothing: it keeps nothing awake).
    fn heartbeat(&self, phase: Phase) {
        match self {
            Reporter::Agent(c) => {
                let _ = c.call("heartbeat", "{}");
            }
            Reporter::Mayor(_) => self.state(phase.name()),
        }
    }

    /// What the mayor's session does now: `starting`, `working`, `waiting` or `idle` (nothing for others).
    fn state(&self, status: &str) {
        if let Reporter::Mayor(tools) = self {
            if let Err(e) = tools.post_state(status) {
                say(&format!("the mayor's state {status} was not taken: {e}"));
            }
        }
    }

    fn is_mayor(&self) -> bool {
        matches!(self, Reporter::Mayor(_))
    }
}

type Failure = (i32, String);

fn refused(message: impl Into<String>) -> Failure {
    (EXIT_REFUSED, message.into())
}

fn failed(message: impl Into<String>) -> Failure {
    (EXIT_FAILED, message.into())
}

/// A heartbeat every interval until dropped, while the run has not been quiet past
/// [`QUIET_LIMIT`].
fn heartbeats(env: &dyn Fn(&str) -> Option<String>, activity: Activity) -> mpsc::Sender<()> {
    let every = env("GASTOWN_HEARTBEAT_MS")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_HEARTBEAT, |ms| Duration::from_millis(ms.max(10)));
    let (stop, stopped) = mpsc::channel::<()>();
    let session = Reporter::from_env(env);
    std::thread::spawn(move || {
        let Ok(worker) = session else { return };
        let mut said = false;
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
            if worker.is_mayor() && activity.phase() == Phase::Waiting {
                continue;
            }
            if activity.quiet_for() <= QUIET_LIMIT {
                said = false;
                worker.heartbeat(activity.phase());
            } else if !said {
                said = true;
                say("the session has been quiet too long: no heartbeat until it shows life");
            }
        }
    });
    stop
}

/// What the session is for.
enum Mode {
    /// One bead, in a clone of its rig.
    Bead {
        git_url: String,
        default_branch: String,
        branch: String,
        bead: String,
        title: String,
        body: String,
        rig: String,
    },
    /// The mayor's conversation: no clone; the first prompt is the worker's (the conversation
    /// so far and the new messages), and the session waits for more until it has been idle
    /// for `linger`.
    Mayor {
        prompt: String,
        memory: Option<String>,
        linger: Duration,
    },
}

/// One session, from the agent's env.
struct Session {
    kilo: PathBuf,
    work_dir: PathBuf,
    mode: Mode,
    model: String,
    gateway_url: String,
    /// The town's gateway env file, read by the relay on every model call.
    gateway_file: PathBuf,
    organization: Option<String>,
}

impl Session {
    fn from_env(env: &dyn Fn(&str) -> Option<String>, kilo: PathBuf) -> Result<Session, Failure> {
        let need = |name: &str| env(name).ok_or_else(|| refused(format!("{name} is not set")));
        let gateway_file = PathBuf::from(need("GASTOWN_GATEWAY_ENV_FILE")?);
        if crate::relay::current_token(&gateway_file).is_none() {
            return Err(refused(format!("no gateway token in {GATEWAY_ENV_FILE}")));
        }
        let gateway_url = crate::client::origin(&need("KILO_GATEWAY_URL")?)
            .map_err(|e| refused(format!("KILO_GATEWAY_URL {e}")))?;
        let mode = if env(crate::agents::AGENT_ROLE_ENV).as_deref() == Some(Role::Mayor.as_str()) {
            Mode::Mayor {
                prompt: need(MAYOR_PROMPT_ENV)?,
                memory: env(MAYOR_MEMORY_ENV),
                linger: env("GASTOWN_MAYOR_LINGER_MS")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(MAYOR_LINGER, Duration::from_millis),
            }
        } else {
            Mode::Bead {
                git_url: need("GASTOWN_GIT_URL")?,
                default_branch: env("GASTOWN_DEFAULT_BRANCH").unwrap_or_else(|| "main".to_owned()),
                branch: need("GASTOWN_BRANCH")?,
                bead: need("GASTOWN_BEAD_ID")?,
                title: env("GASTOWN_BEAD_TITLE").unwrap_or_default(),
                body: env("GASTOWN_BEAD_BODY").unwrap_or_default(),
                rig: need("GASTOWN_RIG_ID")?,
            }
        };
        Ok(Session {
            kilo,
            work_dir: PathBuf::from(need("GASTOWN_WORK_DIR")?),
            mode,
            model: env("GASTOWN_MODEL").unwrap_or_else(|| "kilo/auto".to_owned()),
            gateway_url,
            gateway_file,
            organization: env(ORGANIZATION_ID_ENV),
        })
    }

    fn run(&self, worker: &Reporter, activity: &Activity) -> Result<(), Failure> {
        let repo = match &self.mode {
            Mode::Bead {
                git_url,
                default_branch,
                branch,
                ..
            } => {
                let repo = self.work_dir.join("repo");
                worker.status(&format!("cloning {git_url}"));
                self.checkout(&repo, git_url, default_branch, branch)?;
                mark("cloned");
                repo
            }
            Mode::Mayor { .. } => {
                let town = self.work_dir.join("town");
                fs::create_dir_all(&town)
                    .map_err(|e| failed(format!("cannot make the mayor's directory: {e}")))?;
                town
            }
        };
        activity.seen();
        let relay = crate::relay::start(
            self.gateway_url.clone(),
            self.gateway_file.clone(),
            self.organization.clone(),
            &random_hex()?,
        )
        .map_err(failed)?;
        let password = random_hex()?;
        let port = free_port()?;
        let mut kilo = self.spawn(&repo, &relay, port, &password)?;
        let result = self.drive(worker, &mut kilo, port, &password, activity);
        let _ = kilo.kill();
        let _ = kilo.wait();
        let _ = fs::remove_file(self.work_dir.join(SESSION_FILE));
        result
    }

    fn checkout(
        &self,
        repo: &Path,
        git_url: &str,
        default_branch: &str,
        branch: &str,
    ) -> Result<(), Failure> {
        let repo_arg = repo.to_string_lossy().into_owned();
        git(
            &self.work_dir,
            &["clone", "--quiet", "--", git_url, &repo_arg],
        )?;
        // A branch already on the remote (a pull request's, in a feedback round) is continued.
        let continued = format!("origin/{branch}");
        let base = format!("origin/{default_branch}");
        if git(repo, &["rev-parse", "--verify", "--quiet", &continued]).is_ok() {
            git(repo, &["checkout", "--quiet", "-b", branch, &continued])
        } else if git(repo, &["rev-parse", "--verify", "--quiet", &base]).is_ok() {
            git(repo, &["checkout", "--quiet", "-b", branch, &base])
        } else {
            git(repo, &["checkout", "--quiet", "--orphan", branch])
        }
    }

    /// The CLI's config: the gateway (through the relay on `relay_port`) as its only provider,
    /// everything allowed in the clone.
    fn config(&self, relay_port: u16) -> Value {
        json!({
            "model": format!("{PROVIDER}/{}", self.model),
            "small_model": format!("{PROVIDER}/{}", self.model),
            "enabled_providers": [PROVIDER],
            "autoupdate": false,
            "share": "disabled",
            "snapshot": false,
            "permission": { "*": "allow", "question": "deny" },
            "provider": {
                PROVIDER: {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "Kilo gateway",
                    "options": {
                        "baseURL": format!("http://127.0.0.1:{relay_port}/api/gateway"),
                        "apiKey": format!("{{env:{RELAY_KEY_ENV}}}"),
                    },
                    "models": { self.model.clone(): { "name": self.model, "tool_call": true } },
                },
            },
        })
    }

    fn spawn(
        &self,
        repo: &Path,
        relay: &crate::relay::Relay,
        port: u16,
        password: &str,
    ) -> Result<Child, Failure> {
        let home = self.work_dir.join(".kilo");
        for dir in ["config", "data", "cache", "state"] {
            fs::create_dir_all(home.join(dir))
                .map_err(|e| failed(format!("cannot make the CLI's directories: {e}")))?;
        }
        let mut cmd = Command::new(&self.kilo);
        cmd.args([
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .current_dir(repo)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("KILO_SERVER_PASSWORD", password)
        .env(RELAY_KEY_ENV, &relay.key)
        .env("KILO_CONFIG_CONTENT", self.config(relay.port).to_string())
        .env_remove(MAYOR_PROMPT_ENV)
        .env_remove(MAYOR_MEMORY_ENV)
        .envs(OFFLINE_ENV.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        cmd.spawn()
            .map_err(|e| refused(format!("cannot start {}: {e}", self.kilo.display())))
    }

    fn drive(
        &self,
        worker: &Reporter,
        kilo: &mut Child,
        port: u16,
        password: &str,
        activity: &Activity,
    ) -> Result<(), Failure> {
        wait_listening(kilo)?;
        mark("cli-listening");
        activity.seen();
        let api = Api::new(port, password);
        let events = api.events()?;
        let title = match &self.mode {
            Mode::Bead { bead, .. } => format!("bead {bead}"),
            Mode::Mayor { .. } => "mayor".to_owned(),
        };
        let session = api
            .post("/session", &json!({ "title": title }))?
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| failed("the CLI made no session"))?;
        let system = self.system_prompt();
        // Further messages (`POST /agents/:id/message`) carry the same system prompt.
        let whereabouts = json!({
            "port": port, "password": password, "session": session, "system": system,
        });
        write_private(&self.work_dir.join(SESSION_FILE), &whereabouts.to_string())
            .map_err(|e| failed(format!("cannot write the session file: {e}")))?;
        if let Mode::Mayor {
            memory: Some(memory),
            ..
        } = &self.mode
        {
            // Remembered, not answered: the model answers only what is new.
            let remember = json!({
                "noReply": true,
                "system": system,
                "parts": [{ "type": "text", "text": memory }],
                "model": { "providerID": PROVIDER, "modelID": self.model },
            });
            api.post(&format!("/session/{session}/message"), &remember)?;
        }
        let prompt = json!({
            "system": system,
            "parts": [{ "type": "text", "text": self.first_message() }],
            "model": { "providerID": PROVIDER, "modelID": self.model },
        });
        api.post_no_content(&format!("/session/{session}/prompt_async"), &prompt)?;
        mark("prompt-sent");
        // From now on the session takes further messages.
        activity.set_phase(Phase::Working);
        worker.state(Phase::Working.name());
        let linger = match &self.mode {
            Mode::Bead { .. } => {
                worker.status("the Kilo CLI is working on the bead");
                LINGER
            }
            Mode::Mayor { linger, .. } => *linger,
        };
        watch(worker, kilo, &events, &session, activity, linger)
    }

    fn system_prompt(&self) -> &'static str {
        match &self.mode {
            Mode::Bead { .. } => PROMPT_POLECAT,
            Mode::Mayor { .. } => PROMPT_MAYOR,
        }
    }

    fn first_message(&self) -> String {
        match &self.mode {
            Mode::Bead {
                branch,
                bead,
                title,
                body,
                rig,
                ..
            } => format!("Bead: {bead}\nTitle: {title}\nRig: {rig}\nBranch: {branch}\n\n{body}\n"),
            Mode::Mayor { prompt, .. } => prompt.clone(),
        }
    }
}

/// Reads events until the session has been idle for [`LINGER`]; a failure when the CLI exits
/// or the session errs.
fn watch(
    worker: &Reporter,
    kilo: &mut Child,
    events: &mpsc::Receiver<Value>,
    session: &str,
    activity: &Activity,
    linger: Duration,
) -> Result<(), Failure> {
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    let mut busy_seen = false;
    // Tool calls already told, by part and state: each state once.
    let mut told: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    loop {
        if let Ok(Some(status)) = kilo.try_wait() {
            return Err(failed(format!("the Kilo CLI ended on its own ({status})")));
        }
        if started.elapsed() > SESSION_LIMIT {
            return Err(failed("the session ran past its limit"));
        }
        if let Some(since) = idle_since {
            if since.elapsed() >= linger {
                mark("idle-end");
                return Ok(());
            }
        }
        let Ok(event) = events.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let kind = event["type"].as_str().unwrap_or_default();
        let props = &event["properties"];
        match props["sessionID"].as_str() {
            Some(s) if s == session => activity.seen(),
            // The server's own (a heartbeat of the stream, say) are no sign of the session's life.
            None => {}
            Some(_) => continue,
        }
        let idle = |idle_since: &mut Option<Instant>| {
            if idle_since.is_none() {
                *idle_since = Some(Instant::now());
                activity.set_phase(Phase::Waiting);
                worker.state(Phase::Waiting.name());
                tell("session", "idle");
            }
        };
        match kind {
            "session.idle" if busy_seen => idle(&mut idle_since),
            "session.status" => match props["status"]["type"].as_str() {
                Some("busy" | "retry") => {
                    busy_seen = true;
                    if idle_since.take().is_some() {
                        activity.set_phase(Phase::Working);
                        worker.state(Phase::Working.name());
                        tell("session", "busy");
                    }
                }
                Some("idle") if busy_seen => idle(&mut idle_since),
                _ => {}
            },
            "session.error" => {
                let name = props["error"]["name"].as_str().unwrap_or("error");
                worker.status(&format!("the Kilo CLI reported {name}"));
            }
            "message.part.updated" if props["part"]["type"] == "tool" => {
                let part = &props["part"];
                let (id, tool) = (part["id"].as_str(), part["tool"].as_str());
                let state = part["state"]["status"].as_str();
                if let (Some(id), Some(tool), Some(state)) = (id, tool, state) {
                    if told.insert((id.to_owned(), state.to_owned())) {
                        tell("tool", &format!("{tool}: {state}"));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Waits for `kilo serve` to say it listens.
fn wait_listening(kilo: &mut Child) -> Result<(), Failure> {
    let stdout = kilo
        .stdout
        .take()
        .ok_or_else(|| failed("the CLI's output is not readable"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(START_TIMEOUT)
        .map_err(|_| failed("the Kilo CLI did not start listening"))
}

/// The CLI's HTTP API on loopback, with this run's password.
struct Api {
    base: String,
    auth: String,
    http: ureq::Agent,
}

impl Api {
    fn new(port: u16, password: &str) -> Api {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("kilo:{password}"));
        Api {
            base: format!("http://127.0.0.1:{port}"),
            auth: format!("Basic {basic}"),
            http: crate::client::agent_with(Duration::from_secs(60)),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let mut response = self
            .http
            .post(&format!("{}{path}", self.base))
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .send(body.to_string())
            .map_err(|e| failed(format!("the Kilo CLI was not reached: {e}")))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(failed(format!("the Kilo CLI answered {status} to {path}")));
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn post_no_content(&self, path: &str, body: &Value) -> Result<(), Failure> {
        self.post(path, body).map(|_| ())
    }

    /// The event stream, one JSON value per `data:` line, read by a thread of its own.
    fn events(&self) -> Result<mpsc::Receiver<Value>, Failure> {
        let streaming = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build();
        let response = ureq::Agent::from(streaming)
            .get(&format!("{}/event", self.base))
            .header("authorization", &self.auth)
            .call()
            .map_err(|e| failed(format!("no event stream from the Kilo CLI: {e}")))?;
        if response.status().as_u16() != 200 {
            return Err(failed("the Kilo CLI refused its event stream"));
        }
        let (tx, rx) = mpsc::channel();
        let reader = response.into_body().into_reader();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if let Some(data) = line.strip_prefix("data:") {
                    if let Ok(event) = serde_json::from_str::<Value>(data.trim()) {
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// `POST /agents/:id/message` `{townId, text}`: a further message to the agent's running Kilo
/// session (found through its [`SESSION_FILE`]); 409 when the agent has no session now.
pub(crate) fn message(
    shared: &crate::state::Shared,
    town: &str,
    id: &str,
    body: &[u8],
) -> Result<crate::http::Reply, crate::http::Reply> {
    use crate::http::error;
    #[derive(serde::Deserialize)]
    struct Message {
        #[serde(rename = "townId")]
        town_id: String,
        text: String,
    }
    let req: Message = crate::routes::parse(body)?;
    crate::routes::same_town(&req.town_id, town)?;
    crate::agents::check_agent_id(id).map_err(|e| error(400, &e))?;
    if req.text.trim().is_empty() {
        return Err(error(400, "text must not be empty"));
    }
    let file = shared
        .town_dir(town)?
        .join(crate::agents::AGENTS_DIR)
        .join(id)
        .join(SESSION_FILE);
    let found: Value = fs::read_to_string(&file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| error(409, "the agent has no running session"))?;
    let (Some(port), Some(password), Some(session)) = (
        found["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
        found["password"].as_str(),
        found["session"].as_str(),
    ) else {
        return Err(error(409, "the agent has no running session"));
    };
    let api = Api::new(port, password);
    let mut prompt = json!({ "parts": [{ "type": "text", "text": req.text }] });
    if let Some(system) = found["system"].as_str() {
        prompt["system"] = json!(system);
    }
    api.post_no_content(&format!("/session/{session}/prompt_async"), &prompt)
        .map_err(|(_, e)| {
            eprintln!("gastown-control: message to agent {id} of town {town}: {e}");
            error(502, "the agent's session did not take the message")
        })?;
    Ok((202, json!({ "delivered": true })))
}

/// Runs git without a prompt; git's last line of error on failure.
fn git(dir: &Path, args: &[&str]) -> Result<(), Failure> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run git: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    Err(failed(format!("git {} failed: {last}", args[0])))
}

/// A free loopback port (taken by the CLI right after; a race only with this container).
fn free_port() -> Result<u16, Failure> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed(format!("no free port: {e}")))
}

/// 32 hex characters from the system's randomness.
fn random_hex() -> Result<String, Failure> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| failed(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path`, readable by this user only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            kilo: PathBuf::from("/k"),
            work_dir: PathBuf::from("/w"),
            mode: Mode::Bead {
                git_url: "https://h/o/r.git".into(),
                default_branch: "main".into(),
                branch: "gastown/toast/b1".into(),
                bead: "b1".into(),
                title: "Add a greeting".into(),
                body: "Say hello.".into(),
                rig: "r1".into(),
            },
            model: "kilo/auto".into(),
            gateway_url: "http://127.0.0.1:9".into(),
            gateway_file: PathBuf::from("/w/.env.gateway"),
            organization: Some("org-1".into()),
        }
    }

    #[test]
    fn the_config_points_the_cli_at_the_gateway_and_holds_no_token() {
        let config = session().config(4321);
        assert_eq!(config["model"], "gateway/kilo/auto");
        assert_eq!(config["enabled_providers"], json!(["gateway"]));
        let options = &config["provider"]["gateway"]["options"];
        assert_eq!(options["baseURL"], "http://127.0.0.1:4321/api/gateway");
        assert_eq!(options["apiKey"], "{env:GASTOWN_KILO_RELAY_KEY}");
        assert!(
            !config.to_string().contains("127.0.0.1:9"),
            "the CLI never calls the gateway itself"
        );
    }

    #[test]
    fn the_first_message_names_the_bead_and_the_branch() {
        let text = session().first_message();
        for line in [
            "Bead: b1",
            "Title: Add a greeting",
            "Branch: gastown/toast/b1",
            "Say hello.",
        ] {
            assert!(text.contains(line), "{text}");
        }
        assert!(PROMPT_POLECAT.contains("gt done"));
        assert_eq!(session().system_prompt(), PROMPT_POLECAT);
    }

    #[test]
    fn a_mayor_session_starts_from_the_worker_prompt_with_the_mayor_prompt() {
        let mut mayor = session();
        mayor.mode = Mode::Mayor {
            prompt: "[t user u]\nhello".into(),
            memory: None,
            linger: MAYOR_LINGER,
        };
        assert_eq!(mayor.first_message(), "[t user u]\nhello");
        assert_eq!(mayor.system_prompt(), PROMPT_MAYOR);
        for tool in ["gt reply", "gt sling-batch", "gt ack", "depends_on"] {
            assert!(PROMPT_MAYOR.contains(tool), "{tool}");
        }
    }

    #[test]
    fn activity_measures_the_quiet_since_the_last_sign_of_life() {
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(activity.quiet_for() >= Duration::from_millis(30));
        activity.seen();
        assert!(activity.quiet_for() < Duration::from_millis(30));
        let copy = activity.clone();
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            copy.quiet_for() >= Duration::from_millis(30),
            "one clock for every copy"
        );
        copy.seen();
        assert!(activity.quiet_for() < Duration::from_millis(30));
    }
}

//! The control server's life: which binary runs ([`Build`]), everything it runs with
//! ([`Config`]), its start ([`cli_main`]: the credential taken out of the environment first,
//! then the options, the agent user's checks, the work directory, the listener), its accept
//! loop ([`serve`], with the gateway token's self-refresh beside it) and its end: on `SIGTERM`
//! the eviction drain (`crate::drain`), then exit 0. `cli_main` hands the
//! `git-credential` and `git-token` subcommands to [`crate::git_credential`], and `gh` to
//! [`crate::gh`], before it touches the credential.

use crate::agent_user::{self, AgentUser};
use crate::agents::{self, AgentCommand};
use crate::auth::Auth;
use crate::cli;
use crate::drain;
use crate::gh;
use crate::git_credential;
use crate::gt;
use crate::http::{self, one_exchange, serve_each};
use crate::kilo;
use crate::options::{Options, USAGE};
use crate::routes;
use crate::self_refresh;
use crate::state::{Shared, State};
use crate::workdir;
use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which binary is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `gastown-control`: no debug routes.
    Production,
    /// `gastown-control-debug`: with the `/debug/...` routes.
    #[cfg(feature = "debug-routes")]
    Debug,
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
    /// `git-credential` subcommand) and each town's `gh` shim runs (its `gh` subcommand);
    /// `None` writes neither.
    pub credential_helper: Option<PathBuf>,
    /// The real GitHub CLI the `gh` shims run; `None`: the first `gh` on the agent's `PATH`
    /// past the shim's directory.
    pub gh_path: Option<PathBuf>,
    /// `--git-ca-file`, for the towns' gitconfig.
    pub git_ca_file: Option<PathBuf>,
    /// What each agent runs; `None` refuses every `/agents/start` (500).
    pub agent_command: Option<AgentCommand>,
    /// Whom the agents run as; `None`: the server's own user, as the server's files are laid
    /// out without one.
    pub agent_user: Option<AgentUser>,
    /// How long the agents get to exit on the server's `SIGTERM` before they are killed and
    /// their work saved (`crate::drain`).
    pub drain_grace: Duration,
}

/// The whole program: takes the credential out of the environment, parses the arguments,
/// listens and serves until killed. Returns the exit code on failure to start.
pub fn cli_main(build: Build) -> i32 {
    // gh's arguments are passed on as they are, even those that are not UTF-8.
    let args_os: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args_os.first().is_some_and(|a| a == workdir::GH_SUBCOMMAND) {
        return gh::cli_main(&args_os[1..]);
    }
    let args = cli::args();
    // `gt` runs in an agent's session, never with the server's credential.
    if args.first().is_some_and(|a| a == gt::GT_SUBCOMMAND) {
        return gt::cli_main(&args[1..]);
    }
    // The Kilo runtime is an agent process: it runs as the agent, never with the credential.
    if args
        .first()
        .is_some_and(|a| a == kilo::KILO_AGENT_SUBCOMMAND)
    {
        return kilo::cli_main(&args[1..]);
    }
    // The git credential helper runs as a child of an agent's git, never with the server's
    // credential, and must neither need it nor touch it.
    if let Some(sub) = args.first().map(String::as_str).filter(|a| {
        *a == workdir::GIT_CREDENTIAL_SUBCOMMAND || *a == git_credential::GIT_TOKEN_SUBCOMMAND
    }) {
        return git_credential::cli_main(sub, &args[1..]);
    }
    // First, while this is the only thread: nothing started later inherits the credential.
    let auth = Auth::take_from_env();
    let parse = |args: &[String]| Options::parse_with_env(args, |name| std::env::var(name).ok());
    let opts = match cli::read("gastown-control", USAGE, &args, parse) {
        Ok(o) => o,
        Err(code) => return code,
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
    let (listener, bound) = match http::listen("gastown-control", &opts.host, opts.port) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mode = match &auth {
        Auth::Town { town_id, .. } => format!("town {town_id}"),
        Auth::Key(_) => "every town (master key)".to_owned(),
    };
    // Tests read the address from this line.
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
    eprintln!(
        "gastown-control: on SIGTERM, agents get {} ms to exit before their work is saved",
        opts.drain_grace.as_millis()
    );
    match &opts.gh_path {
        Some(gh) => eprintln!("gastown-control: agents' gh runs {}", gh.display()),
        None => eprintln!("gastown-control: agents' gh runs the first gh on their PATH"),
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
        gh_path: opts.gh_path,
        git_ca_file: opts.git_ca_file,
        agent_command,
        agent_user: opts.agent_user,
        drain_grace: opts.drain_grace,
    };
    match serve(listener, config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gastown-control: {e}");
            1
        }
    }
}

/// Accepts connections until the listener fails, each served on its own thread; with a
/// worker URL, renews the towns' gateway tokens in the background; on `SIGTERM`, drains
/// (`crate::drain`: the agents stopped, their work saved and reported) and exits 0.
///
/// # Errors
/// When the self-refresh or the drain's thread cannot be started or the listener fails for
/// good.
pub fn serve(listener: TcpListener, config: Config) -> io::Result<()> {
    let shared = Arc::new(Shared {
        config,
        state: Mutex::new(State::default()),
        agents: agents::Registry::default(),
        draining: AtomicBool::new(false),
    });
    drain::start(&shared)?;
    self_refresh::start(&shared)?;
    let read_timeout = shared.config.read_timeout;
    serve_each(listener, "gastown-control", move |stream| {
        one_exchange(stream, read_timeout, |stream, deadline| {
            routes::request(stream, &shared, deadline)
        });
    })
}

//! `gastown-demo-agent`: a stand-in coding agent for local dev and tests, and the control
//! server's default agent command. It does around one bead what a real agent's session must
//! do, in the smallest way, with the environment [`gastown_control::agents`] gives it:
//!
//! 1. a heartbeat (`POST <worker><agent_callback_path(town, rig, agent, "heartbeat")>`, `{}`),
//!    then one every `GASTOWN_HEARTBEAT_MS` (default 5000) from a thread, until it exits;
//! 2. a status `cloning <url>`, then `git clone` of `GASTOWN_GIT_URL` into
//!    `<GASTOWN_WORK_DIR>/repo`;
//! 3. the branch `GASTOWN_BRANCH` (default `gastown/<agent name>/<bead id>`): continued from
//!    `origin/<branch>` when the remote has it (a pull request's feedback round), else from
//!    `origin/<GASTOWN_DEFAULT_BRANCH>` (default `main`), or an orphan branch in an empty
//!    repository;
//! 4. one commit adding `gastown/<bead id>.md` (the bead's title and body; empty when a run
//!    again on its continued branch finds it there already), author and
//!    committer `GASTOWN_GIT_AUTHOR_NAME` <`GASTOWN_GIT_AUTHOR_EMAIL`> (default
//!    `Gastown Agent <agent@gastown.invalid>`; the control server puts there the identity the
//!    session's git tokens carry), with a `Co-authored-by` trailer naming
//!    `GASTOWN_AI_AGENT_NAME` (default `Kilo`) unless `GASTOWN_DISABLE_AI_COAUTHOR` is `1` or
//!    `true`; pushed to `origin <branch>`;
//! 5. one model call to `POST <KILO_GATEWAY_URL>/api/gateway/chat/completions` with the
//!    gateway token of `GASTOWN_GATEWAY_ENV_FILE` (its `KILO_JWT=` line; env `KILO_JWT` when
//!    there is no file), model `GASTOWN_MODEL` (default `kilo/auto`), the bead's title as the
//!    user's message. Skipped without `KILO_GATEWAY_URL`; its outcome is a status either way
//!    and never fails the work;
//! 6. `done` ([`AgentDoneCallback`] naming the branch), and exit 0.
//!
//! Rules:
//!
//! * every call to the worker reads the container token afresh from
//!   `GASTOWN_CONTAINER_TOKEN_FILE` (whitespace trimmed; env `GASTOWN_CONTAINER_TOKEN` only
//!   while that file does not exist), so a `/refresh-token` reaches a running agent; it sends
//!   `authorization: Bearer <token>` and `content-type: application/json`, follows no
//!   redirect, and tries a failed call [`TRIES`] times;
//! * no token is printed, put in a URL or sent in a status: a failure shows a status code, a
//!   kind of failure or git's last line of error;
//! * git runs without a shell, never prompts (`GIT_TERMINAL_PROMPT=0`) and speaks only the
//!   protocols allowed (`GIT_ALLOW_PROTOCOL`): `https`, plus `http` and `file` (a `file://`
//!   URL or a local path) with `GASTOWN_ALLOW_LOCAL_GIT=1`. A URL with credentials in it is
//!   refused: over HTTPS git asks the credential helper that `GIT_CONFIG_GLOBAL` names;
//! * a failure before `done` is posted as a status (the reason, no secret) and the exit code
//!   is not 0: [`EXIT_FAILED`] (git, the worker), [`EXIT_REFUSED`] (missing or refused
//!   settings; also when the worker cannot be called at all, with nothing posted);
//! * directives in the bead's body, for tests: [`HANG_DIRECTIVE`] sends no heartbeat at all,
//!   sleeps [`HANG_TIME`] and exits 1 (a stalled agent); [`CRASH_DIRECTIVE`] prints a line and
//!   exits [`EXIT_CRASHED`] at once, with no callback; [`SLOW_DIRECTIVE`] leaves the bead's
//!   file written but uncommitted for [`SLOW_TIME`], heartbeating (what an eviction drain
//!   saves), unless the branch it continues has the file already (a resumed run). [`GH_DIRECTIVE`] and [`ORG_DIRECTIVE`]
//!   replace the work (no git, no model call) with probes of what a real agent's tools would
//!   see, each posted as one status, then `done`: [`GH_DIRECTIVE`] runs `gh auth token` once
//!   (the `gh` its `PATH` finds: the control server's shim, which sets `GH_TOKEN` for that
//!   run) and reports whether gh had a token and, if so, its [`fingerprint`] (8 hex digits of
//!   its SHA-256), never the token; [`ORG_DIRECTIVE`] reports the organization its Kilo config
//!   (`KILO_CONFIG_CONTENT`) and `GASTOWN_ORGANIZATION_ID` name.

use gastown_control::agents::{
    AGENT_NAME_ENV, BEAD_BODY_ENV, BEAD_ID_ENV, BEAD_TITLE_ENV, BRANCH_ENV, DEFAULT_BRANCH_ENV,
    GATEWAY_ENV_FILE_ENV, GIT_URL_ENV, MODEL_ENV, WORK_DIR_ENV,
};
use gastown_control::callbacks::Callbacks;
use gastown_control::workdir::is_plain_token;
use gastown_control::{cli, client};
use gastown_core::control::{
    AgentDoneCallback, ALLOW_LOCAL_GIT_ENV, CONTENT_TYPE_JSON, GATEWAY_CHAT_PATH,
    GATEWAY_TOKEN_ENV, KILO_CONFIG_CONTENT_ENV, ORGANIZATION_ID_ENV,
};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Milliseconds between heartbeats.
pub const HEARTBEAT_MS_ENV: &str = "GASTOWN_HEARTBEAT_MS";
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Shortest heartbeat interval taken from [`HEARTBEAT_MS_ENV`].
const MIN_HEARTBEAT_MS: u64 = 10;
/// The container token of the dispatch, used only while the token file does not exist.
pub use gastown_control::callbacks::{callback_text, CONTAINER_TOKEN_ENV, TRIES};
pub use gastown_core::control::{
    AI_AGENT_NAME_ENV, DISABLE_AI_COAUTHOR_ENV, GIT_AUTHOR_EMAIL_ENV, GIT_AUTHOR_NAME_ENV,
};
/// The Kilo gateway's origin.
pub const GATEWAY_URL_ENV: &str = "KILO_GATEWAY_URL";
pub use gastown_core::control::{
    DEFAULT_GIT_AUTHOR_EMAIL as DEFAULT_AUTHOR_EMAIL,
    DEFAULT_GIT_AUTHOR_NAME as DEFAULT_AUTHOR_NAME,
};
pub const DEFAULT_MODEL: &str = "kilo/auto";
pub const DEFAULT_BRANCH: &str = "main";
/// In a bead's body: behave as a stalled agent.
pub const HANG_DIRECTIVE: &str = "[demo:hang]";
/// In a bead's body: exit [`EXIT_CRASHED`] at once.
pub const CRASH_DIRECTIVE: &str = "[demo:crash]";
/// In a bead's body: run `gh auth token` once and post what gh had ([`gh_status`]), instead of
/// the work.
pub const GH_DIRECTIVE: &str = "[demo:gh]";
/// In a bead's body: post the organization the agent's config names ([`org_status`]), instead
/// of the work.
pub const ORG_DIRECTIVE: &str = "[demo:org]";
/// In a bead's body: write the bead's file, then work on it (heartbeating, uncommitted) for
/// [`SLOW_TIME`] before committing; a run resumed on a branch that has the file goes on at once.
pub const SLOW_DIRECTIVE: &str = "[demo:slow]";
pub const SLOW_TIME: Duration = Duration::from_secs(600);
/// The GitHub CLI, as the agent's `PATH` finds it.
pub const GH_PROGRAM: &str = "gh";
pub const HANG_TIME: Duration = Duration::from_secs(600);
/// The clone, in the work dir.
pub const REPO_DIR: &str = "repo";
/// The directory, in the repository, of the file each bead adds.
pub const BEAD_FILES_DIR: &str = "gastown";

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_REFUSED: i32 = 2;
pub const EXIT_CRASHED: i32 = 3;

/// Times a call to the worker is tried.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read from the gateway.
const MAX_GATEWAY_ANSWER: u64 = 1024 * 1024;
/// Characters of the model's answer quoted in the status.
const QUOTED_ANSWER_CHARS: usize = 200;

/// What `--help` prints, and a bad argument after its error.
pub const USAGE: &str = "usage: gastown-demo-agent
  The stand-in coding agent POST /agents/start runs by default. It takes no arguments: the
  control server gives it everything in its environment (GASTOWN_WORKER_URL, GASTOWN_TOWN_ID,
  GASTOWN_RIG_ID, GASTOWN_AGENT_ID, GASTOWN_BEAD_ID, GASTOWN_GIT_URL,
  GASTOWN_CONTAINER_TOKEN_FILE, ...). It clones, commits one file for the bead, pushes, asks the
  model through KILO_GATEWAY_URL and reports to the worker. In the bead's body, [demo:hang]
  makes it hang without a heartbeat, [demo:crash] makes it exit 3 at once, [demo:slow] leaves
  its file uncommitted for 10 minutes (unless resumed on a branch that has it); [demo:gh] and
  [demo:org] replace the work with a status saying whether `gh auth token` had a token (its
  SHA-256 fingerprint, never the token) and which organization the Kilo config names.";

/// The whole program with the process's environment (an empty variable counts as unset).
/// Returns the exit code.
pub fn cli_main() -> i32 {
    if let Err(code) = cli::read("gastown-demo-agent", USAGE, &cli::args(), no_arguments) {
        return code;
    }
    run(&|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// The demo agent's command line: empty.
fn no_arguments(args: &[String]) -> Result<(), String> {
    args.first().map_or(Ok(()), |arg| Err(cli::unknown(arg)))
}

/// The whole program with `env` as its environment. Returns the exit code.
pub fn run(env: &dyn Fn(&str) -> Option<String>) -> i32 {
    let bead_body = env(BEAD_BODY_ENV).unwrap_or_default();
    if bead_body.contains(HANG_DIRECTIVE) {
        say(&format!("{HANG_DIRECTIVE}: hanging without a heartbeat"));
        hang();
        return EXIT_FAILED;
    }
    if bead_body.contains(CRASH_DIRECTIVE) {
        say(&format!("{CRASH_DIRECTIVE}: crashing on purpose"));
        return EXIT_CRASHED;
    }
    let worker = match Worker::from_env(env, "gastown-demo-agent") {
        Ok(w) => Arc::new(w),
        Err(e) => {
            say(&format!("cannot call the worker back: {e}"));
            return EXIT_REFUSED;
        }
    };
    // A failed heartbeat is logged; the next one may get through.
    let _ = worker.call("heartbeat", "{}");
    let heartbeats = Heartbeats::start(Arc::clone(&worker), heartbeat_interval(env));
    let probes = [GH_DIRECTIVE, ORG_DIRECTIVE]
        .into_iter()
        .filter(|d| bead_body.contains(d))
        .collect::<Vec<_>>();
    let outcome = if probes.is_empty() {
        Job::from_env(env).and_then(|job| job.run(&worker))
    } else {
        Ok(probe(&worker, &probes, env))
    };
    let code = match outcome {
        Ok(done) => {
            let body = serde_json::to_string(&done).unwrap_or_default();
            match worker.call("done", &body) {
                Ok(()) => {
                    say(&done.summary);
                    0
                }
                Err(_) => EXIT_FAILED,
            }
        }
        Err(failure) => {
            post_status(&worker, &failure.message);
            failure.code
        }
    };
    heartbeats.stop();
    code
}

/// Runs the `probes` (directives), each posting one status; the `done` to post.
fn probe(
    worker: &Worker,
    probes: &[&str],
    env: &dyn Fn(&str) -> Option<String>,
) -> AgentDoneCallback {
    for &directive in probes {
        let status = if directive == GH_DIRECTIVE {
            gh_status(Command::new(GH_PROGRAM).args(["auth", "token"]))
        } else {
            org_status(env)
        };
        post_status(worker, &status);
    }
    AgentDoneCallback {
        summary: callback_text(&format!("probed {}", probes.join(" "))),
        branch: None,
        pr_url: None,
    }
}

/// The first 8 hex digits of `token`'s SHA-256: enough to tell tokens apart, nothing to use.
#[must_use]
pub fn fingerprint(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `gh` (`gh auth token`, which prints the token gh would use, or fails without one) and
/// says what it had: `[demo:gh] gh has a token: sha256 <fingerprint>`, `[demo:gh] gh has no
/// token (exit <code>)` or `[demo:gh] gh could not run: <why>`. gh's stderr goes to the log.
pub fn gh_status(gh: &mut Command) -> String {
    let out = gh
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output();
    match out {
        Err(e) => format!("{GH_DIRECTIVE} gh could not run: {e}"),
        Ok(out) => {
            let printed = String::from_utf8_lossy(&out.stdout);
            let token = printed.trim();
            if out.status.success() && !token.is_empty() {
                format!(
                    "{GH_DIRECTIVE} gh has a token: sha256 {}",
                    fingerprint(token)
                )
            } else {
                let code = out
                    .status
                    .code()
                    .map_or_else(|| "a signal".to_owned(), |c| c.to_string());
                format!("{GH_DIRECTIVE} gh has no token (exit {code})")
            }
        }
    }
}

/// The organization the agent's config names: `[demo:org] kilocodeOrganizationId=<id|none>
/// GASTOWN_ORGANIZATION_ID=<id|none>`.
pub fn org_status(env: &dyn Fn(&str) -> Option<String>) -> String {
    let in_config = env(KILO_CONFIG_CONTENT_ENV)
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|config| {
            config
                .pointer("/provider/kilo/options/kilocodeOrganizationId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
    format!(
        "{ORG_DIRECTIVE} kilocodeOrganizationId={} {ORGANIZATION_ID_ENV}={}",
        or_none(in_config),
        or_none(env(ORGANIZATION_ID_ENV))
    )
}

/// Sleeps [`HANG_TIME`], or less if the control server that started it goes away (the agent
/// is then a child of another process): a hung demo agent never outlives its server for long.
fn hang() {
    let parent = std::os::unix::process::parent_id();
    let until = std::time::Instant::now() + HANG_TIME;
    while std::time::Instant::now() < until && std::os::unix::process::parent_id() == parent {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A line on stderr (the agent's log).
fn say(line: &str) {
    eprintln!("gastown-demo-agent: {line}");
}

fn heartbeat_interval(env: &dyn Fn(&str) -> Option<String>) -> Duration {
    env(HEARTBEAT_MS_ENV)
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(DEFAULT_HEARTBEAT, |ms| {
            Duration::from_millis(ms.max(MIN_HEARTBEAT_MS))
        })
}

/// Why the work stopped before `done`: the status to post, and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

fn refused(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: EXIT_REFUSED,
    }
}

fn failed(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: EXIT_FAILED,
    }
}

/// The agent's calls to the worker, logged as the demo agent.
type Worker = Callbacks;

/// Posts a status (and logs it); a failure is logged only.
fn post_status(worker: &Worker, message: &str) {
    let _ = worker.status(message);
}

/// The heartbeat thread; [`Heartbeats::stop`] ends it.
struct Heartbeats {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeats {
    fn start(worker: Arc<Worker>, every: Duration) -> Heartbeats {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || loop {
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {
                        let _ = worker.call("heartbeat", "{}");
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| say(&format!("no heartbeat thread: {e}")))
            .ok();
        Heartbeats { stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
    }
}

/// Which kind of remote a git URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    Https,
    Http,
    /// `file://` or a path.
    Local,
}

/// The kind of remote `url` names, if it may be cloned: `https://` always; `http://`,
/// `file://` and local paths only with `allow_local`.
///
/// # Errors
/// Why not, readable, naming the URL only when it holds no credentials.
pub fn check_git_url(url: &str, allow_local: bool) -> Result<Remote, String> {
    if url.is_empty() {
        return Err("the git url is empty".to_owned());
    }
    if url.starts_with('-') || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the git url is not one git can be given".to_owned());
    }
    let local_only = |what: &str| {
        format!(
            "{what} is refused: only https:// repositories are cloned (set \
             {ALLOW_LOCAL_GIT_ENV}=1 for local development)"
        )
    };
    let remote = if let Some(rest) = url.strip_prefix("https://") {
        no_credentials(rest)?;
        Remote::Https
    } else if let Some(rest) = url.strip_prefix("http://") {
        no_credentials(rest)?;
        Remote::Http
    } else if url.starts_with("file://") {
        Remote::Local
    } else if let Some((scheme, _)) = url.split_once("://") {
        return Err(format!("the git url's scheme {scheme:?} is not supported"));
    } else if url
        .split('/')
        .next()
        .is_some_and(|first| first.contains(':'))
    {
        return Err("ssh remotes (host:path) are not supported: use https://".to_owned());
    } else {
        Remote::Local
    };
    match remote {
        Remote::Https => Ok(remote),
        Remote::Http if !allow_local => Err(local_only(&format!("the http:// git url {url}"))),
        Remote::Local if !allow_local => Err(local_only(&format!("the local git url {url}"))),
        _ => Ok(remote),
    }
}

fn no_credentials(after_scheme: &str) -> Result<(), String> {
    let authority = after_scheme.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        Err(
            "the git url holds credentials: git gets its token from the credential helper, \
             never from the url"
                .to_owned(),
        )
    } else {
        Ok(())
    }
}

/// The first line of a commit message, then the bead, then (unless disabled) the co-author
/// trailer as the last paragraph.
#[must_use]
pub fn commit_message(bead_id: &str, title: &str, coauthor: Option<&str>) -> String {
    let subject = title
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map_or_else(|| format!("Bead {bead_id}"), str::to_owned);
    let mut message = format!("{subject}\n\nGastown bead {bead_id}.\n");
    if let Some(trailer) = coauthor {
        message.push('\n');
        message.push_str(trailer);
        message.push('\n');
    }
    message
}

/// The gateway token of a gateway env file's text: its `KILO_JWT=` line, if plain.
#[must_use]
pub fn gateway_token_of(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{GATEWAY_TOKEN_ENV}=")))
        .map(str::trim)
        .filter(|t| is_plain_token(t))
        .map(str::to_owned)
}

/// Whether `id` can name the bead's file.
fn plain_file_name(id: &str) -> bool {
    gastown_control::callbacks::plain_segment(id) && !id.starts_with('.')
}

/// One bead's work, as the environment describes it.
struct Job {
    bead_id: String,
    title: String,
    body: String,
    git_url: String,
    default_branch: String,
    branch: String,
    model: String,
    work_dir: PathBuf,
    allow_local_git: bool,
    author: (String, String),
    /// The `Co-authored-by` trailer, unless disabled.
    coauthor: Option<String>,
    gateway_url: Option<String>,
    gateway_env_file: Option<PathBuf>,
    gateway_env_token: Option<String>,
}

impl Job {
    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Job, Failure> {
        let bead_id = env(BEAD_ID_ENV).ok_or_else(|| refused("no bead to work on"))?;
        if !plain_file_name(&bead_id) {
            return Err(refused("the bead id cannot name a file"));
        }
        let name = env(AGENT_NAME_ENV).unwrap_or_else(|| "agent".to_owned());
        let work_dir = match env(WORK_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => {
                std::env::current_dir().map_err(|e| refused(format!("no work directory: {e}")))?
            }
        };
        let gateway_url = match env(GATEWAY_URL_ENV) {
            None => None,
            Some(url) => {
                Some(client::origin(&url).map_err(|e| refused(format!("{GATEWAY_URL_ENV} {e}")))?)
            }
        };
        Ok(Job {
            branch: env(BRANCH_ENV).unwrap_or_else(|| format!("gastown/{name}/{bead_id}")),
            bead_id,
            title: env(BEAD_TITLE_ENV).unwrap_or_default(),
            body: env(BEAD_BODY_ENV).unwrap_or_default(),
            git_url: env(GIT_URL_ENV).ok_or_else(|| refused("no git url to clone"))?,
            default_branch: env(DEFAULT_BRANCH_ENV).unwrap_or_else(|| DEFAULT_BRANCH.to_owned()),
            model: env(MODEL_ENV).unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            work_dir,
            allow_local_git: env(ALLOW_LOCAL_GIT_ENV).as_deref() == Some("1"),
            author: (
                env(GIT_AUTHOR_NAME_ENV).unwrap_or_else(|| DEFAULT_AUTHOR_NAME.to_owned()),
                env(GIT_AUTHOR_EMAIL_ENV).unwrap_or_else(|| DEFAULT_AUTHOR_EMAIL.to_owned()),
            ),
            coauthor: (!matches!(
                env(DISABLE_AI_COAUTHOR_ENV).as_deref().map(str::trim),
                Some("1" | "true")
            ))
            .then(|| {
                gastown_core::control::coauthor_trailer(
                    &env(AI_AGENT_NAME_ENV)
                        .unwrap_or_else(|| gastown_core::control::DEFAULT_AI_AGENT_NAME.to_owned()),
                )
            }),
            gateway_url,
            gateway_env_file: env(GATEWAY_ENV_FILE_ENV).map(PathBuf::from),
            gateway_env_token: env(GATEWAY_TOKEN_ENV),
        })
    }

    /// Clone, branch, commit, push, ask the model; the `done` to post.
    fn run(&self, worker: &Worker) -> Result<AgentDoneCallback, Failure> {
        check_git_url(&self.git_url, self.allow_local_git).map_err(refused)?;
        let git = Git {
            allow_local: self.allow_local_git,
            author: &self.author,
        };
        git.run(
            &self.work_dir,
            &["check-ref-format", "--branch", &self.branch],
        )
        .map_err(|_| refused(format!("{:?} cannot be a branch", self.branch)))?;
        post_status(worker, &format!("cloning {}", self.git_url));
        let repo = self.work_dir.join(REPO_DIR);
        if repo.exists() {
            fs::remove_dir_all(&repo)
                .map_err(|e| failed(format!("cannot empty {}: {e}", repo.display())))?;
        }
        let repo_arg = repo.to_string_lossy().into_owned();
        git.run(
            &self.work_dir,
            &["clone", "--quiet", "--", &self.git_url, &repo_arg],
        )?;

        let exists = |reference: &str| {
            git.run(
                &repo,
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("{reference}^{{commit}}"),
                ],
            )
            .is_ok()
        };
        // A branch already on the remote (a pull request's, in a feedback round) is continued;
        // otherwise the work starts from the default branch.
        let continued = format!("refs/remotes/origin/{}", self.branch);
        let upstream = if exists(&continued) {
            continued
        } else {
            format!("refs/remotes/origin/{}", self.default_branch)
        };
        let has_upstream = exists(&upstream);
        let any_branch = !git
            .run(&repo, &["for-each-ref", "--count=1", "refs/remotes/origin"])?
            .trim()
            .is_empty();
        if has_upstream {
            git.run(
                &repo,
                &[
                    "checkout",
                    "--quiet",
                    "--no-track",
                    "-B",
                    &self.branch,
                    &upstream,
                ],
            )?;
        } else if !any_branch {
            // An empty repository: the work starts its history.
            git.run(&repo, &["checkout", "--quiet", "--orphan", &self.branch])?;
        } else {
            return Err(failed(format!(
                "the default branch {} is not in the repository",
                self.default_branch
            )));
        }

        let relative = format!("{BEAD_FILES_DIR}/{}.md", self.bead_id);
        let file = repo.join(&relative);
        // On a continued branch that already has the file, this is a resumed run.
        let resumed = file.exists();
        let written = fs::create_dir_all(repo.join(BEAD_FILES_DIR))
            .and_then(|()| fs::write(&file, format!("# {}\n\n{}\n", self.title, self.body)));
        written.map_err(|e| failed(format!("cannot write {relative}: {e}")))?;
        if self.body.contains(SLOW_DIRECTIVE) && !resumed {
            // The work is written but not committed: what an eviction drain must save.
            post_status(worker, &format!("{SLOW_DIRECTIVE}: working on {relative}"));
            std::thread::sleep(SLOW_TIME);
        }
        git.run(&repo, &["add", "--", &relative])?;
        let message = commit_message(&self.bead_id, &self.title, self.coauthor.as_deref());
        // A bead run again on its continued branch writes the same file: the run still commits.
        git.run(
            &repo,
            &[
                "-c",
                "commit.gpgsign=false",
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                &message,
            ],
        )?;
        git.run(
            &repo,
            &[
                "push",
                "--quiet",
                "origin",
                &format!("HEAD:refs/heads/{}", self.branch),
            ],
        )?;

        post_status(worker, &self.ask_model());
        Ok(AgentDoneCallback {
            summary: callback_text(&format!("committed {relative} on {}", self.branch)),
            branch: Some(self.branch.clone()),
            pr_url: None,
        })
    }

    /// The gateway token as it is now: the file's, else the environment's.
    fn gateway_token(&self) -> Option<String> {
        self.gateway_env_file
            .as_deref()
            .and_then(|f| fs::read_to_string(f).ok())
            .and_then(|text| gateway_token_of(&text))
            .or_else(|| self.gateway_env_token.clone().filter(|t| is_plain_token(t)))
    }

    /// One model call; what came of it, as a status (never a failure of the work).
    fn ask_model(&self) -> String {
        let Some(gateway) = &self.gateway_url else {
            return format!("no {GATEWAY_URL_ENV}: the model call is skipped");
        };
        let Some(token) = self.gateway_token() else {
            return "no gateway token: the model call is skipped".to_owned();
        };
        let body = json!({
            "model": self.model,
            "messages": [{ "role": "user", "content": self.title }],
        });
        let sent = client::agent_with(GATEWAY_TIMEOUT)
            .post(&format!("{gateway}{GATEWAY_CHAT_PATH}"))
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", CONTENT_TYPE_JSON)
            .send(body.to_string());
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return format!("the gateway was not reached: {e}"),
        };
        let status = response.status().as_u16();
        if status != 200 {
            return format!("the gateway answered {status}");
        }
        let answer: Option<Value> = response
            .body_mut()
            .with_config()
            .limit(MAX_GATEWAY_ANSWER)
            .read_to_string()
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        let content = answer
            .as_ref()
            .and_then(|a| a.pointer("/choices/0/message/content"))
            .and_then(Value::as_str);
        match content {
            Some(text) => format!(
                "model {} answered: {}",
                self.model,
                text.chars().take(QUOTED_ANSWER_CHARS).collect::<String>()
            ),
            None => "the gateway's answer holds no message".to_owned(),
        }
    }
}

/// How git is run: no shell, no prompt, the protocols allowed, the agent's identity.
struct Git<'a> {
    allow_local: bool,
    author: &'a (String, String),
}

impl Git<'_> {
    /// Runs `git args` in `dir`; its stdout on success. Its output goes to the log; a failure
    /// names the subcommand and git's last line of error.
    fn run(&self, dir: &Path, args: &[&str]) -> Result<String, Failure> {
        let protocols = if self.allow_local {
            "https:http:file"
        } else {
            "https"
        };
        let (name, email) = self.author;
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", protocols)
            .env("GIT_AUTHOR_NAME", name)
            .env("GIT_AUTHOR_EMAIL", email)
            .env("GIT_COMMITTER_NAME", name)
            .env("GIT_COMMITTER_EMAIL", email)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed(format!("cannot run git: {e}")))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.trim().is_empty() {
            eprint!("{stderr}");
        }
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        let code = out
            .status
            .code()
            .map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"));
        Err(failed(format!(
            "git {} failed ({code}): {last}",
            args.iter()
                .find(|a| !a.starts_with('-') && !a.contains('='))
                .unwrap_or(&"")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls() {
        let ok = |url: &str, local: bool| check_git_url(url, local);
        assert_eq!(ok("https://github.com/a/b.git", false), Ok(Remote::Https));
        assert_eq!(ok("https://github.com/a/b.git", true), Ok(Remote::Https));
        assert_eq!(ok("http://127.0.0.1:9/r.git", true), Ok(Remote::Http));
        assert_eq!(ok("file:///tmp/r.git", true), Ok(Remote::Local));
        assert_eq!(ok("/tmp/r.git", true), Ok(Remote::Local));
        assert_eq!(ok("./r.git", true), Ok(Remote::Local));
        for local in [
            "http://127.0.0.1:9/r.git",
            "file:///tmp/r.git",
            "/tmp/r.git",
        ] {
            let e = ok(local, false).unwrap_err();
            assert!(e.contains(ALLOW_LOCAL_GIT_ENV), "{e}");
        }
        for bad in [
            "",
            "-uhttps://x",
            "ssh://git@github.com/a/b",
            "git@github.com:a/b.git",
            "ext::sh -c x",
            "https://x/a b",
            "https://x/a\nb",
        ] {
            assert!(ok(bad, true).is_err(), "{bad:?}");
        }
        let e = ok("https://x-access-token:ghs_secret@github.com/a/b", true).unwrap_err();
        assert!(!e.contains("ghs_secret"), "{e}");
        assert!(
            ok("https://github.com/a@b/c", false).is_ok(),
            "@ in the path"
        );
    }

    #[test]
    fn commit_messages_end_with_the_trailer_unless_disabled() {
        let trailer = gastown_core::control::coauthor_trailer("Kilo");
        assert_eq!(trailer, "Co-authored-by: Kilo <kilo@gastown.invalid>");
        let with = commit_message("b1", "Fix the thing\nmore", Some(&trailer));
        assert_eq!(
            with,
            format!("Fix the thing\n\nGastown bead b1.\n\n{trailer}\n")
        );
        let without = commit_message("b1", "  ", None);
        assert_eq!(without, "Bead b1\n\nGastown bead b1.\n");
    }

    #[test]
    fn gateway_tokens_come_from_the_kilo_jwt_line() {
        assert_eq!(
            gateway_token_of("X=1\nKILO_JWT=a.b.c\n").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(gateway_token_of("KILO_JWT=a b\n"), None);
        assert_eq!(gateway_token_of("OTHER=x\n"), None);
        assert_eq!(gateway_token_of(""), None);
    }

    #[test]
    fn callback_texts_and_names() {
        let long = "é".repeat(gastown_core::control::MAX_CALLBACK_TEXT + 10);
        assert_eq!(
            callback_text(&long).chars().count(),
            gastown_core::control::MAX_CALLBACK_TEXT
        );
        for ok in ["a", "bead-1", "b_2.x", "0f6c"] {
            assert!(plain_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".x", "a/b", "a b", "a?b", "a%2f"] {
            assert!(!plain_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_heartbeat_interval_has_a_default_and_a_floor() {
        let env = |v: &'static str| move |n: &str| (n == HEARTBEAT_MS_ENV).then(|| v.to_owned());
        assert_eq!(heartbeat_interval(&env("250")), Duration::from_millis(250));
        assert_eq!(heartbeat_interval(&env("1")), Duration::from_millis(10));
        assert_eq!(heartbeat_interval(&env("x")), DEFAULT_HEARTBEAT);
        assert_eq!(heartbeat_interval(&|_: &str| None), DEFAULT_HEARTBEAT);
    }

    #[test]
    fn fingerprints_are_eight_hex_digits_of_sha256() {
        // printf 'ghs_abc' | sha256sum
        assert_eq!(fingerprint("ghs_abc"), "c8f8780e");
        assert_eq!(fingerprint("").len(), 8);
        assert_ne!(fingerprint("a"), fingerprint("b"));
    }

    #[test]
    fn the_gh_probe_says_whether_gh_had_a_token_never_which() {
        let sh = |script: &str| {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", script]);
            gh_status(&mut cmd)
        };
        assert_eq!(
            sh("echo ghs_abc"),
            format!(
                "[demo:gh] gh has a token: sha256 {}",
                fingerprint("ghs_abc")
            )
        );
        assert_eq!(sh("exit 1"), "[demo:gh] gh has no token (exit 1)");
        assert_eq!(sh("echo; exit 0"), "[demo:gh] gh has no token (exit 0)");
        assert!(sh("echo ghs_abc").find("ghs_abc").is_none());
        let missing = gh_status(&mut Command::new("/nonexistent/gh"));
        assert!(
            missing.starts_with("[demo:gh] gh could not run:"),
            "{missing}"
        );
    }

    #[test]
    fn the_org_probe_reads_the_kilo_config_and_the_env() {
        let env = |name: &str| match name {
            KILO_CONFIG_CONTENT_ENV => Some(
                r#"{"provider":{"kilo":{"options":{"kilocodeOrganizationId":"org-7"}}}}"#
                    .to_owned(),
            ),
            ORGANIZATION_ID_ENV => Some("org-7".to_owned()),
            _ => None,
        };
        assert_eq!(
            org_status(&env),
            "[demo:org] kilocodeOrganizationId=org-7 GASTOWN_ORGANIZATION_ID=org-7"
        );
        assert_eq!(
            org_status(&|_| None),
            "[demo:org] kilocodeOrganizationId=none GASTOWN_ORGANIZATION_ID=none"
        );
    }

    #[test]
    fn without_a_worker_nothing_is_called_and_the_exit_says_refused() {
        let env = |n: &str| (n == BEAD_ID_ENV).then(|| "b1".to_owned());
        assert_eq!(run(&env), EXIT_REFUSED);
        let crash = |n: &str| (n == BEAD_BODY_ENV).then(|| format!("x {CRASH_DIRECTIVE}"));
        assert_eq!(run(&crash), EXIT_CRASHED);
    }
}

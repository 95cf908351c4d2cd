//! The eviction drain: what the server does when the platform evicts its container, which it
//! says with `SIGTERM` (and, a while later, `SIGKILL`). Without it the agents' uncommitted work
//! would die with the container.
//!
//! The `SIGTERM` handler only sets a flag (nothing else is safe in a signal handler); a thread
//! of this module looks at it every [`POLL`] and, once it is set, drains:
//!
//! 1. the server is marked draining: from then on `POST /agents/start` answers 503
//!    (`{"error": "the container is draining …"}`); every other route keeps working;
//! 2. every agent still running, of every town, is taken over ([`Registry::evict_all`]): its
//!    watcher will not report its end, the drain does;
//! 3. each gets `SIGTERM` to its whole process group (a real agent CLI may save its own work),
//!    and the drain waits up to the grace (`--drain-grace-ms`, default 20 s, 0 kills at once)
//!    for them to exit, looking every [`POLL`]; whatever still runs then gets `SIGKILL`, its
//!    whole group and every process of its run, as a stop does;
//! 4. for each rig agent started with a `git_url` and a `branch` (never the mayor: it has no
//!    rig and no branch), its work is saved from its work tree, `<work dir>/repo` (where the
//!    demo agent and the Kilo runtime clone their rig), else the work dir itself when it is
//!    one: uncommitted changes become `git add -A` and `git commit -m` [`WIP_MESSAGE`]; then,
//!    when the remote's branch lacks a commit of `HEAD` (or the remote lacks the branch),
//!    `git push -- <git_url> HEAD:refs/heads/<branch>`;
//! 5. each agent's end is reported to the worker as its watcher would have (the exit
//!    callback, [`gastown_core::control::AgentExitCallback`], or for the mayor its `idle`
//!    state), a saved one's with `drained`: [`Drained`] `{branch, pushed, head, error}`, where
//!    `pushed` is true only when the remote's branch now holds the work, `head` is the commit
//!    that branch was left at (when known) and `error` says, in one short line, why a commit or
//!    push failed;
//! 6. the process exits 0.
//!
//! Rules:
//!
//! * git runs exactly as the agent's own would: as the agent user when there is one, with the
//!   environment the agent was started with (its `HOME`, the town's gitconfig and so its
//!   credential helper, its `GIT_AUTHOR_*` and `GIT_COMMITTER_*`), without a shell; on top of
//!   it only `GIT_TERMINAL_PROMPT=0`, `GIT_ALLOW_PROTOCOL` (as for merges: `https`, plus
//!   `http` and `file` with `GASTOWN_ALLOW_LOCAL_GIT=1`), `LC_ALL=C`, `-c commit.gpgsign=false`,
//!   `-c core.hooksPath=/dev/null` in the work tree and `--no-verify` (a save neither prompts,
//!   signs nor runs the agent's hooks; the remote's are the remote's), and
//!   without `GIT_DIR`, `GIT_WORK_TREE` and `GIT_INDEX_FILE` (the work tree is the drain's to
//!   name). A committer is named (the default agent identity) only when neither the env nor
//!   git's config names one;
//! * the `git_url` and `branch` are checked as a merge's are (no credentials in the URL, a
//!   plain branch name) before git runs;
//! * every git leads a process group of its own and is killed with it past the save's
//!   deadline, [`SAVE_MARGIN`] after the agents' end: a hung push cannot hold the drain; the
//!   reports get [`REPORT_MARGIN`] more, so the server exits at the latest the grace plus
//!   both margins after the `SIGTERM`. Agents are saved and reported side by side;
//! * nothing panics: every failure is one line on stderr and in the agent's `error`, naming a
//!   step and git's line of error with the userinfo of any URL cut out, never a token, and the
//!   drain goes on with the other agents.
//!
//! # Tests only
//!
//! The debug binary (`gastown-control-debug`) takes a shorter [`SAVE_MARGIN`] from
//! `GASTOWN_DRAIN_SAVE_MARGIN_MS` when its environment sets it; the production binary ignores
//! it.

use crate::agent_user::AgentUser;
use crate::agents::Evicted;
use crate::child::{self, Ran, RunError};
use crate::merges::{allow_local_git, check_branch, check_git_url, last_line};
use crate::server::Build;
use crate::state::Shared;
use gastown_core::control::{Drained, DEFAULT_GIT_AUTHOR_EMAIL, DEFAULT_GIT_AUTHOR_NAME};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the drain's thread looks for the signal, and for the agents' exits.
pub const POLL: Duration = Duration::from_millis(50);
/// How long the saves may take once the agents are gone.
pub const SAVE_MARGIN: Duration = Duration::from_secs(10);
/// The debug binary's [`SAVE_MARGIN`], in milliseconds, when set (tests of a hung push).
#[cfg(feature = "debug-routes")]
pub const SAVE_MARGIN_MS_ENV: &str = "GASTOWN_DRAIN_SAVE_MARGIN_MS";
/// How long the reports may take once the saves are done (or their time is up).
pub const REPORT_MARGIN: Duration = Duration::from_secs(10);
/// The message of the commit that saves an agent's uncommitted work.
pub const WIP_MESSAGE: &str = "WIP: saved when the container was evicted";
/// Where the demo agent and the Kilo runtime clone the rig, in the agent's work dir.
pub const REPO_DIR: &str = "repo";

/// The stack of a thread that saves and reports one agent (the report's HTTP call, a TLS
/// client included).
const AGENT_STACK: usize = 1024 * 1024;
/// Configuration every git of a save runs with.
const GIT_CONFIG: [&str; 2] = ["-c", "commit.gpgsign=false"];
/// Configuration of the steps in the work tree alone: no hook runs. Not given to `push` and
/// `ls-remote`, since git hands `-c` on to the other side of a local remote, whose hooks are
/// its own business (`push --no-verify` skips the agent's `pre-push`).
const NO_HOOKS: [&str; 2] = ["-c", "core.hooksPath=/dev/null"];
/// Variables of the agent's env that would point git at another repository.
const DROPPED_ENV: [&str; 3] = ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"];

/// Set by the `SIGTERM` handler.
static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_signal: libc::c_int) {
    // An atomic store: async-signal-safe.
    TERMINATED.store(true, Ordering::SeqCst);
}

/// Installs the `SIGTERM` handler and starts the thread that drains once it fires, then exits
/// the process with 0. A handler that cannot be installed is logged (the server then dies on
/// `SIGTERM` as it did without one).
///
/// # Errors
/// When the thread cannot be started.
pub(crate) fn start(shared: &Arc<Shared>) -> io::Result<()> {
    if let Err(e) = install_handler() {
        eprintln!("gastown-control: no eviction drain (cannot handle SIGTERM: {e})");
        return Ok(());
    }
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("gastown-control-drain".into())
        .stack_size(AGENT_STACK)
        .spawn(move || {
            while !TERMINATED.load(Ordering::SeqCst) {
                std::thread::sleep(POLL);
            }
            // Whatever happens in it, the server ends as evicted: status 0.
            let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drain(&shared)));
            if drained.is_err() {
                eprintln!("gastown-control: drain: stopped short by a bug; exiting");
            }
            std::process::exit(0);
        })?;
    Ok(())
}

#[cfg(unix)]
fn install_handler() -> io::Result<()> {
    // SAFETY: a zeroed `sigaction` is a valid empty one; the handler only stores to an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn install_handler() -> io::Result<()> {
    let _ = on_sigterm;
    Err(io::Error::new(io::ErrorKind::Unsupported, "not a unix"))
}

/// The drain (see the module docs), up to the exit.
fn drain(shared: &Shared) {
    let began = Instant::now();
    let grace = shared.config.drain_grace;
    shared.draining.store(true, Ordering::SeqCst);
    let agents = shared.agents.evict_all();
    eprintln!(
        "gastown-control: SIGTERM: draining {} running agents (grace {} ms)",
        agents.len(),
        grace.as_millis()
    );
    for agent in &agents {
        agent.terminate();
    }
    // `None`: a grace too long to count in, as good as forever.
    let grace_end = began.checked_add(grace);
    while !agents.iter().all(Evicted::has_exited)
        && grace_end.is_none_or(|end| Instant::now() < end)
    {
        std::thread::sleep(POLL);
    }
    for agent in &agents {
        if !agent.has_exited() {
            eprintln!(
                "gastown-control: drain: agent {} of town {} still ran after the grace: killed",
                agent.agent, agent.town
            );
        }
        // All of each is killed before any git runs in its work tree.
        agent.kill();
    }
    let save_by = Instant::now() + save_margin(shared.config.build);
    let report_by = save_by + REPORT_MARGIN;
    let how = How {
        user: shared.config.agent_user,
        allow_local: allow_local_git(),
        deadline: save_by,
    };
    let agents: Vec<Arc<Evicted>> = agents.into_iter().map(Arc::new).collect();
    let (done, finished) = mpsc::channel::<()>();
    let mut waiting = 0usize;
    for agent in &agents {
        let (mine, my_how, my_done) = (Arc::clone(agent), how.clone(), done.clone());
        let job = move || {
            finish(&mine, &my_how, report_by);
            let _ = my_done.send(());
        };
        let spawned = std::thread::Builder::new()
            .name("gastown-control-drain-agent".into())
            .stack_size(AGENT_STACK)
            .spawn(job);
        match spawned {
            Ok(_) => waiting += 1,
            Err(e) => {
                // The drain goes on: this agent then on this thread.
                eprintln!("gastown-control: drain: cannot start a thread ({e}); saving in turn");
                finish(agent, &how, report_by);
            }
        }
    }
    drop(done);
    while waiting > 0 {
        let left = report_by.saturating_duration_since(Instant::now());
        match finished.recv_timeout(left) {
            Ok(()) => waiting -= 1,
            Err(RecvTimeoutError::Timeout) => {
                eprintln!(
                    "gastown-control: drain: {waiting} agents not saved or reported in time; exiting"
                );
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    eprintln!(
        "gastown-control: drained in {} ms; exiting",
        began.elapsed().as_millis()
    );
}

/// [`SAVE_MARGIN`], or in the debug binary `GASTOWN_DRAIN_SAVE_MARGIN_MS` when set.
fn save_margin(build: Build) -> Duration {
    #[cfg(feature = "debug-routes")]
    if build == Build::Debug {
        if let Some(ms) = std::env::var(SAVE_MARGIN_MS_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            return Duration::from_millis(ms).min(SAVE_MARGIN);
        }
    }
    #[cfg(not(feature = "debug-routes"))]
    let _ = build;
    SAVE_MARGIN
}

/// Saves one agent's work (a rig agent with a branch), then reports its end.
fn finish(agent: &Evicted, how: &How, report_by: Instant) {
    let drained = agent.save_target().map(|(url, branch)| {
        let drained = save(agent, url, branch, how);
        let what = format!(
            "gastown-control: drain: agent {} of town {}",
            agent.agent, agent.town
        );
        match (&drained.error, drained.pushed, &drained.head) {
            (Some(e), _, _) => eprintln!("{what}: work on {branch} not saved: {e}"),
            (None, true, Some(head)) => eprintln!("{what}: work pushed to {branch} at {head}"),
            (None, _, _) => eprintln!("{what}: nothing new to push to {branch}"),
        }
        drained
    });
    // Its last lines before the report of its end (its watcher sends them once it sees it gone).
    agent.wait_watched(report_by.min(Instant::now() + Duration::from_secs(2)));
    agent.report(drained);
}

/// How git runs for the saves.
#[derive(Debug, Clone)]
struct How {
    user: Option<AgentUser>,
    allow_local: bool,
    /// Past it, git is killed.
    deadline: Instant,
}

/// What the save of one agent's work came to.
fn save(agent: &Evicted, url: &str, branch: &str, how: &How) -> Drained {
    let mut drained = Drained {
        branch: branch.to_owned(),
        pushed: false,
        head: None,
        error: None,
    };
    if let Err(e) = save_into(agent, url, branch, how, &mut drained) {
        drained.error = Some(e);
    }
    drained
}

/// The save's steps (see the module docs), filling `drained` as they go.
fn save_into(
    agent: &Evicted,
    url: &str,
    branch: &str,
    how: &How,
    drained: &mut Drained,
) -> Result<(), String> {
    check_branch("branch", branch)?;
    check_git_url(url, how.allow_local).map_err(|e| format!("not pushed: {e}"))?;
    let tree = work_tree(agent.work_dir())
        .ok_or_else(|| "no git work tree in the agent's work dir".to_owned())?;
    let mut git = Git {
        env: git_env(agent.env(), how.allow_local),
        tree,
        user: how.user,
        deadline: how.deadline,
    };
    let status = git.ok(
        "status",
        &["status", "--porcelain", "-z", "--untracked-files=all"],
    )?;
    if !status.is_empty() {
        git.name_a_committer();
        git.ok("add", &["add", "-A"])?;
        git.ok(
            "commit",
            &["commit", "--quiet", "--no-verify", "-m", WIP_MESSAGE],
        )?;
    }
    // No commit at all (an empty repository, nothing written): nothing to push.
    let Some(local) = git.commit_of("HEAD") else {
        return Ok(());
    };
    let wanted = format!("refs/heads/{branch}");
    match git.run(&["ls-remote", "--", url, &wanted]) {
        Ok(ran) if ran.status.success() => {
            let remote = String::from_utf8_lossy(&ran.stdout)
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .find(|(_, name)| *name == wanted)
                .map(|(sha, _)| sha.trim().to_owned());
            if let Some(remote) = remote {
                drained.head = Some(remote.clone());
                if remote == local || git.contains(&remote, &local) {
                    return Ok(());
                }
            }
        }
        // Not known: the push says whether the remote takes the work (and why not).
        Ok(_) => {}
        Err(e) => return Err(e),
    }
    let target = format!("HEAD:refs/heads/{branch}");
    let push = git.run(&["push", "--quiet", "--no-verify", "--", url, &target])?;
    if push.status.success() {
        drained.pushed = true;
        drained.head = Some(local);
        return Ok(());
    }
    Err(format!("git push failed: {}", last_line(&push.stderr)))
}

/// The agent's git work tree: `<work dir>/repo`, else the work dir itself when it holds a
/// `.git`; never through a symbolic link.
fn work_tree(work_dir: &Path) -> Option<PathBuf> {
    let real_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if !real_dir(work_dir) {
        return None;
    }
    [work_dir.join(REPO_DIR), work_dir.to_path_buf()]
        .into_iter()
        .find(|dir| real_dir(dir) && fs::symlink_metadata(dir.join(".git")).is_ok())
}

/// git's environment for a save: the agent's, without what would point git elsewhere, with
/// no prompt, the protocols a merge may use and messages in English.
fn git_env(agent: &BTreeMap<String, String>, allow_local: bool) -> BTreeMap<String, String> {
    let mut env = agent.clone();
    for name in DROPPED_ENV {
        env.remove(name);
    }
    let protocols = if allow_local {
        "https:http:file"
    } else {
        "https"
    };
    for (name, value) in [
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_ALLOW_PROTOCOL", protocols),
        ("LC_ALL", "C"),
    ] {
        env.insert(name.to_owned(), value.to_owned());
    }
    env
}

/// git in one agent's work tree.
struct Git {
    env: BTreeMap<String, String>,
    tree: PathBuf,
    user: Option<AgentUser>,
    deadline: Instant,
}

impl Git {
    /// Runs `git <args>` in the work tree until it ends or the deadline passes (then its whole
    /// process group is killed).
    fn run(&self, args: &[&str]) -> Result<Ran, String> {
        let step = args.first().copied().unwrap_or("git");
        let mut cmd = Command::new("git");
        cmd.args(GIT_CONFIG);
        if !matches!(step, "push" | "ls-remote") {
            cmd.args(NO_HOOKS);
        }
        cmd.args(args)
            .current_dir(&self.tree)
            .env_clear()
            .envs(&self.env);
        #[cfg(unix)]
        if let Some(user) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(user.uid()).gid(user.gid());
        }
        child::run(&mut cmd, self.deadline).map_err(|e| match e {
            RunError::Late => format!("no time left for git {step}"),
            RunError::Killed => format!("git {step} took longer than the drain allows"),
            RunError::Spawn(e) => format!("cannot run git {step}: {e}"),
            RunError::Wait(e) => format!("git {step}: {e}"),
        })
    }

    /// Runs `git <args>`; its stdout, or `git <step> failed: <git's line>`.
    fn ok(&self, step: &str, args: &[&str]) -> Result<Vec<u8>, String> {
        let ran = self.run(args)?;
        if ran.status.success() {
            Ok(ran.stdout)
        } else {
            Err(format!("git {step} failed: {}", last_line(&ran.stderr)))
        }
    }

    /// The commit `rev` names, if any.
    fn commit_of(&self, rev: &str) -> Option<String> {
        let spec = format!("{rev}^{{commit}}");
        let out = self
            .ok("rev-parse", &["rev-parse", "--verify", "--quiet", &spec])
            .ok()?;
        let sha = String::from_utf8_lossy(&out).trim().to_owned();
        (!sha.is_empty()).then_some(sha)
    }

    /// Whether `commit` is in the history of `tip` (false when either is unknown here).
    fn contains(&self, tip: &str, commit: &str) -> bool {
        self.run(&["merge-base", "--is-ancestor", commit, tip])
            .is_ok_and(|ran| ran.status.success())
    }

    /// Names the default agent identity as author and committer where neither the env nor
    /// git's config names one (the agent's env always does, as the server starts it).
    fn name_a_committer(&mut self) {
        for (key, default, vars) in [
            (
                "user.name",
                DEFAULT_GIT_AUTHOR_NAME,
                ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"],
            ),
            (
                "user.email",
                DEFAULT_GIT_AUTHOR_EMAIL,
                ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"],
            ),
        ] {
            let unset = |env: &BTreeMap<String, String>, var: &str| {
                env.get(var).is_none_or(|v| v.trim().is_empty())
            };
            if !vars.iter().any(|var| unset(&self.env, var)) {
                continue;
            }
            let configured = self
                .ok("config", &["config", "--get", key])
                .is_ok_and(|out| !String::from_utf8_lossy(&out).trim().is_empty());
            if configured {
                continue;
            }
            for var in vars {
                if unset(&self.env, var) {
                    self.env.insert(var.to_owned(), default.to_owned());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gastown-drain-unit-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_work_tree_is_the_clone_in_repo_else_the_work_dir_never_a_link() {
        let dir = temp("tree");
        let work = dir.join("agent-1");
        assert_eq!(work_tree(&work), None, "no work dir");
        fs::create_dir_all(&work).unwrap();
        assert_eq!(work_tree(&work), None, "no git in it");
        fs::create_dir_all(work.join(".git")).unwrap();
        assert_eq!(work_tree(&work), Some(work.clone()));
        fs::create_dir_all(work.join("repo/.git")).unwrap();
        assert_eq!(work_tree(&work), Some(work.join("repo")));
        // A worktree's `.git` is a file.
        fs::remove_dir_all(work.join("repo/.git")).unwrap();
        fs::write(work.join("repo/.git"), "gitdir: /elsewhere\n").unwrap();
        assert_eq!(work_tree(&work), Some(work.join("repo")));
        #[cfg(unix)]
        {
            let elsewhere = dir.join("elsewhere");
            fs::create_dir_all(elsewhere.join(".git")).unwrap();
            fs::remove_dir_all(work.join("repo")).unwrap();
            std::os::unix::fs::symlink(&elsewhere, work.join("repo")).unwrap();
            assert_eq!(
                work_tree(&work),
                Some(work.clone()),
                "a link is not followed"
            );
            let linked = dir.join("linked");
            std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
            assert_eq!(work_tree(&linked), None);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn gits_env_is_the_agents_without_what_points_elsewhere() {
        let agent = BTreeMap::from([
            ("HOME".to_owned(), "/w/t/agents/a".to_owned()),
            ("GIT_CONFIG_GLOBAL".to_owned(), "/w/t/gitconfig".to_owned()),
            ("GIT_DIR".to_owned(), "/elsewhere".to_owned()),
            ("GIT_WORK_TREE".to_owned(), "/elsewhere".to_owned()),
            ("GIT_INDEX_FILE".to_owned(), "/elsewhere/index".to_owned()),
            ("GIT_ALLOW_PROTOCOL".to_owned(), "ext".to_owned()),
            ("GIT_COMMITTER_NAME".to_owned(), "Ann".to_owned()),
        ]);
        let env = git_env(&agent, false);
        assert_eq!(env["HOME"], "/w/t/agents/a");
        assert_eq!(env["GIT_CONFIG_GLOBAL"], "/w/t/gitconfig");
        assert_eq!(env["GIT_COMMITTER_NAME"], "Ann");
        assert_eq!(env["GIT_TERMINAL_PROMPT"], "0");
        assert_eq!(env["GIT_ALLOW_PROTOCOL"], "https");
        for gone in DROPPED_ENV {
            assert!(!env.contains_key(gone), "{gone}");
        }
        assert_eq!(
            git_env(&agent, true)["GIT_ALLOW_PROTOCOL"],
            "https:http:file"
        );
    }
}

//! The eviction drain: the debug server, sent `SIGTERM`, stops its agents, saves their work
//! to their branches and reports it, then exits 0. Its agents are a shell script that clones
//! a local bare repository (the server started with `GASTOWN_ALLOW_LOCAL_GIT=1`), checks out
//! its branch, leaves a file uncommitted and runs until killed; a fake worker records the
//! reports. The server is the test's own child here (not the harness's `Server`), so that its
//! exit status can be read.

#![cfg(unix)]

mod common;

use common::*;
use gastown_core::control::{ALLOW_LOCAL_GIT_ENV, KEY_ENV};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const TOWN: &str = "town-drain";
const WAIT: Duration = Duration::from_secs(20);
/// What the drain may take past its grace here: git on local repositories, a local worker.
const MARGIN: Duration = Duration::from_secs(10);
const WIP_MESSAGE: &str = "WIP: saved when the container was evicted";
const DRAIN_GRACE_MS_ENV: &str = "GASTOWN_DRAIN_GRACE_MS";

/// The test agent. With a git url: clones it into `repo`, checks out `GASTOWN_BRANCH` (from
/// the remote's branch when it has it, else from the default branch) and writes `TEST_WIP`, if
/// set, to `repo/wip.txt`, uncommitted. Then, on `SIGTERM`: `TEST_ON_TERM=ignore` ignores it
/// (and so do its children), `save` writes `repo/on-term.txt` and exits 0, anything else dies.
/// `ready.txt` (its pid) says it got that far; then it sleeps until it is killed.
const SCRIPT: &str = r#"if [ -n "$GASTOWN_GIT_URL" ]; then
  git clone --quiet "$GASTOWN_GIT_URL" repo || exit 9
  cd repo || exit 9
  if git rev-parse --verify --quiet "refs/remotes/origin/$GASTOWN_BRANCH" >/dev/null; then
    git checkout --quiet -B "$GASTOWN_BRANCH" "origin/$GASTOWN_BRANCH" || exit 9
  else
    git checkout --quiet -B "$GASTOWN_BRANCH" "origin/$GASTOWN_DEFAULT_BRANCH" || exit 9
  fi
  if [ -n "$TEST_WIP" ]; then printf '%s\n' "$TEST_WIP" > wip.txt; fi
  cd .. || exit 9
fi
case "$TEST_ON_TERM" in
  ignore) trap '' TERM ;;
  save) trap 'printf "saved on SIGTERM\n" > repo/on-term.txt; exit 0' TERM ;;
esac
echo $$ > ready.tmp && mv ready.tmp ready.txt
while :; do sleep 0.1; done
"#;

/// `/bin/sh <script>`, the script written once per run in cargo's directory for test data.
fn script_command() -> String {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gastown-drain-test-agent.sh");
        std::fs::write(&path, SCRIPT).unwrap();
        path
    });
    format!("/bin/sh {}", path.display())
}

/// The debug server as this test's own child, killed (and its work directory removed) when
/// dropped.
struct Drainable {
    child: Child,
    addr: SocketAddr,
    workdir: PathBuf,
}

impl Drop for Drainable {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// How the grace is given.
#[derive(Clone, Copy)]
enum Grace<'a> {
    Flag(&'a str),
    Env(&'a str),
}

impl Drainable {
    /// The debug server with the test agent, local git allowed, `worker` as the worker.
    fn start(worker: &FakeWorker, grace: Grace<'_>) -> Drainable {
        let workdir = temp_dir("drain-workdir");
        Drainable::start_with(worker, grace, workdir, &script_command(), &[], &[])
    }

    /// As [`Drainable::start`], in `workdir`, running `agent_command`, with `more` arguments
    /// and `more_env` in its environment.
    fn start_with(
        worker: &FakeWorker,
        grace: Grace<'_>,
        workdir: PathBuf,
        agent_command: &str,
        more: &[&str],
        more_env: &[(&str, &str)],
    ) -> Drainable {
        let url = worker.url();
        let mut args = vec![
            "--read-timeout-ms",
            "1500",
            "--workdir",
            workdir.to_str().unwrap(),
            "--agent-command",
            agent_command,
            "--worker-url",
            &url,
        ];
        args.extend_from_slice(more);
        let mut env = vec![(KEY_ENV, KEY), (ALLOW_LOCAL_GIT_ENV, "1")];
        env.extend_from_slice(more_env);
        match grace {
            Grace::Flag(ms) => args.extend(["--drain-grace-ms", ms]),
            Grace::Env(ms) => env.push((DRAIN_GRACE_MS_ENV, ms)),
        }
        let mut cmd = command(DEBUG_BIN, &env, &args);
        if matches!(grace, Grace::Flag(_)) {
            cmd.env_remove(DRAIN_GRACE_MS_ENV);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        let server = Drainable {
            child,
            addr,
            workdir,
        };
        let (code, body) = server.send(refresh(TOWN, "ctok-1").auth(TOWN));
        assert_eq!(code, 200, "{body}");
        server
    }

    fn send(&self, r: Req) -> (u16, Value) {
        exchange(self.addr, &r.bytes())
    }

    fn work_dir(&self, agent: &str) -> PathBuf {
        std::fs::canonicalize(&self.workdir)
            .unwrap()
            .join(TOWN)
            .join("agents")
            .join(agent)
    }

    /// Starts `body`'s agent and waits until it is ready; its pid.
    fn start_agent(&self, body: &Value) -> u32 {
        let (code, answer) = self.send(req("POST", "/agents/start").json(body).auth(TOWN));
        assert_eq!(code, 200, "{answer}");
        let agent = body["agent_id"].as_str().unwrap();
        let ready = self.work_dir(agent).join("ready.txt");
        let log = self.workdir.join(TOWN).join(format!("agents/{agent}.log"));
        assert!(
            eventually(WAIT, || ready.exists()),
            "agent {agent} not ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        u32::try_from(answer["pid"].as_u64().unwrap()).unwrap()
    }

    /// `SIGTERM` to the server; when it was sent.
    fn sigterm(&self) -> Instant {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with plain integers.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        Instant::now()
    }

    /// Its exit status once it exited, within `limit`.
    fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs git in `dir` as the test's own, isolated from the machine's configuration; its
/// stdout, trimmed.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn git_output(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        // The repositories may be the agent user's: the test reads them as its own user.
        .args(["-c", "safe.directory=*"])
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap()
}

/// A bare repository (`main`: `a.txt`) and a working clone to make branches in.
struct Repo {
    dir: TempDir,
    bare: PathBuf,
    work: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let dir = TempDir::new("drain-repo");
        let bare = dir.0.join("remote.git");
        let work = dir.0.join("work");
        git(
            &dir.0,
            &["init", "--quiet", "--bare", "-b", "main", "remote.git"],
        );
        git(&dir.0, &["init", "--quiet", "-b", "main", "work"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        std::fs::write(work.join("a.txt"), "one\n").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "initial"]);
        git(
            &work,
            &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
        );
        Repo { dir, bare, work }
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// A commit on `branch` from `main`, pushed; its sha.
    fn branch(&self, branch: &str) -> String {
        git(&self.work, &["checkout", "--quiet", "-B", branch, "main"]);
        std::fs::write(self.work.join("b.txt"), "bee\n").unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "-m", "earlier work"]);
        let target = format!("HEAD:refs/heads/{branch}");
        git(&self.work, &["push", "--quiet", "origin", &target]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// The remote's `branch`, if it has it.
    fn head(&self, branch: &str) -> Option<String> {
        let spec = format!("refs/heads/{branch}");
        let out = git_output(&self.bare, &["rev-parse", "--verify", "--quiet", &spec]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `path` as the remote's `branch` holds it.
    fn file(&self, branch: &str, path: &str) -> Option<String> {
        let spec = format!("refs/heads/{branch}:{path}");
        let out = git_output(&self.bare, &["show", &spec]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The message of the remote's `branch`'s head.
    fn message(&self, branch: &str) -> String {
        let spec = format!("refs/heads/{branch}");
        git(&self.bare, &["log", "-1", "--format=%s", &spec])
    }

    /// A `pre-receive` hook in the remote: `body` after the shebang.
    fn hook(&self, body: &str) {
        let hook = self.bare.join("hooks/pre-receive");
        std::fs::write(&hook, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Makes the remote log every push it receives to the returned file.
    fn log_pushes(&self) -> PathBuf {
        let log = self.dir.0.join("pushes.log");
        self.hook(&format!("cat >> '{}'", log.display()));
        log
    }
}

fn rig_agent(agent: &str, rig: &str, url: &str, branch: &str, env: Value) -> Value {
    json!({
        "townId": TOWN,
        "agent_id": agent,
        "role": "polecat",
        "name": agent,
        "rig_id": rig,
        "bead": { "id": "bead-1", "title": "Fix it", "body": "All of it." },
        "git_url": url,
        "default_branch": "main",
        "branch": branch,
        "env": env,
    })
}

/// The exit reports `worker` received for `agent` (of any rig), as JSON.
fn exits_of(worker: &FakeWorker, agent: &str) -> Vec<Value> {
    let tail = format!("/agents/{agent}/exit");
    worker
        .exits()
        .iter()
        .filter(|seen| seen.path.ends_with(&tail))
        .map(|seen| serde_json::from_str(&seen.body).unwrap())
        .collect()
}

/// The one exit report of `agent`.
fn one_exit(worker: &FakeWorker, agent: &str) -> Value {
    let exits = exits_of(worker, agent);
    assert_eq!(exits.len(), 1, "{agent}: {exits:?}");
    exits.into_iter().next().unwrap()
}

/// Whether the process runs: it exists and is no zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[test]
fn sigterm_saves_every_agents_work_to_its_branch_reports_it_and_exits_0() {
    let worker = FakeWorker::start(200, r#"{"ok":true}"#);
    let repo = Repo::new();
    let mut s = Drainable::start(&worker, Grace::Flag("1500"));
    let url = repo.url();
    let (quits, stays) = ("gastown/toast/bead-1", "gastown/nux/bead-2");
    let quitter = s.start_agent(&rig_agent(
        "polecat-1",
        "rig-1",
        &url,
        quits,
        json!({ "TEST_WIP": "half done", "TEST_ON_TERM": "save" }),
    ));
    let stayer = s.start_agent(&rig_agent(
        "polecat-2",
        "rig-1",
        &url,
        stays,
        json!({ "TEST_WIP": "a quarter done", "TEST_ON_TERM": "ignore" }),
    ));
    // A rig agent without a repository to save, and the mayor.
    let mut plain = rig_agent("plain-3", "rig-1", &url, quits, json!({}));
    plain["git_url"] = Value::Null;
    plain["branch"] = Value::Null;
    let plain = s.start_agent(&plain);
    let mayor = s.start_agent(&json!({
        "townId": TOWN,
        "agent_id": "mayor-1",
        "role": "mayor",
        "name": "mayor",
        "env": { "GASTOWN_MAYOR_KEY": "mayor-key-1" },
    }));
    assert!(worker.exits().is_empty());

    let sent = s.sigterm();
    // Draining: a start is refused at once, whatever it asks (this town-less one is 409
    // otherwise), while the other routes keep answering.
    let other = json!({
        "townId": "town-none", "agent_id": "x", "role": "polecat", "name": "x", "env": {},
    });
    let refused = eventually(Duration::from_secs(1), || {
        s.send(req("POST", "/agents/start").json(&other).auth("town-none"))
            .0
            == 503
    });
    assert!(refused, "no 503 from /agents/start while draining");
    let late = rig_agent("late-5", "rig-1", &url, "gastown/late", json!({}));
    let (code, answer) = s.send(req("POST", "/agents/start").json(&late).auth(TOWN));
    assert_eq!(code, 503, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("draining"),
        "{answer}"
    );
    let (code, status) = s.send(req("GET", "/agents/polecat-2/status").auth(TOWN));
    assert_eq!(
        (code, &status["state"]),
        (200, &json!("running")),
        "{status}"
    );

    let exit = s.exit_within(Duration::from_millis(1500) + MARGIN);
    let took = sent.elapsed();
    assert_eq!(
        exit.map(|e| e.code()),
        Some(Some(0)),
        "exit 0 within the grace"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "the agent that ignores SIGTERM holds the drain for the grace: {took:?}"
    );
    for pid in [quitter, stayer, plain, mayor] {
        assert!(!running(pid), "{pid} outlived the drain");
    }

    // Each branch holds its agent's work, committed as WIP, on top of main.
    let main = repo.head("main").unwrap();
    for (branch, wip) in [(quits, "half done\n"), (stays, "a quarter done\n")] {
        assert_eq!(
            repo.file(branch, "wip.txt").as_deref(),
            Some(wip),
            "{branch}"
        );
        assert_eq!(repo.message(branch), WIP_MESSAGE);
        let parent = format!("refs/heads/{branch}^");
        assert_eq!(git(&repo.bare, &["rev-parse", &parent]), main);
    }
    // What the agent saved itself on SIGTERM is in its commit too; the other never got to.
    assert_eq!(
        repo.file(quits, "on-term.txt").as_deref(),
        Some("saved on SIGTERM\n")
    );
    assert_eq!(repo.file(stays, "on-term.txt"), None);
    // The work dir's own files (outside the clone) are not.
    assert_eq!(repo.file(quits, "ready.txt"), None);

    // One report each, with what was saved; the watcher sent nothing of its own.
    let report = one_exit(&worker, "polecat-1");
    assert_eq!(
        report["drained"],
        json!({ "branch": quits, "pushed": true, "head": repo.head(quits).unwrap() })
    );
    assert_eq!(report["exit_code"], 0, "it exited 0 on SIGTERM: {report}");
    let report = one_exit(&worker, "polecat-2");
    assert_eq!(
        report["drained"],
        json!({ "branch": stays, "pushed": true, "head": repo.head(stays).unwrap() })
    );
    assert_eq!(report["exit_code"], Value::Null, "killed: {report}");
    let exits = worker.exits();
    let path = |agent: &str| format!("/api/towns/{TOWN}/rigs/rig-1/agents/{agent}/exit");
    assert!(exits.iter().any(|e| e.path == path("polecat-1")));
    assert!(exits
        .iter()
        .all(|e| e.authorization.as_deref() == Some("Bearer ctok-1")));
    // The agent without a repository: the plain report of a process a signal ended.
    let report = one_exit(&worker, "plain-3");
    assert_eq!(report["exit_code"], Value::Null);
    assert!(report.get("drained").is_none(), "{report}");
    // The mayor's session ends as it always does, with its idle state.
    let idle: Vec<Seen> = worker
        .seen()
        .into_iter()
        .filter(|c| c.path == format!("/api/mayor/{TOWN}/tools/state"))
        .collect();
    assert_eq!(idle.len(), 1, "{idle:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&idle[0].body).unwrap(),
        json!({ "status": "idle" })
    );
    assert!(exits_of(&worker, "mayor-1").is_empty());
    assert_eq!(worker.exits().len(), 3, "{:?}", worker.exits());
}

#[test]
fn an_agent_that_ignores_sigterm_is_killed_after_the_grace() {
    let worker = FakeWorker::start(200, r#"{"ok":true}"#);
    let repo = Repo::new();
    let mut s = Drainable::start(&worker, Grace::Flag("500"));
    let branch = "gastown/toast/bead-1";
    let pid = s.start_agent(&rig_agent(
        "polecat-1",
        "rig-1",
        &repo.url(),
        branch,
        json!({ "TEST_WIP": "stubborn", "TEST_ON_TERM": "ignore" }),
    ));
    let sent = s.sigterm();
    std::thread::sleep(Duration::from_millis(250));
    assert!(running(pid), "killed before the grace was over");
    let exit = s.exit_within(Duration::from_millis(500) + MARGIN);
    let took = sent.elapsed();
    assert_eq!(exit.map(|e| e.code()), Some(Some(0)));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(500) + MARGIN, "{took:?}");
    assert!(!running(pid));
    assert_eq!(repo.file(branch, "wip.txt").as_deref(), Some("stubborn\n"));
    let report = one_exit(&worker, "polecat-1");
    assert_eq!(report["exit_code"], Value::Null, "killed: {report}");
    assert_eq!(
        report["drained"],
        json!({ "branch": branch, "pushed": true, "head": repo.head(branch).unwrap() })
    );
}

#[test]
fn an_agent_that_exits_on_sigterm_does_not_hold_the_drain_for_its_grace() {
    let worker = FakeWorker::start(200, r#"{"ok":true}"#);
    let repo = Repo::new();
    // A long grace, from the environment.
    let mut s = Drainable::start(&worker, Grace::Env("30000"));
    let branch = "gastown/toast/bead-1";
    s.start_agent(&rig_agent(
        "polecat-1",
        "rig-1",
        &repo.url(),
        branch,
        json!({ "TEST_WIP": "quick", "TEST_ON_TERM": "save" }),
    ));
    let sent = s.sigterm();
    let exit = s.exit_within(MARGIN);
    assert_eq!(
        exit.map(|e| e.code()),
        Some(Some(0)),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(repo.file(branch, "wip.txt").as_deref(), Some("quick\n"));
    assert_eq!(
        repo.file(branch, "on-term.txt").as_deref(),
        Some("saved on SIGTERM\n")
    );
    let report = one_exit(&worker, "polecat-1");
    assert_eq!(report["drained"]["pushed"], true, "{report}");
}

#[test]
fn nothing_new_is_not_pushed_and_a_refused_push_is_reported_with_its_error() {
    let worker = FakeWorker::start(200, r#"{"ok":true}"#);
    let (idle_repo, refusing) = (Repo::new(), Repo::new());
    let idle_branch = "gastown/idle/bead-1";
    let before = idle_repo.branch(idle_branch);
    let pushes = idle_repo.log_pushes();
    refusing.hook("echo 'refused by the test' >&2\nexit 1");
    // Grace 0: the agents are killed at once.
    let mut s = Drainable::start(&worker, Grace::Flag("0"));
    s.start_agent(&rig_agent(
        "idle-1",
        "rig-1",
        &idle_repo.url(),
        idle_branch,
        json!({ "TEST_ON_TERM": "ignore" }),
    ));
    let refused_branch = "gastown/refused/bead-2";
    s.start_agent(&rig_agent(
        "refused-2",
        "rig-2",
        &refusing.url(),
        refused_branch,
        json!({ "TEST_WIP": "lost", "TEST_ON_TERM": "ignore" }),
    ));
    let sent = s.sigterm();
    let exit = s.exit_within(MARGIN);
    assert_eq!(
        exit.map(|e| e.code()),
        Some(Some(0)),
        "{:?}",
        sent.elapsed()
    );

    // Nothing new: no commit, no push, the branch where it was.
    assert_eq!(idle_repo.head(idle_branch), Some(before.clone()));
    assert!(!pushes.exists(), "something was pushed");
    let report = one_exit(&worker, "idle-1");
    assert_eq!(
        report["drained"],
        json!({ "branch": idle_branch, "pushed": false, "head": before })
    );

    // Refused: committed in the clone, not on the remote, and the report says why.
    assert_eq!(refusing.head(refused_branch), None);
    let report = one_exit(&worker, "refused-2");
    let drained = &report["drained"];
    assert_eq!(
        (&drained["branch"], &drained["pushed"]),
        (&json!(refused_branch), &json!(false)),
        "{report}"
    );
    assert!(
        drained.get("head").is_none(),
        "the remote has no such branch: {report}"
    );
    let error = drained["error"].as_str().unwrap();
    assert!(
        error.contains("push") && error.contains("pre-receive hook declined"),
        "{error}"
    );
    let clone = s.work_dir("refused-2").join("repo");
    assert_eq!(git(&clone, &["log", "-1", "--format=%s"]), WIP_MESSAGE);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
}

#[test]
fn with_an_agent_user_git_saves_as_the_agent() {
    use gastown_control::agent_user::server_uid;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const NOBODY: u32 = 65534;
    if server_uid() != Some(0) {
        eprintln!("skipped: starting agents as another user needs root");
        return;
    }
    // A directory `nobody` may pass through, holding the script and the server's workdir.
    let base = TempDir::new("drain-agent-user");
    std::fs::set_permissions(&base.0, std::fs::Permissions::from_mode(0o711)).unwrap();
    let script = base.0.join("agent.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The rig's repository is the agent's: it clones and pushes as itself.
    let repo = Repo::new();
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&repo.dir.0)
        .status()
        .unwrap();
    assert!(chown.success());

    let worker = FakeWorker::start(200, r#"{"ok":true}"#);
    let command = format!("/bin/sh {}", script.display());
    let ids = ["--agent-uid", "65534", "--agent-gid", "65534"];
    let mut s = Drainable::start_with(
        &worker,
        Grace::Flag("500"),
        base.0.join("work"),
        &command,
        &ids,
        &[],
    );
    let branch = "gastown/toast/bead-1";
    s.start_agent(&rig_agent(
        "polecat-1",
        "rig-1",
        &repo.url(),
        branch,
        json!({ "TEST_WIP": "as nobody", "TEST_ON_TERM": "ignore" }),
    ));
    s.sigterm();
    let exit = s.exit_within(Duration::from_millis(500) + MARGIN);
    assert_eq!(exit.map(|e| e.code()), Some(Some(0)));

    // git as root would have refused the agent's clone (not its owner) and saved nothing.
    let report = one_exit(&worker, "polecat-1");
    let head = repo.head(branch).expect("the branch was pushed");
    assert_eq!(
        report["drained"],
        json!({ "branch": branch, "pushed": true, "head": head })
    );
    assert_eq!(repo.file(branch, "wip.txt").as_deref(), Some("as nobody\n"));
    // What the save wrote, in the clone and in the remote, is the agent's.
    let clone = s.work_dir("polecat-1").join("repo");
    let object = |git_dir: &Path| git_dir.join("objects").join(&head[..2]).join(&head[2..]);
    for written in [
        clone.join(".git/index"),
        object(&clone.join(".git")),
        object(&repo.bare),
    ] {
        let meta =
            std::fs::metadata(&written).unwrap_or_else(|e| panic!("{}: {e}", written.display()));
        assert_eq!(
            (meta.uid(), meta.gid()),
            (NOBODY, NOBODY),
            "{}",
            written.display()
        );
    }
}

#[test]
fn a_hung_push_is_killed_at_the_saves_deadline_and_reported() {
    let worker = FakeWorker::start(200, r#"{"ok":true}"#);
    let repo = Repo::new();
    let hook_pid = repo.dir.0.join("hook.pid");
    repo.hook(&format!(
        "echo $$ > '{}'\nexec sleep 60",
        hook_pid.display()
    ));
    let mut s = Drainable::start_with(
        &worker,
        Grace::Flag("0"),
        temp_dir("drain-workdir"),
        &script_command(),
        &[],
        &[("GASTOWN_DRAIN_SAVE_MARGIN_MS", "1500")],
    );
    let branch = "gastown/toast/bead-1";
    s.start_agent(&rig_agent(
        "polecat-1",
        "rig-1",
        &repo.url(),
        branch,
        json!({ "TEST_WIP": "stuck", "TEST_ON_TERM": "ignore" }),
    ));
    let sent = s.sigterm();
    let exit = s.exit_within(MARGIN);
    let took = sent.elapsed();
    assert_eq!(exit.map(|e| e.code()), Some(Some(0)), "{took:?}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(
        took < Duration::from_secs(8),
        "held past its deadline: {took:?}"
    );
    let pid: u32 = std::fs::read_to_string(&hook_pid)
        .expect("the push reached the hook")
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || !running(pid)),
        "the hung push outlived the drain"
    );
    assert_eq!(repo.head(branch), None);
    let report = one_exit(&worker, "polecat-1");
    let drained = &report["drained"];
    assert_eq!(
        (&drained["branch"], &drained["pushed"]),
        (&json!(branch), &json!(false)),
        "{report}"
    );
    let error = drained["error"].as_str().unwrap();
    assert!(error.contains("git push took longer"), "{error}");
}

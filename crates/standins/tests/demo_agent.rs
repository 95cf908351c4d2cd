//! The demo agent (`gastown-demo-agent`): end to end as the control server's default agent
//! command, against a local bare repository, a fake worker and the stand-in gateway; then alone,
//! run with the environment the control server would give it.

mod common;

use common::*;
use gastown_core::auth::{sign_sandbox, Keys};
use gastown_core::control::{agent_callback_path, AgentDoneCallback, AgentStatusCallback, KEY_ENV};
use gastown_core::ids::TownId;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(20);

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

const GATEWAY_SECRET: &str = "stand-in-gateway-nextauth-secret-0123456789";

/// `git` with a fixed identity and no system or user config.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Seed")
        .env("GIT_AUTHOR_EMAIL", "seed@example.com")
        .env("GIT_COMMITTER_NAME", "Seed")
        .env("GIT_COMMITTER_EMAIL", "seed@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository on `main`, with one commit when `seeded`; gone with the directory.
fn bare_repo(seeded: bool) -> (TempDir, PathBuf) {
    let dir = TempDir::new("repo");
    git(
        &dir,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            "origin.git",
        ],
    );
    if seeded {
        git(&dir, &["clone", "--quiet", "origin.git", "seed"]);
        let seed = dir.join("seed");
        std::fs::write(seed.join("README.md"), "seed\n").unwrap();
        git(&seed, &["add", "README.md"]);
        git(&seed, &["commit", "--quiet", "-m", "seed"]);
        git(
            &seed,
            &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
        );
    }
    let repo = dir.join("origin.git");
    (dir, repo)
}

fn sandbox_token(town: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let keys = Keys::new(Some(GATEWAY_SECRET), None);
    sign_sandbox(
        &keys,
        "user-7",
        &TownId::parse(town).unwrap(),
        None,
        i64::try_from(now).unwrap(),
        gastown_core::auth::SANDBOX_TOKEN_TTL_SECS,
    )
    .unwrap()
    .0
}

fn calls_of<'a>(seen: &'a [Seen], kind: &str) -> Vec<&'a Seen> {
    seen.iter()
        .filter(|c| c.path.ends_with(&format!("/{kind}")))
        .collect()
}

fn statuses(seen: &[Seen]) -> Vec<String> {
    calls_of(seen, "status")
        .iter()
        .map(|c| {
            serde_json::from_str::<AgentStatusCallback>(&c.body)
                .unwrap()
                .message
        })
        .collect()
}

#[test]
fn the_demo_agent_pushes_its_branch_and_reports_to_the_worker() {
    let town = "town-demo";
    let (_dir, repo) = bare_repo(true);
    let main = git(&repo, &["rev-parse", "refs/heads/main"]);
    let worker = FakeWorker::start(200, "{}");
    worker.delay_first(Duration::from_millis(400));
    let gateway = start_gateway(GATEWAY_SECRET);
    // No --agent-command: the demo agent beside the server's executable.
    let debug_bin = control_debug_bin();
    assert_eq!(
        Path::new(DEMO_BIN).parent(),
        Path::new(&debug_bin).parent(),
        "cargo puts the binaries side by side"
    );
    let s = start(
        &debug_bin,
        &[(KEY_ENV, KEY)],
        &["--worker-url", "http://127.0.0.1:9"],
    );
    let jwt = sandbox_token(town);
    assert_eq!(refresh(town, "ctok-old").auth(town).send(&s).0, 200);
    let settings = json!({ "town": { "role_agents": {} }, "rigs": {} });
    assert_eq!(sync(&s, town, json!({ "KILO_JWT": jwt }), settings).0, 200);

    let url = format!("file://{}", repo.display());
    let branch = "gastown/toast/bead-42";
    let body = json!({
        "townId": town,
        "agent_id": "polecat-1",
        "role": "polecat",
        "name": "toast",
        "rig_id": "rig-1",
        "bead": { "id": "bead-42", "title": "Add the greeting", "body": "Say hello." },
        "git_url": url,
        "default_branch": "main",
        "branch": branch,
        "model": "kilo/test-model",
        "worker_url": worker.url(),
        "env": {
            "GASTOWN_ALLOW_LOCAL_GIT": "1",
            "GASTOWN_HEARTBEAT_MS": "50",
            "GASTOWN_GIT_AUTHOR_NAME": "Ada Agent",
            "GASTOWN_GIT_AUTHOR_EMAIL": "ada@example.com",
            "GASTOWN_CONTAINER_TOKEN": "ctok-from-env",
            "KILO_GATEWAY_URL": format!("http://{}", gateway.addr),
            // Not a token the gateway takes: the file's must be used.
            "KILO_JWT": "stale.env.token",
        },
    });
    let (code, answer) = start_agent(&s, town, &body);
    assert_eq!(code, 200, "{answer}");
    // While the worker holds the first call, the worker refreshes the container token.
    assert!(eventually(WAIT, || worker.calls() >= 1));
    assert_eq!(refresh(town, "ctok-new").auth(town).send(&s).0, 200);
    assert!(
        eventually(Duration::from_secs(60), || exited(&s, town, "polecat-1")),
        "{:?}",
        worker.seen()
    );
    let log = std::fs::read_to_string(s.canonical_town_dir(town).join("agents/polecat-1.log"))
        .unwrap_or_default();
    assert_eq!(
        status(&s, town, "polecat-1").1["exit_code"],
        0,
        "agent log:\n{log}"
    );

    let seen = worker.seen();
    let prefix = agent_callback_path(town, "rig-1", "polecat-1", "");
    for (i, call) in seen.iter().enumerate() {
        assert_eq!(call.method, "POST");
        assert!(call.path.starts_with(&prefix), "{}", call.path);
        assert_eq!(call.content_type.as_deref(), Some("application/json"));
        let token = if i == 0 { "ctok-old" } else { "ctok-new" };
        assert_eq!(
            call.authorization.as_deref(),
            Some(format!("Bearer {token}").as_str()),
            "call {i} ({}): the token is read on every call",
            call.path
        );
    }
    assert!(
        seen[0].path.ends_with("/heartbeat"),
        "the heartbeat comes first"
    );
    assert!(calls_of(&seen, "heartbeat").iter().all(|c| c.body == "{}"));
    let messages = statuses(&seen);
    assert!(messages.contains(&format!("cloning {url}")), "{messages:?}");
    assert!(
        messages.contains(&"model kilo/test-model answered: stand-in gateway reply".to_owned()),
        "{messages:?}"
    );
    let done = calls_of(&seen, "done");
    assert_eq!(done.len(), 1, "{seen:?}");
    let done: AgentDoneCallback = serde_json::from_str(&done[0].body).unwrap();
    assert_eq!(
        done,
        AgentDoneCallback {
            summary: format!("committed gastown/bead-42.md on {branch}"),
            branch: Some(branch.to_owned()),
            pr_url: None,
        }
    );
    let after_done = seen
        .iter()
        .skip_while(|c| !c.path.ends_with("/done"))
        .skip(1);
    // After done: heartbeats, and the control server's report of the process's end.
    assert!(after_done
        .clone()
        .all(|c| c.path.ends_with("/heartbeat") || c.path.ends_with("/exit")));

    // The branch is in the repository: one commit on main, by the configured identity.
    let reference = format!("refs/heads/{branch}");
    assert_eq!(git(&repo, &["rev-parse", &format!("{reference}^")]), main);
    let who = git(
        &repo,
        &["log", "-1", "--format=%an|%ae|%cn|%ce", &reference],
    );
    assert_eq!(who, "Ada Agent|ada@example.com|Ada Agent|ada@example.com");
    let message = git(&repo, &["log", "-1", "--format=%B", &reference]);
    assert!(message.starts_with("Add the greeting\n"), "{message}");
    assert!(
        message.ends_with("Co-authored-by: Kilo <kilo@gastown.invalid>"),
        "{message}"
    );
    let file = git(&repo, &["show", &format!("{reference}:gastown/bead-42.md")]);
    assert_eq!(file, "# Add the greeting\n\nSay hello.");

    // The gateway was called once, with the town's sandbox token from the gateway env file.
    let (code, usage) = req("GET", "/debug/usage").send(&gateway);
    assert_eq!(code, 200);
    let calls = usage["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{usage}");
    assert_eq!(
        (
            &calls[0]["town_id"],
            &calls[0]["model"],
            &calls[0]["user_id"]
        ),
        (&json!(town), &json!("kilo/test-model"), &json!("user-7"))
    );
    // No token in the log.
    for secret in ["ctok-old", "ctok-new", "ctok-from-env", jwt.as_str()] {
        assert!(!log.contains(secret), "the log shows a token:\n{log}");
    }
}

/// Runs the demo agent alone with `env` (and PATH), in a new work dir.
fn run_demo(env: &[(&str, &str)], work: &Path) -> Output {
    Command::new(DEMO_BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", work)
        .env("GASTOWN_WORK_DIR", work)
        .envs(env.iter().copied())
        .current_dir(work)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The env of a demo agent calling `worker` back, its container token in a file.
fn demo_env(worker: &FakeWorker, work: &Path) -> Vec<(String, String)> {
    let token_file = work.join("token");
    std::fs::write(&token_file, "ctok-file\n").unwrap();
    [
        ("GASTOWN_WORKER_URL", worker.url()),
        ("GASTOWN_TOWN_ID", "town-a".to_owned()),
        ("GASTOWN_RIG_ID", "rig-1".to_owned()),
        ("GASTOWN_AGENT_ID", "agent-1".to_owned()),
        ("GASTOWN_AGENT_NAME", "toast".to_owned()),
        ("GASTOWN_BEAD_ID", "b1".to_owned()),
        ("GASTOWN_BEAD_TITLE", "A title".to_owned()),
        ("GASTOWN_BEAD_BODY", "A body.".to_owned()),
        ("GASTOWN_HEARTBEAT_MS", "50".to_owned()),
        (
            "GASTOWN_CONTAINER_TOKEN_FILE",
            token_file.to_str().unwrap().to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn as_pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn the_demo_agent_starts_an_orphan_branch_in_an_empty_repository() {
    let (_dir, repo) = bare_repo(false);
    let worker = FakeWorker::start(200, "{}");
    let work = TempDir::new("demo-work");
    let mut env = demo_env(&worker, &work);
    env.extend([
        (
            "GASTOWN_GIT_URL".to_owned(),
            repo.to_str().unwrap().to_owned(),
        ),
        ("GASTOWN_ALLOW_LOCAL_GIT".to_owned(), "1".to_owned()),
        ("GASTOWN_DISABLE_AI_COAUTHOR".to_owned(), "true".to_owned()),
    ]);
    let out = run_demo(&as_pairs(&env), &work);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    // The default branch name and identity; a first commit with no parent and no trailer.
    let reference = "refs/heads/gastown/toast/b1";
    assert_eq!(git(&repo, &["rev-list", "--count", reference]), "1");
    let who = git(&repo, &["log", "-1", "--format=%an|%ae|%cn|%ce", reference]);
    assert_eq!(
        who,
        "Gastown Agent|agent@gastown.invalid|Gastown Agent|agent@gastown.invalid"
    );
    let message = git(&repo, &["log", "-1", "--format=%B", reference]);
    assert!(!message.contains("Co-authored-by"), "{message}");
    assert_eq!(
        git(&repo, &["show", &format!("{reference}:gastown/b1.md")]),
        "# A title\n\nA body."
    );
    let seen = worker.seen();
    assert!(seen
        .iter()
        .all(|c| c.authorization.as_deref() == Some("Bearer ctok-file")));
    let messages = statuses(&seen);
    assert!(
        messages.contains(&"no KILO_GATEWAY_URL: the model call is skipped".to_owned()),
        "{messages:?}"
    );
    assert_eq!(calls_of(&seen, "done").len(), 1);
    assert!(!stderr.contains("ctok-file"));
}

#[test]
fn the_demo_agent_refuses_a_local_repository_without_the_switch() {
    let (_dir, repo) = bare_repo(true);
    let worker = FakeWorker::start(200, "{}");
    for url in [
        format!("file://{}", repo.display()),
        repo.display().to_string(),
    ] {
        let work = TempDir::new("demo-work");
        let mut env = demo_env(&worker, &work);
        env.push(("GASTOWN_GIT_URL".to_owned(), url.clone()));
        let before = worker.calls();
        let out = run_demo(&as_pairs(&env), &work);
        assert_eq!(out.status.code(), Some(2), "{url}");
        let seen: Vec<Seen> = worker.seen().into_iter().skip(before).collect();
        assert!(calls_of(&seen, "done").is_empty(), "no done: {seen:?}");
        let messages = statuses(&seen);
        assert!(
            messages
                .iter()
                .any(|m| m.contains("GASTOWN_ALLOW_LOCAL_GIT=1") && m.contains("refused")),
            "{messages:?}"
        );
        assert!(!work.join("repo").exists(), "nothing was cloned");
    }
    assert_eq!(
        git(&repo, &["for-each-ref", "--format=%(refname)"]),
        "refs/heads/main"
    );
}

#[test]
fn the_demo_agent_fails_with_a_status_when_the_clone_fails() {
    let worker = FakeWorker::start(200, "{}");
    let work = TempDir::new("demo-work");
    let mut env = demo_env(&worker, &work);
    env.extend([
        (
            "GASTOWN_GIT_URL".to_owned(),
            "/nonexistent/repo.git".to_owned(),
        ),
        ("GASTOWN_ALLOW_LOCAL_GIT".to_owned(), "1".to_owned()),
    ]);
    let out = run_demo(&as_pairs(&env), &work);
    assert_eq!(out.status.code(), Some(1));
    let seen = worker.seen();
    assert!(calls_of(&seen, "done").is_empty());
    let messages = statuses(&seen);
    assert!(
        messages.iter().any(|m| m.starts_with("git clone failed")),
        "{messages:?}"
    );
}

#[test]
fn the_demo_agent_crash_directive_exits_at_once_without_a_callback() {
    let worker = FakeWorker::start(200, "{}");
    let work = TempDir::new("demo-work");
    let mut env = demo_env(&worker, &work);
    env.retain(|(k, _)| k != "GASTOWN_BEAD_BODY");
    env.push((
        "GASTOWN_BEAD_BODY".to_owned(),
        "please [demo:crash] now".to_owned(),
    ));
    let out = run_demo(&as_pairs(&env), &work);
    assert_eq!(out.status.code(), Some(3));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(worker.calls(), 0);
}

#[test]
fn the_demo_agent_hang_directive_sends_no_heartbeat() {
    let worker = FakeWorker::start(200, "{}");
    let work = TempDir::new("demo-work");
    let mut env = demo_env(&worker, &work);
    env.retain(|(k, _)| k != "GASTOWN_BEAD_BODY");
    env.push(("GASTOWN_BEAD_BODY".to_owned(), "[demo:hang]".to_owned()));
    let mut child = Command::new(DEMO_BIN)
        .env_clear()
        .envs(as_pairs(&env))
        .current_dir(&work)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        assert!(matches!(child.try_wait(), Ok(None)), "it hangs");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(worker.calls(), 0, "a stalled agent sends no heartbeat");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A stand-in for the GitHub CLI's `gh auth token`: prints `GH_TOKEN` when it has one, else
/// fails as gh does without a token.
const FAKE_GH_AUTH_TOKEN: &str = r#"#!/bin/sh
if [ "$1 $2" != "auth token" ]; then echo "fake gh: only auth token" >&2; exit 2; fi
if [ -n "$GH_TOKEN" ]; then echo "$GH_TOKEN"; exit 0; fi
echo "no oauth token found for github.com" >&2
exit 1
"#;

#[test]
fn the_demo_agent_probes_gh_through_the_shim_and_the_org_of_its_config() {
    use std::os::unix::fs::PermissionsExt;
    let town = "town-probe";
    let dir = TempDir::new("fake-gh");
    let fake_gh = dir.join("gh");
    std::fs::write(&fake_gh, FAKE_GH_AUTH_TOKEN).unwrap();
    std::fs::set_permissions(&fake_gh, std::fs::Permissions::from_mode(0o755)).unwrap();
    // One fake worker for the callbacks and the git-token route: every answer is a GitHub
    // App token `ghs_<request number>.tok`.
    let expires_at = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
        + 3600;
    let worker = FakeWorker::start(
        200,
        &json!({ "token": "ghs_{n}.tok", "expires_at": expires_at, "source": "github_app" })
            .to_string(),
    );
    let s = start(
        &control_debug_bin(),
        &[(KEY_ENV, KEY)],
        &[
            "--worker-url",
            &worker.url(),
            "--gh-path",
            fake_gh.to_str().unwrap(),
        ],
    );
    assert_eq!(refresh(town, "ctok-1").auth(town).send(&s).0, 200);
    let body = json!({
        "townId": town,
        "agent_id": "polecat-1",
        "role": "polecat",
        "name": "toast",
        "rig_id": "rig-1",
        "bead": { "id": "bead-1", "title": "Probe", "body": "[demo:gh] [demo:org]" },
        "git_url": "https://github.com/acme/app.git",
        "worker_url": worker.url(),
        "organization_id": "org-9",
        "env": { "GASTOWN_HEARTBEAT_MS": "5000" },
    });
    let (code, answer) = start_agent(&s, town, &body);
    assert_eq!(code, 200, "{answer}");
    assert!(eventually(WAIT, || exited(&s, town, "polecat-1")));
    let log = std::fs::read_to_string(s.canonical_town_dir(town).join("agents/polecat-1.log"))
        .unwrap_or_default();
    assert_eq!(status(&s, town, "polecat-1").1["exit_code"], 0, "{log}");

    let seen = worker.seen();
    // The start asked once (the session's identity), then the shim for its own run of gh.
    let path = gastown_core::control::git_token_path(town, "rig-1");
    let n = 1 + seen
        .iter()
        .rposition(|c| c.path == path)
        .expect("the shim asked the worker for the rig's token");
    assert_eq!(
        seen.iter().filter(|c| c.path == path).count(),
        2,
        "{seen:?}"
    );
    let token = format!("ghs_{n}.tok");
    let messages = statuses(&seen);
    assert_eq!(
        messages,
        [
            format!(
                "[demo:gh] gh has a token: sha256 {}",
                gastown_standins::demo_agent::fingerprint(&token)
            ),
            "[demo:org] kilocodeOrganizationId=org-9 GASTOWN_ORGANIZATION_ID=org-9".to_owned(),
        ]
    );
    let done: AgentDoneCallback = serde_json::from_str(&calls_of(&seen, "done")[0].body).unwrap();
    assert_eq!(done.branch, None, "no git work");
    assert!(
        seen.iter().all(|c| !c.body.contains(&token)),
        "never the token"
    );
    assert!(!log.contains(&token), "{log}");
}

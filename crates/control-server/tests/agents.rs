//! The town's agents as the worker drives them (`/agents/start`, `/agents/:id/stop`,
//! `/agents/:id/status`, and `/stop` of the town), with a shell script as the agent command;
//! then the demo agent end to end against a local bare repository, a fake worker and the
//! stand-in gateway.

mod common;

use common::*;
use gastown_core::auth::{sign_sandbox, Keys};
use gastown_core::control::{
    agent_callback_path, AgentDoneCallback, AgentStatusCallback, CONTAINER_TOKEN_FILE, KEY_ENV,
};
use gastown_core::ids::TownId;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DEMO_BIN: &str = env!("CARGO_BIN_EXE_gastown-demo-agent");
const WAIT: Duration = Duration::from_secs(20);
/// Set on the server's process only: an agent must never see it.
const SERVER_ONLY: (&str, &str) = ("GASTOWN_TEST_SERVER_ONLY", "server-side-value");
const WORKER: &str = "http://127.0.0.1:9";

/// The test agent: dumps its environment and directory, prints a line, then sleeps
/// (`TEST_MODE=sleep`, replacing the shell so a kill reaches it) or exits `TEST_EXIT`.
const SCRIPT: &str = r#"env > env.txt
pwd > pwd.txt
echo "test agent output"
if [ "$TEST_MODE" = sleep ]; then exec sleep 30; fi
exit "${TEST_EXIT:-0}"
"#;

/// `/bin/sh <script>`: the script is read, never executed itself, so it cannot be busy. It
/// lives in cargo's directory for test data, written once per run.
fn script_command() -> String {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gastown-test-agent.sh");
        std::fs::write(&path, SCRIPT).unwrap();
        path
    });
    format!("/bin/sh {}", path.display())
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        TempDir(temp_dir(name))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

/// The debug server with the test agent as its agent command and a worker URL.
fn agent_server() -> Server {
    let command = script_command();
    start(
        DEBUG_BIN,
        &[(KEY_ENV, KEY), SERVER_ONLY],
        &[
            "--read-timeout-ms",
            "1500",
            "--agent-command",
            &command,
            "--worker-url",
            WORKER,
        ],
    )
}

fn start_body(town: &str, agent: &str, env: Value) -> Value {
    json!({
        "townId": town,
        "agent_id": agent,
        "role": "polecat",
        "name": "toast",
        "rig_id": "rig-1",
        "bead": { "id": "bead-1", "title": "Fix it", "body": "All of it." },
        "git_url": "https://example.com/r.git",
        "default_branch": "main",
        "branch": "gastown/toast/bead-1",
        "model": "kilo/auto",
        "env": env,
    })
}

fn start_agent(s: &Server, town: &str, body: &Value) -> (u16, Value) {
    req("POST", "/agents/start").json(body).auth(town).send(s)
}

fn sleeper(s: &Server, town: &str, agent: &str) -> u32 {
    let (status, body) = start_agent(
        s,
        town,
        &start_body(town, agent, json!({ "TEST_MODE": "sleep" })),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "running");
    u32::try_from(body["pid"].as_u64().unwrap()).unwrap()
}

fn status(s: &Server, town: &str, agent: &str) -> (u16, Value) {
    req("GET", &format!("/agents/{agent}/status"))
        .auth(town)
        .send(s)
}

fn stop_agent(s: &Server, town: &str, agent: &str) -> (u16, Value) {
    req("POST", &format!("/agents/{agent}/stop"))
        .json(&json!({ "townId": town }))
        .auth(town)
        .send(s)
}

fn started(s: &Server, town: &str) {
    assert_eq!(refresh(town, "ctok-1").auth(town).send(s).0, 200);
}

fn exited(s: &Server, town: &str, agent: &str) -> bool {
    status(s, town, agent).1["state"] == "exited"
}

/// Whether a process with this pid exists (Linux: `/proc`).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn work_dir(s: &Server, town: &str, agent: &str) -> PathBuf {
    s.canonical_town_dir(town).join("agents").join(agent)
}

/// The `NAME=value` lines of an `env` dump (no value here spans lines).
fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn an_agent_runs_in_its_own_dir_with_only_the_env_it_is_given() {
    let s = agent_server();
    started(&s, "town-a");
    let env = json!({ "FROM_BODY": "yes", "GASTOWN_AGENT_ID": "forged", "TEST_EXIT": "7" });
    let (code, body) = start_agent(&s, "town-a", &start_body("town-a", "agent-1", env));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (&body["agent_id"], &body["state"], &body["exit_code"]),
        (&json!("agent-1"), &json!("running"), &Value::Null)
    );
    assert!(body["pid"].as_u64().is_some_and(|p| p > 0), "{body}");
    assert!(eventually(WAIT, || exited(&s, "town-a", "agent-1")));
    let (code, body) = status(&s, "town-a", "agent-1");
    assert_eq!(code, 200);
    assert_eq!(body["exit_code"], 7, "{body}");

    let town_dir = s.canonical_town_dir("town-a");
    let work = work_dir(&s, "town-a", "agent-1");
    let env = read_env(&work.join("env.txt"));
    let text = |p: &Path| p.to_str().unwrap().to_owned();
    let expected = BTreeMap::from([
        ("GASTOWN_TOWN_ID", "town-a".to_owned()),
        ("GASTOWN_AGENT_ID", "agent-1".to_owned()),
        ("GASTOWN_AGENT_ROLE", "polecat".to_owned()),
        ("GASTOWN_AGENT_NAME", "toast".to_owned()),
        ("GASTOWN_RIG_ID", "rig-1".to_owned()),
        ("GASTOWN_BEAD_ID", "bead-1".to_owned()),
        ("GASTOWN_BEAD_TITLE", "Fix it".to_owned()),
        ("GASTOWN_BEAD_BODY", "All of it.".to_owned()),
        ("GASTOWN_GIT_URL", "https://example.com/r.git".to_owned()),
        ("GASTOWN_DEFAULT_BRANCH", "main".to_owned()),
        ("GASTOWN_BRANCH", "gastown/toast/bead-1".to_owned()),
        ("GASTOWN_MODEL", "kilo/auto".to_owned()),
        ("GASTOWN_WORKER_URL", WORKER.to_owned()),
        (
            "GASTOWN_CONTAINER_TOKEN_FILE",
            text(&town_dir.join(CONTAINER_TOKEN_FILE)),
        ),
        (
            "GASTOWN_GATEWAY_ENV_FILE",
            text(&town_dir.join(".env.gateway")),
        ),
        ("GIT_CONFIG_GLOBAL", text(&town_dir.join("gitconfig"))),
        ("HOME", text(&work)),
        ("GASTOWN_WORK_DIR", text(&work)),
        ("FROM_BODY", "yes".to_owned()),
        ("TEST_EXIT", "7".to_owned()),
    ]);
    for (name, value) in &expected {
        assert_eq!(env.get(*name), Some(value), "{name}");
    }
    assert!(env.contains_key("PATH"));
    // Nothing of the server's environment but PATH: only what the shell adds itself.
    for name in env.keys() {
        assert!(
            expected.contains_key(name.as_str())
                || ["PATH", "PWD", "SHLVL", "_", "OLDPWD"].contains(&name.as_str()),
            "{name} leaked into the agent"
        );
    }
    assert!(!env.contains_key(SERVER_ONLY.0) && !env.contains_key(KEY_ENV));
    let pwd = std::fs::read_to_string(work.join("pwd.txt")).unwrap();
    assert_eq!(pwd.trim(), text(&work));

    // The output is in the log beside the work dir (private), not in it.
    let log_path = town_dir.join("agents/agent-1.log");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("test agent output"), "{log}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    // A new start empties the work dir and appends to the log.
    std::fs::write(work.join("left-behind"), "x").unwrap();
    let (code, _) = start_agent(&s, "town-a", &start_body("town-a", "agent-1", json!({})));
    assert_eq!(code, 200);
    assert!(eventually(WAIT, || exited(&s, "town-a", "agent-1")));
    assert_eq!(status(&s, "town-a", "agent-1").1["exit_code"], 0);
    assert!(!work.join("left-behind").exists());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.matches("test agent output").count(), 2, "{log}");
    let (_, town) = town_state(&s, "town-a");
    assert_eq!(town["agents"][0]["starts"], 2, "{town}");
    assert_eq!(town["agents_start_attempts"], 2);
}

#[test]
fn stop_kills_a_running_agent_and_is_idempotent() {
    let s = agent_server();
    started(&s, "town-a");
    let pid = sleeper(&s, "town-a", "agent-1");
    assert!(eventually(WAIT, || work_dir(&s, "town-a", "agent-1")
        .join("pwd.txt")
        .exists()));
    assert_eq!(status(&s, "town-a", "agent-1").1["state"], "running");
    assert!(alive(pid));

    assert_eq!(
        stop_agent(&s, "town-a", "agent-1"),
        (200, json!({ "ok": true, "stopped": true }))
    );
    let (code, body) = status(&s, "town-a", "agent-1");
    assert_eq!(code, 200);
    assert_eq!(
        body,
        json!({ "agent_id": "agent-1", "state": "exited", "pid": pid, "exit_code": null }),
        "killed by a signal: no exit code"
    );
    assert!(!alive(pid), "the process is gone (and reaped)");
    assert_eq!(stop_agent(&s, "town-a", "agent-1").1["stopped"], false);
    assert_eq!(
        stop_agent(&s, "town-a", "never-started"),
        (200, json!({ "ok": true, "stopped": false }))
    );
    assert_eq!(status(&s, "town-a", "never-started").0, 404);
}

#[test]
fn stopping_the_town_kills_its_agents_and_only_its_own() {
    let s = agent_server();
    started(&s, "town-a");
    started(&s, "town-b");
    let a = sleeper(&s, "town-a", "agent-1");
    let b = sleeper(&s, "town-b", "agent-1");
    let stop = req("POST", "/stop")
        .json(&json!({ "townId": "town-a" }))
        .auth("town-a");
    assert_eq!(stop.send(&s), (200, json!({ "ok": true, "stopped": true })));
    assert_eq!(status(&s, "town-a", "agent-1").1["state"], "exited");
    assert!(!alive(a));
    assert_eq!(status(&s, "town-b", "agent-1").1["state"], "running");
    assert!(alive(b));
    // Its token went with it: no agent starts until the worker starts the town again.
    let again = start_agent(&s, "town-a", &start_body("town-a", "agent-2", json!({})));
    assert_eq!(again.0, 409);
    // The debug view still shows what happened to the stopped town's agent.
    let (code, town) = town_state(&s, "town-a");
    assert_eq!(code, 200);
    assert_eq!(town["token"], Value::Null);
    assert_eq!(town["agents"][0]["state"], "exited");
    assert_eq!(stop_agent(&s, "town-b", "agent-1").1["stopped"], true);
}

#[test]
fn a_new_start_of_a_running_agent_replaces_its_process() {
    let s = agent_server();
    started(&s, "town-a");
    let first = sleeper(&s, "town-a", "agent-1");
    let second = sleeper(&s, "town-a", "agent-1");
    assert_ne!(first, second);
    assert!(!alive(first), "the old process was killed");
    let (_, body) = status(&s, "town-a", "agent-1");
    assert_eq!(
        (&body["state"], &body["pid"]),
        (&json!("running"), &json!(second))
    );
    let (_, town) = town_state(&s, "town-a");
    let agents = town["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{town}");
    assert_eq!(agents[0]["starts"], 2);
    assert_eq!(agents[0]["pid"], second);
    assert_eq!(stop_agent(&s, "town-a", "agent-1").1["stopped"], true);
    assert!(!alive(second));
}

#[test]
fn a_town_without_a_container_token_is_not_started() {
    let s = agent_server();
    let body = start_body("town-a", "agent-1", json!({}));
    let (code, answer) = start_agent(&s, "town-a", &body);
    assert_eq!(
        (code, answer),
        (409, json!({ "error": "town not started" }))
    );
    // An env alone is not enough: the agents call the worker with the container token.
    assert_eq!(
        sync(
            &s,
            "town-a",
            json!({ "A": "1" }),
            json!({ "town": { "role_agents": {} }, "rigs": {} })
        )
        .0,
        200
    );
    assert_eq!(start_agent(&s, "town-a", &body).0, 409);
    assert!(!s.canonical_town_dir("town-a").join("agents").exists());
    started(&s, "town-a");
    assert_eq!(start_agent(&s, "town-a", &body).0, 200);
    assert!(eventually(WAIT, || exited(&s, "town-a", "agent-1")));
}

#[test]
fn bad_ids_env_and_worker_urls_are_refused_and_nothing_starts() {
    let s = agent_server();
    started(&s, "town-a");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = start_body("town-a", "agent-1", json!({}));
        change(&mut body);
        body
    };
    let cases = [
        with(&|b| b["agent_id"] = json!("")),
        with(&|b| b["agent_id"] = json!("a/b")),
        with(&|b| b["agent_id"] = json!("..")),
        with(&|b| b["agent_id"] = json!("a b")),
        with(&|b| b["agent_id"] = json!("a.b")),
        with(&|b| b["agent_id"] = json!("settings")),
        with(&|b| b["agent_id"] = json!("x".repeat(129))),
        with(&|b| b["rig_id"] = json!("r/1")),
        with(&|b| b["rig_id"] = json!("a b")),
        with(&|b| b["rig_id"] = json!("")),
        with(&|b| b["env"] = json!({ "1A": "x" })),
        with(&|b| b["env"] = json!({ "A-B": "x" })),
        with(&|b| b["env"] = json!({ "": "x" })),
        with(&|b| b["env"] = json!({ "A": "x\u{0}y" })),
        with(&|b| b["bead"]["title"] = json!("x\u{0}")),
        with(&|b| b["worker_url"] = json!("ftp://worker")),
        with(&|b| b["role"] = json!("boss")),
    ];
    for body in &cases {
        let (code, answer) = start_agent(&s, "town-a", body);
        assert_eq!(code, 400, "{body} -> {answer}");
        assert!(answer["error"].is_string());
        assert!(
            !answer.to_string().contains("x\\u0000y"),
            "a value is never echoed"
        );
    }
    assert!(!s.canonical_town_dir("town-a").join("agents").exists());
    let (_, town) = town_state(&s, "town-a");
    assert_eq!(town["agents"], json!([]));

    // The path's agent id is checked too.
    assert_eq!(stop_agent(&s, "town-a", "a.b").0, 400);
    assert_eq!(status(&s, "town-a", "a%2Fb").0, 400);
    assert_eq!(status(&s, "town-a", "settings").0, 400);

    // With no worker to call back, nothing can start.
    let command = script_command();
    let bare = start(DEBUG_BIN, &[(KEY_ENV, KEY)], &["--agent-command", &command]);
    started(&bare, "town-a");
    let (code, answer) = start_agent(&bare, "town-a", &start_body("town-a", "agent-1", json!({})));
    assert_eq!(
        (code, answer),
        (400, json!({ "error": "no worker url to call back" }))
    );
    let mut named = start_body("town-a", "agent-1", json!({}));
    named["worker_url"] = json!("http://127.0.0.1:9/");
    assert_eq!(start_agent(&bare, "town-a", &named).0, 200);
    assert!(eventually(WAIT, || exited(&bare, "town-a", "agent-1")));
    let env = read_env(&work_dir(&bare, "town-a", "agent-1").join("env.txt"));
    assert_eq!(env["GASTOWN_WORKER_URL"], "http://127.0.0.1:9");
}

#[test]
fn agent_routes_take_the_same_credentials_as_the_others() {
    let s = agent_server();
    started(&s, "town-a");
    started(&s, "town-b");
    let body = start_body("town-a", "agent-1", json!({ "TEST_MODE": "sleep" }));
    let start_req = || req("POST", "/agents/start").json(&body);
    let stop = || req("POST", "/agents/agent-1/stop").json(&json!({ "townId": "town-a" }));
    let get = || req("GET", "/agents/agent-1/status");
    for r in [start_req(), stop(), get()] {
        assert_eq!(r.send(&s).0, 401, "no credentials");
    }
    for r in [start_req(), stop(), get()] {
        assert_eq!(r.auth_as("town-a", &secret("town-b")).send(&s).0, 401);
    }
    assert_eq!(
        start_req().auth("town-b").send(&s).0,
        403,
        "body for another town"
    );
    assert_eq!(stop().auth("town-b").send(&s).0, 403);
    let plain = req("POST", "/agents/start")
        .raw("text/plain", body.to_string().as_bytes())
        .auth("town-a");
    assert_eq!(plain.send(&s).0, 415);
    assert_eq!(req("GET", "/agents/start").auth("town-a").send(&s).0, 405);
    assert_eq!(
        req("POST", "/agents/agent-1/status")
            .json(&json!({}))
            .auth("town-a")
            .send(&s)
            .0,
        405
    );
    let (_, town) = town_state(&s, "town-a");
    assert_eq!(town["agents_start_attempts"], 0, "nothing got through");

    let pid = sleeper(&s, "town-a", "agent-1");
    // Another town's credentials neither see nor stop it.
    assert_eq!(get().auth("town-b").send(&s).0, 404);
    let other = req("POST", "/agents/agent-1/stop")
        .json(&json!({ "townId": "town-b" }))
        .auth("town-b");
    assert_eq!(other.send(&s).1["stopped"], false);
    assert!(alive(pid));
    assert_eq!(stop().auth("town-a").send(&s).1["stopped"], true);

    // The routes are in the production binary too, behind its own town's secret.
    let command = script_command();
    let prod = start(
        PROD_BIN,
        &[
            (gastown_core::control::SECRET_ENV, &secret("town-a")),
            (gastown_core::control::TOWN_ID_ENV, "town-a"),
        ],
        &["--agent-command", &command, "--worker-url", WORKER],
    );
    assert_eq!(start_req().auth("town-a").send(&prod).0, 409);
    assert_eq!(start_req().auth("town-b").send(&prod).0, 401);
    started(&prod, "town-a");
    let (code, answer) = start_agent(&prod, "town-a", &start_body("town-a", "agent-1", json!({})));
    assert_eq!(code, 200, "{answer}");
    assert!(eventually(WAIT, || exited(&prod, "town-a", "agent-1")));
}

#[test]
fn at_most_32_agents_run_at_once() {
    let s = agent_server();
    started(&s, "town-a");
    started(&s, "town-b");
    let pids: Vec<u32> = (0..32)
        .map(|i| {
            sleeper(
                &s,
                if i % 2 == 0 { "town-a" } else { "town-b" },
                &format!("a{i}"),
            )
        })
        .collect();
    let one_more = start_body("town-a", "a32", json!({ "TEST_MODE": "sleep" }));
    let (code, answer) = start_agent(&s, "town-a", &one_more);
    assert_eq!(
        (code, answer),
        (503, json!({ "error": "too many agents running" }))
    );
    assert_eq!(status(&s, "town-a", "a32").0, 404, "nothing started");
    // Replacing a running agent at the cap is fine: the count stays.
    let replaced = sleeper(&s, "town-a", "a0");
    assert!(!alive(pids[0]));
    // One stopped makes room for one.
    assert_eq!(stop_agent(&s, "town-a", "a2").1["stopped"], true);
    assert_eq!(start_agent(&s, "town-a", &one_more).0, 200);
    assert_eq!(
        start_agent(&s, "town-b", &start_body("town-b", "a33", json!({}))).0,
        503
    );

    for town in ["town-a", "town-b"] {
        let stop = req("POST", "/stop")
            .json(&json!({ "townId": town }))
            .auth(town);
        assert_eq!(stop.send(&s).0, 200);
    }
    for pid in pids.iter().skip(1).chain([&replaced]) {
        assert!(!alive(*pid), "{pid}");
    }
}

#[test]
fn the_fail_mode_refuses_every_start_and_counts_the_attempts() {
    let s = agent_server();
    let fail = |modes: Value| {
        req("POST", "/debug/fail")
            .json(&modes)
            .auth("e2e-harness")
            .send(&s)
            .0
    };
    assert_eq!(fail(json!({ "agents_start": true })), 200);
    let body = start_body("town-a", "agent-1", json!({}));
    let (code, answer) = start_agent(&s, "town-a", &body);
    assert_eq!(code, 503, "{answer}");
    // Counted even though the town has no token yet.
    let (code, town) = town_state(&s, "town-a");
    assert_eq!(code, 200, "{town}");
    assert_eq!(
        (
            &town["agents_start_attempts"],
            &town["token"],
            &town["agents"]
        ),
        (&json!(1), &Value::Null, &json!([]))
    );
    started(&s, "town-a");
    assert_eq!(start_agent(&s, "town-a", &body).0, 503);
    assert_eq!(town_state(&s, "town-a").1["agents_start_attempts"], 2);
    assert_eq!(town_state(&s, "town-z").0, 404, "a town never heard of");

    assert_eq!(fail(json!({})), 200);
    assert_eq!(start_agent(&s, "town-a", &body).0, 200);
    let (_, town) = town_state(&s, "town-a");
    assert_eq!(town["agents_start_attempts"], 3);
    assert_eq!(town["agents"][0]["agent_id"], "agent-1");
    assert_eq!(town["agents"][0]["starts"], 1);
    assert!(town["agents"][0]["pid"].is_u64());
    assert!(eventually(WAIT, || exited(&s, "town-a", "agent-1")));
    let (_, town) = town_state(&s, "town-a");
    assert_eq!(
        (&town["agents"][0]["state"], &town["agents"][0]["exit_code"]),
        (&json!("exited"), &json!(0))
    );
}

// ---- The demo agent ----

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
    assert_eq!(
        Path::new(DEMO_BIN).parent(),
        Path::new(DEBUG_BIN).parent(),
        "cargo puts the binaries side by side"
    );
    let s = start(
        DEBUG_BIN,
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
    assert!(after_done.clone().all(|c| c.path.ends_with("/heartbeat")));

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

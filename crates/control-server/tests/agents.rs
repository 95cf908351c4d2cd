//! The town's agents as the worker drives them (`/agents/start`, `/agents/:id/stop`,
//! `/agents/:id/status`, and `/stop` of the town), with a shell script as the agent command.
//! The demo agent, the default agent command, is tested with the stand-ins
//! (`crates/standins/tests/demo_agent.rs`).

mod common;

use common::*;
use gastown_core::control::{CONTAINER_TOKEN_FILE, KEY_ENV};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
/// Set on the server's process only: an agent must never see it.
const SERVER_ONLY: (&str, &str) = ("GASTOWN_TEST_SERVER_ONLY", "server-side-value");
const WORKER: &str = "http://127.0.0.1:9";

/// The test agent: dumps its environment and directory, prints a line, then sleeps
/// (`TEST_MODE=sleep`, replacing the shell so a kill reaches it) or exits `TEST_EXIT`. With
/// `TEST_CHILDREN=1` it first leaves two sleepers behind, one in its process group and one in
/// a session of its own, their pids in `children.txt`.
const SCRIPT: &str = r#"env > env.txt
pwd > pwd.txt
echo "test agent output"
if [ "$TEST_CHILDREN" = 1 ]; then
  sleep 300 & a=$!
  setsid sleep 301 & b=$!
  echo "$a $b" > children.tmp && mv children.tmp children.txt
fi
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

fn stop_agent(s: &Server, town: &str, agent: &str) -> (u16, Value) {
    req("POST", &format!("/agents/{agent}/stop"))
        .json(&json!({ "townId": town }))
        .auth(town)
        .send(s)
}

fn started(s: &Server, town: &str) {
    assert_eq!(refresh(town, "ctok-1").auth(town).send(s).0, 200);
}

/// Whether a process with this pid exists (Linux: `/proc`).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the process runs: it exists and is no zombie (a reparented child may wait long for
/// its reaping).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// The pids of the sleepers a `TEST_CHILDREN` agent left behind.
fn children(s: &Server, town: &str, agent: &str) -> Vec<u32> {
    let file = work_dir(s, town, agent).join("children.txt");
    assert!(eventually(WAIT, || file.exists()), "no children.txt");
    std::fs::read_to_string(file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn work_dir(s: &Server, town: &str, agent: &str) -> PathBuf {
    s.canonical_town_dir(town).join("agents").join(agent)
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
    let env = read_pairs(&work.join("env.txt"));
    let text = |p: &Path| p.to_str().unwrap().to_owned();
    let mut expected = BTreeMap::from([
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
        // No worker answers here: the session commits as the default author, and says so.
        ("GIT_AUTHOR_NAME", "Gastown Agent".to_owned()),
        ("GIT_AUTHOR_EMAIL", "agent@gastown.invalid".to_owned()),
        ("GIT_COMMITTER_NAME", "Gastown Agent".to_owned()),
        ("GIT_COMMITTER_EMAIL", "agent@gastown.invalid".to_owned()),
        ("GASTOWN_GIT_AUTHOR_NAME", "Gastown Agent".to_owned()),
        (
            "GASTOWN_GIT_AUTHOR_EMAIL",
            "agent@gastown.invalid".to_owned(),
        ),
        ("GASTOWN_COMMIT_IDENTITY", "none".to_owned()),
        ("GASTOWN_AI_AGENT_NAME", "Kilo".to_owned()),
    ]);
    // The run's mark: the server, the town, the agent, the start number.
    let town_name = town_dir.file_name().unwrap().to_str().unwrap();
    let mark = env.get("GASTOWN_AGENT_RUN").expect("the run's mark");
    assert!(mark.ends_with(&format!(":{town_name}/agent-1/1")), "{mark}");
    expected.insert("GASTOWN_AGENT_RUN", mark.clone());
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
fn nothing_an_agent_started_outlives_it_whether_it_exits_or_is_stopped() {
    let s = agent_server();
    started(&s, "town-a");
    // Exits on its own, leaving two sleepers: one in its group, one in a session of its own.
    let body = start_body("town-a", "agent-1", json!({ "TEST_CHILDREN": "1" }));
    assert_eq!(start_agent(&s, "town-a", &body).0, 200);
    let left = children(&s, "town-a", "agent-1");
    assert_eq!(left.len(), 2);
    assert!(
        eventually(WAIT, || left.iter().all(|p| !running(*p))),
        "{left:?} outlived their agent"
    );
    // Stopped while it runs.
    let body = start_body(
        "town-a",
        "agent-2",
        json!({ "TEST_CHILDREN": "1", "TEST_MODE": "sleep" }),
    );
    assert_eq!(start_agent(&s, "town-a", &body).0, 200);
    let left = children(&s, "town-a", "agent-2");
    assert!(
        left.iter().all(|p| running(*p)),
        "running while their agent runs"
    );
    assert_eq!(stop_agent(&s, "town-a", "agent-2").1["stopped"], true);
    assert!(
        eventually(WAIT, || left.iter().all(|p| !running(*p))),
        "{left:?} outlived the stop"
    );
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
    let env = read_pairs(&work_dir(&bare, "town-a", "agent-1").join("env.txt"));
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

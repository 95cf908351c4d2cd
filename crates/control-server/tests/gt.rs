//! `gt`, the agents' tool, run as an agent runs it: the town's `bin/gt` shim on the agent's
//! `PATH`, against a fake worker. Each call goes to the session's callback route with the
//! container token read from the town's file at that moment (a refresh in between is seen),
//! and a refusal is an exit code and one line, never a token.

#![cfg(unix)]

mod common;

use common::*;
use gastown_core::control::{agent_callback_path, KEY_ENV};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const TOWN: &str = "town-a";
const RIG: &str = "rig-1";
const AGENT: &str = "agent-1";
const WAIT: Duration = Duration::from_secs(20);

/// The agent: `gt status`, a token refresh happens meanwhile (the test waits for `ready`),
/// then `gt done`, `gt heartbeat`, a bad `gt done`; each exit code written down.
const AGENT_SCRIPT: &str = r#"gt status "working on it"; echo "status=$?" > gt.txt
: > ready; while [ ! -e go ]; do sleep 0.05; done
gt done --summary "all done" --branch gastown/toast/b1; echo "done=$?" >> gt.txt
gt heartbeat; echo "heartbeat=$?" >> gt.txt
gt done 2> usage.txt; echo "usage=$?" >> gt.txt
"#;

fn wait_for(path: &Path) {
    assert!(
        eventually(WAIT, || path.exists()),
        "{} never appeared",
        path.display()
    );
}

#[test]
fn an_agents_gt_calls_back_with_the_current_container_token() {
    let base = TempDir(temp_dir("gt"));
    std::fs::set_permissions(&base.0, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::write(base.0.join("agent.sh"), AGENT_SCRIPT).unwrap();
    let worker = FakeWorker::start(200, "{}");
    let command = format!("/bin/sh {}", base.0.join("agent.sh").display());
    let url = worker.url();
    let s = start(
        DEBUG_BIN,
        &[(KEY_ENV, KEY)],
        &["--agent-command", &command, "--worker-url", &url],
    );
    assert_eq!(refresh(TOWN, "ctok-1").auth(TOWN).send(&s).0, 200);
    let shim = std::fs::read_to_string(s.town_dir(TOWN).join("bin/gt")).unwrap();
    assert!(
        shim.starts_with("#!/bin/sh\n") && shim.contains("'gt' \"$@\""),
        "{shim}"
    );
    let body = json!({
        "townId": TOWN, "agent_id": AGENT, "role": "polecat", "name": "toast",
        "rig_id": RIG, "worker_url": url, "env": {},
    });
    assert_eq!(start_agent(&s, TOWN, &body).0, 200);
    let work = s.canonical_town_dir(TOWN).join("agents").join(AGENT);
    wait_for(&work.join("ready"));
    // The container token changes mid-session: the next gt call uses the new one.
    assert_eq!(refresh(TOWN, "ctok-2").auth(TOWN).send(&s).0, 200);
    std::fs::write(work.join("go"), "").unwrap();
    assert!(eventually(WAIT, || exited(&s, TOWN, AGENT)));

    let report = std::fs::read_to_string(work.join("gt.txt")).unwrap();
    assert_eq!(report, "status=0\ndone=0\nheartbeat=0\nusage=2\n");
    let usage = std::fs::read_to_string(work.join("usage.txt")).unwrap();
    assert!(usage.contains("done needs --summary"), "{usage}");
    let seen = worker.seen();
    let path = |kind| agent_callback_path(TOWN, RIG, AGENT, kind);
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|c| (c.path.as_str(), c.authorization.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        calls,
        [
            (path("status").as_str(), "Bearer ctok-1"),
            (path("done").as_str(), "Bearer ctok-2"),
            (path("heartbeat").as_str(), "Bearer ctok-2"),
        ]
    );
    // The process ended on its own: the server reports it, with the current token.
    assert!(eventually(WAIT, || worker.exits().len() == 1));
    let exit = &worker.exits()[0];
    assert_eq!(exit.path, path("exit"));
    assert_eq!(exit.authorization.as_deref(), Some("Bearer ctok-2"));
    let report: Value = serde_json::from_str(&exit.body).unwrap();
    assert_eq!(report["exit_code"], 0, "{report}");
    let status: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(status, json!({ "message": "working on it" }));
    let done: Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(
        done,
        json!({ "summary": "all done", "branch": "gastown/toast/b1", "pr_url": null })
    );
}

#[test]
fn gt_outside_a_session_or_refused_says_so_in_one_line() {
    let refusing = FakeWorker::start(409, r#"{"error":{"code":"conflict","message":"no"}}"#);
    let dir = TempDir(temp_dir("gt-refused"));
    std::fs::write(dir.0.join("token"), "ctok-1\n").unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let out = std::process::Command::new(DEBUG_BIN)
            .arg("gt")
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[], &["heartbeat"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not in an agent session"), "{err}");
    let url = refusing.url();
    let token_file = dir.0.join("token");
    let session = [
        ("GASTOWN_WORKER_URL", url.as_str()),
        ("GASTOWN_TOWN_ID", TOWN),
        ("GASTOWN_RIG_ID", RIG),
        ("GASTOWN_AGENT_ID", AGENT),
        ("GASTOWN_CONTAINER_TOKEN_FILE", token_file.to_str().unwrap()),
    ];
    let (code, err) = run(&session, &["done", "--summary", "x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("worker answered 409"), "{err}");
    assert!(!err.contains("ctok-1"), "{err}");
}

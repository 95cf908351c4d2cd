//! `gt`'s mayor's tools, run as the mayor runs them (`gastown-control gt …`, no rig, no agent
//! id) against a fake worker: each command is one call to its route under
//! `/api/mayor/:townId/tools/`, with the container token read from its file at that moment and
//! the mayor's key; a 2xx answer is printed as it is, a refusal is exit 1 and one line, and
//! neither credential is ever printed.

#![cfg(unix)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const TOWN: &str = "town-a";
const TOKEN_1: &str = "ctok-mayor-1";
const TOKEN_2: &str = "ctok-mayor-2";
const MAYOR_KEY: &str = "mayor-key-0123456789";
const FORBIDDEN: &str =
    r#"{"error":{"code":"forbidden","message":"only the town's mayor may use its tools"}}"#;

/// What one run of `gt` came to.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Neither credential appears in its output.
    fn assert_no_secret(&self) {
        for secret in [TOKEN_1, TOKEN_2, MAYOR_KEY] {
            assert!(
                !self.stdout.contains(secret) && !self.stderr.contains(secret),
                "{self:?}"
            );
        }
    }
}

/// `gastown-control gt <args>` with only `env`, `stdin` written to it when given.
fn gt(env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(PROD_BIN)
        .arg("gt")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    run.assert_no_secret();
    run
}

/// The mayor's session: the worker, the town, the key and the token file.
fn session<'a>(worker_url: &'a str, token_file: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("GASTOWN_WORKER_URL", worker_url),
        ("GASTOWN_TOWN_ID", TOWN),
        ("GASTOWN_MAYOR_KEY", MAYOR_KEY),
        ("GASTOWN_CONTAINER_TOKEN_FILE", token_file.to_str().unwrap()),
    ]
}

/// A run of `gt` and the call it must make: args, stdin, method, path, body.
type Case<'a> = (
    Vec<&'a str>,
    Option<&'a str>,
    &'a str,
    String,
    Option<Value>,
);

fn tools(path: &str) -> String {
    format!("/api/mayor/{TOWN}/tools{path}")
}

#[test]
fn each_tool_is_one_call_with_both_credentials_and_its_answer_printed() {
    let worker = FakeWorker::start(200, r#"{"ok":true,"call":{n}}"#);
    let dir = TempDir::new("gt-mayor");
    let token_file = dir.0.join("container-token");
    std::fs::write(&token_file, format!("{TOKEN_1}\n")).unwrap();
    let url = worker.url();
    let env = session(&url, &token_file);
    let batch = json!({ "title": "Release", "beads": [{ "rig_id": "r1", "title": "Tag it" }] });
    let batch_text = batch.to_string();
    let cases: Vec<Case> = vec![
        (vec!["rigs"], None, "GET", tools("/rigs"), None),
        (vec!["beads"], None, "GET", tools("/beads"), None),
        (
            vec![
                "beads", "--status", "open", "--type", "issue", "--rig", "r1", "--limit", "20",
            ],
            None,
            "GET",
            tools("/beads?status=open&type=issue&rig_id=r1&limit=20"),
            None,
        ),
        (
            vec!["beads", "--status", "in progress&x"],
            None,
            "GET",
            tools("/beads?status=in%20progress%26x"),
            None,
        ),
        (vec!["bead", "b-1"], None, "GET", tools("/beads/b-1"), None),
        (
            vec![
                "create-bead",
                "--title",
                "Fix it",
                "--rig",
                "r1",
                "--priority",
                "1",
            ],
            None,
            "POST",
            tools("/beads"),
            Some(json!({ "title": "Fix it", "rig_id": "r1", "priority": 1 })),
        ),
        (
            vec![
                "create-bead",
                "--title",
                "Plan",
                "--body",
                "the plan",
                "--type",
                "epic",
            ],
            None,
            "POST",
            tools("/beads"),
            Some(json!({ "title": "Plan", "body": "the plan", "type": "epic" })),
        ),
        (
            vec!["update-bead", "b-1", r#"{"status":"closed","priority":3}"#],
            None,
            "PATCH",
            tools("/beads/b-1"),
            Some(json!({ "status": "closed", "priority": 3 })),
        ),
        (
            vec![
                "sling",
                "--rig",
                "r1",
                "--title",
                "Do it",
                "--body",
                "now",
                "--priority",
                "2",
            ],
            None,
            "POST",
            tools("/sling"),
            Some(json!({ "rig_id": "r1", "title": "Do it", "body": "now", "priority": 2 })),
        ),
        (
            vec!["sling-batch", &batch_text],
            None,
            "POST",
            tools("/sling-batch"),
            Some(batch.clone()),
        ),
        (
            vec!["sling-batch", "-"],
            Some(&batch_text),
            "POST",
            tools("/sling-batch"),
            Some(batch.clone()),
        ),
        (vec!["agents"], None, "GET", tools("/agents"), None),
        (
            vec!["reset-agent", "agent-7"],
            None,
            "POST",
            tools("/agents/agent-7/reset"),
            Some(json!({})),
        ),
        (
            vec!["ack", "esc-3"],
            None,
            "POST",
            tools("/escalations/esc-3/ack"),
            Some(json!({})),
        ),
        (
            vec!["reply", "Slung", "two", "beads."],
            None,
            "POST",
            tools("/reply"),
            Some(json!({ "text": "Slung two beads." })),
        ),
    ];
    for (i, (args, stdin, method, path, body)) in cases.into_iter().enumerate() {
        // The token changes after the first call: every later call reads the new one.
        if i == 1 {
            std::fs::write(&token_file, format!("{TOKEN_2}\n")).unwrap();
        }
        let token = if i == 0 { TOKEN_1 } else { TOKEN_2 };
        let run = gt(&env, &args, stdin);
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
        assert_eq!(worker.calls(), i + 1, "{args:?}: one call");
        assert_eq!(
            run.stdout,
            format!("{{\"ok\":true,\"call\":{}}}\n", i + 1),
            "{args:?}"
        );
        assert_eq!(run.stderr, "", "{args:?}");
        let seen = worker.seen().pop().unwrap();
        assert_eq!((seen.method.as_str(), &seen.path), (method, &path));
        let expected_auth = format!("Bearer {token}");
        assert_eq!(
            seen.authorization.as_deref(),
            Some(expected_auth.as_str()),
            "{args:?}"
        );
        assert_eq!(seen.header("x-gastown-mayor-key"), Some(MAYOR_KEY));
        match body {
            Some(body) => {
                assert_eq!(seen.content_type.as_deref(), Some("application/json"));
                let sent: Value = serde_json::from_str(&seen.body).unwrap();
                assert_eq!(sent, body, "{args:?}");
            }
            None => assert_eq!(seen.body, "", "{args:?}"),
        }
    }
}

#[test]
fn a_refusal_is_exit_1_and_the_workers_message_in_one_line() {
    let worker = FakeWorker::start(403, FORBIDDEN);
    let dir = TempDir::new("gt-mayor-refused");
    let token_file = dir.0.join("container-token");
    std::fs::write(&token_file, format!("{TOKEN_1}\n")).unwrap();
    let url = worker.url();
    let env = session(&url, &token_file);
    for args in [&["sling", "--rig", "r1", "--title", "T"][..], &["rigs"]] {
        let before = worker.calls();
        let run = gt(&env, args, None);
        assert_eq!(run.code, Some(1), "{run:?}");
        assert_eq!(run.stdout, "");
        assert_eq!(
            run.stderr,
            "gt: the worker answered 403: only the town's mayor may use its tools\n"
        );
        // An answer is not retried, whatever the method.
        assert_eq!(worker.calls(), before + 1, "{args:?}");
    }
    worker.answer(500, "oops");
    let run = gt(&env, &["agents"], None);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stderr, "gt: the worker answered 500\n");
}

#[test]
fn outside_a_mayor_session_or_unreached_says_so_in_one_line() {
    let worker = FakeWorker::start(200, "{}");
    let dir = TempDir::new("gt-mayor-session");
    let token_file = dir.0.join("container-token");
    std::fs::write(&token_file, format!("{TOKEN_1}\n")).unwrap();
    let url = worker.url();
    let env = session(&url, &token_file);

    // No key: not a mayor's session, and no call.
    let no_key: Vec<_> = env
        .iter()
        .copied()
        .filter(|(n, _)| *n != "GASTOWN_MAYOR_KEY")
        .collect();
    let run = gt(&no_key, &["rigs"], None);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("not in a mayor session"), "{run:?}");
    assert!(run.stderr.contains("GASTOWN_MAYOR_KEY"), "{run:?}");

    // Usage errors: exit 2, no call.
    for args in [
        &["bead", "a/b"][..],
        &["update-bead", "b1", "[1]"],
        &["reply"],
    ] {
        let run = gt(&env, args, None);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("gt: "), "{run:?}");
    }
    let run = gt(&env, &["sling-batch", "-"], Some("[1, 2]"));
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("JSON object"), "{run:?}");

    // The token file is gone and there is no dispatch token: exit 1, no call.
    std::fs::remove_file(&token_file).unwrap();
    let run = gt(&env, &["rigs"], None);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert_eq!(worker.calls(), 0);
    // ... but a dispatch token stands in while the file does not exist.
    let mut with_dispatch_token = env.clone();
    with_dispatch_token.push(("GASTOWN_CONTAINER_TOKEN", TOKEN_2));
    let run = gt(&with_dispatch_token, &["rigs"], None);
    assert_eq!(run.code, Some(0), "{run:?}");
    let expected_auth = format!("Bearer {TOKEN_2}");
    assert_eq!(
        worker.seen()[0].authorization.as_deref(),
        Some(expected_auth.as_str())
    );

    // Nobody listens: exit 1, one line.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut unreached = with_dispatch_token.clone();
    unreached[0] = ("GASTOWN_WORKER_URL", &closed_url);
    for args in [&["rigs"][..], &["reply", "hello"]] {
        let run = gt(&unreached, args, None);
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(run.stderr.starts_with("gt: worker not reached"), "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    }
}

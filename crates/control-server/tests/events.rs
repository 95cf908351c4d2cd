//! An agent's lines reach the worker as its events, numbered within the run, with every secret
//! the container knows masked: the town's container and gateway tokens (as their files hold
//! them), the rig's git token in the town's cache, the agent's env values, and anything shaped
//! like a token. The agent is a shell script that prints all of them.

#![cfg(unix)]

mod common;

use common::*;
use gastown_core::control::KEY_ENV;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOWN: &str = "town-ev";
const RIG: &str = "rig-ev";
const AGENT: &str = "agent-ev";
const WAIT: Duration = Duration::from_secs(20);
const CONTAINER_TOKEN: &str = "ctok-events-0123456789";
const GATEWAY_TOKEN: &str = "kilo.gateway-jwt.0123456789";
const GIT_TOKEN: &str = "ghs_cachedgittoken0123456789";
const USER_SECRET: &str = "user-secret-value-42";

/// Prints a plain line, each secret, a runtime event, then a long last line with no newline.
const SCRIPT: &str = r#"echo "hello from the agent"
echo "container token: $(cat "$GASTOWN_CONTAINER_TOKEN_FILE")"
echo "gateway: $(cat "$GASTOWN_GATEWAY_ENV_FILE")"
echo "git: $TEST_GIT_TOKEN and a user secret: $USER_API_KEY"
echo "a jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl here"
echo "gastown-kilo: event tool bash: completed"
printf 'last words'
"#;

fn script_command() -> String {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gastown-events-agent.sh");
    std::fs::write(&path, SCRIPT).unwrap();
    format!("/bin/sh {}", path.display())
}

fn git_token_cache(s: &Server) -> PathBuf {
    s.town_dir(TOWN)
        .join(".git-tokens")
        .join(format!("{RIG}.json"))
}

#[test]
fn an_agents_lines_are_its_events_with_every_secret_masked() {
    let worker = FakeWorker::start(200, "{}");
    let command = script_command();
    let s = start(
        DEBUG_BIN,
        &[(KEY_ENV, KEY)],
        &["--agent-command", &command, "--worker-url", &worker.url()],
    );
    assert_eq!(refresh(TOWN, CONTAINER_TOKEN).auth(TOWN).send(&s).0, 200);
    let settings = json!({ "town": { "role_agents": {} }, "rigs": { RIG: { "role_agents": {} } } });
    assert_eq!(
        sync(&s, TOWN, json!({ "KILO_JWT": GATEWAY_TOKEN }), settings).0,
        200
    );
    // A git token the credential helper cached for the rig.
    let cache = git_token_cache(&s);
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    let expires_at = now() + 3600;
    std::fs::write(
        &cache,
        json!({ "token": GIT_TOKEN, "expires_at": expires_at, "source": "github_app" }).to_string(),
    )
    .unwrap();
    let body = json!({
        "townId": TOWN,
        "agent_id": AGENT,
        "role": "polecat",
        "name": "toast",
        "rig_id": RIG,
        "worker_url": worker.url(),
        "env": { "USER_API_KEY": USER_SECRET, "TEST_GIT_TOKEN": GIT_TOKEN },
    });
    let (code, answer) = start_agent(&s, TOWN, &body);
    assert_eq!(code, 200, "{answer}");
    assert!(eventually(WAIT, || exited(&s, TOWN, AGENT)));
    // The last batch goes before the report of the end.
    assert!(eventually(WAIT, || !worker.exits().is_empty()));
    let batches = worker.events();
    assert!(!batches.is_empty(), "no events were sent");
    let mut events: Vec<Value> = Vec::new();
    for b in &batches {
        assert_eq!(
            b.path,
            format!("/api/towns/{TOWN}/rigs/{RIG}/agents/{AGENT}/events")
        );
        assert_eq!(
            b.authorization.as_deref(),
            Some(format!("Bearer {CONTAINER_TOKEN}").as_str())
        );
        let batch: Value = serde_json::from_str(&b.body).unwrap();
        assert_eq!(batch["run"], 1);
        events.extend(batch["events"].as_array().unwrap().iter().cloned());
    }
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "numbered in order"
    );
    let texts: Vec<&str> = events.iter().map(|e| e["text"].as_str().unwrap()).collect();
    let all = texts.join("\n");
    for secret in [
        CONTAINER_TOKEN,
        GATEWAY_TOKEN,
        GIT_TOKEN,
        USER_SECRET,
        "eyJhbGciOiJIUzI1NiJ9",
    ] {
        assert!(!all.contains(secret), "{secret} left the container:\n{all}");
    }
    assert_eq!(texts[0], "hello from the agent");
    assert_eq!(texts[1], "container token: ****");
    assert_eq!(texts[2], "gateway: KILO_JWT=****");
    assert_eq!(texts[3], "git: **** and a user secret: ****");
    assert_eq!(texts[4], "a jwt **** here");
    assert_eq!(
        (events[5]["kind"].as_str(), texts[5]),
        (Some("tool"), "bash: completed")
    );
    assert_eq!(
        texts.last(),
        Some(&"last words"),
        "the unfinished last line too"
    );
    assert!(events.iter().all(|e| e["at_ms"].as_u64().unwrap() > 0));
    // The log itself is the container's own: it keeps the lines as written.
    let log = std::fs::read_to_string(s.town_dir(TOWN).join("agents").join(format!("{AGENT}.log")))
        .unwrap();
    assert!(log.contains("hello from the agent"));
}

//! The gateway token's self-refresh against a fake worker: a loopback listener that answers
//! the sandbox-token route as the test tells it and records what it was sent.

mod common;

use common::*;
use gastown_core::control::{sandbox_token_path, GATEWAY_ENV_FILE, KEY_ENV};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::time::Duration;

/// What the fake worker saw of one request.
const TOKEN_ANSWER: &str = r#"{"token":"gw-{n}.fresh.sig","expires_at":1900000000}"#;

fn control_with_worker(worker: &str) -> Server {
    start(
        DEBUG_BIN,
        &[(KEY_ENV, KEY)],
        &["--worker-url", worker, "--gateway-refresh-ms", "200"],
    )
}

fn no_settings() -> Value {
    json!({ "town": { "role_agents": {} }, "rigs": {} })
}

fn gateway_file(s: &Server, town: &str) -> Option<String> {
    std::fs::read_to_string(s.town_dir(town).join(GATEWAY_ENV_FILE)).ok()
}

fn counter(s: &Server, town: &str, name: &str) -> u64 {
    town_state(s, town).1[name].as_u64().unwrap_or(0)
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn the_gateway_token_is_renewed_with_the_container_token() {
    let worker = FakeWorker::start(200, TOKEN_ANSWER);
    let s = control_with_worker(&worker.url());
    let env = json!({ "KILO_JWT": "gw-0.synced.sig", "OTHER": "kept" });
    assert_eq!(sync(&s, "town-a", env, no_settings()).0, 200);
    assert_eq!(refresh("town-a", "ctok").auth("town-a").send(&s).0, 200);

    assert!(
        eventually(WAIT, || gateway_file(&s, "town-a").is_some_and(|f| f
            .starts_with("KILO_JWT=gw-")
            && f != "KILO_JWT=gw-0.synced.sig\n")),
        "not renewed: {:?}",
        gateway_file(&s, "town-a")
    );
    // It goes on every interval, each time with a new token.
    assert!(eventually(WAIT, || counter(
        &s,
        "town-a",
        "gateway_refreshes"
    ) >= 2));
    let seen = worker.seen();
    assert!(seen.len() >= 2);
    for call in &seen {
        assert_eq!(call.method, "POST");
        assert_eq!(call.path, sandbox_token_path("town-a"));
        assert_eq!(call.authorization.as_deref(), Some("Bearer ctok"));
        assert_eq!(call.content_type.as_deref(), Some("application/json"));
        assert_eq!(call.body, "{}");
    }

    let (_, state) = town_state(&s, "town-a");
    let held = state["env"]["KILO_JWT"].as_str().unwrap().to_owned();
    assert!(
        held.starts_with("gw-") && held.ends_with(".fresh.sig"),
        "{held}"
    );
    assert_eq!(state["env"]["OTHER"], "kept");
    assert_eq!(state["env_updates"], 1, "a refresh is not a sync");
    assert_eq!(state["gateway_refresh_failures"], 0);
    assert!(state["gateway_refresh_attempts"].as_u64().unwrap() >= 2);
    // The file holds one line with a token the worker issued.
    let file = gateway_file(&s, "town-a").unwrap();
    let line = file.strip_prefix("KILO_JWT=").unwrap();
    assert!(
        line.ends_with(".fresh.sig\n") && line.lines().count() == 1,
        "{file:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = s.town_dir("town-a").join(GATEWAY_ENV_FILE);
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
}

#[test]
fn a_refused_refresh_keeps_the_file_counts_and_recovers() {
    let worker = FakeWorker::start(401, r#"{"error":"bad container token"}"#);
    let mut s = control_with_worker(&worker.url());
    assert_eq!(
        sync(&s, "a", json!({ "KILO_JWT": "orig.tok.en" }), no_settings()).0,
        200
    );
    assert_eq!(refresh("a", "ctok").auth("a").send(&s).0, 200);

    assert!(eventually(WAIT, || counter(
        &s,
        "a",
        "gateway_refresh_failures"
    ) >= 2));
    assert_eq!(
        gateway_file(&s, "a").as_deref(),
        Some("KILO_JWT=orig.tok.en\n")
    );
    assert_eq!(counter(&s, "a", "gateway_refreshes"), 0);
    assert_eq!(town_state(&s, "a").1["env"]["KILO_JWT"], "orig.tok.en");
    assert!(s.is_running());
    assert_eq!(req("GET", "/health").send(&s).0, 200);

    // An answer that is not a token (or is a token a shell would act on) is a failure too.
    for bad in [
        "not json",
        r#"{"token":"x"}"#,
        r#"{"token":"a b; id","expires_at":1}"#,
    ] {
        worker.answer(200, bad);
        let before = counter(&s, "a", "gateway_refresh_failures");
        assert!(eventually(WAIT, || counter(
            &s,
            "a",
            "gateway_refresh_failures"
        ) > before));
        assert_eq!(
            gateway_file(&s, "a").as_deref(),
            Some("KILO_JWT=orig.tok.en\n")
        );
    }

    // The next good answer is taken.
    worker.answer(200, TOKEN_ANSWER);
    assert!(eventually(WAIT, || gateway_file(&s, "a")
        .is_some_and(|f| f.ends_with(".fresh.sig\n"))));
    assert!(counter(&s, "a", "gateway_refreshes") >= 1);
    assert!(s.is_running());
}

#[test]
fn an_unreachable_worker_is_counted_and_survived() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = control_with_worker(&format!("http://127.0.0.1:{port}"));
    assert_eq!(
        sync(&s, "a", json!({ "KILO_JWT": "orig.tok.en" }), no_settings()).0,
        200
    );
    assert_eq!(refresh("a", "ctok").auth("a").send(&s).0, 200);
    assert!(eventually(WAIT, || counter(
        &s,
        "a",
        "gateway_refresh_failures"
    ) >= 2));
    assert_eq!(
        gateway_file(&s, "a").as_deref(),
        Some("KILO_JWT=orig.tok.en\n")
    );
    assert!(s.is_running());
}

#[test]
fn without_a_container_token_the_worker_is_not_called() {
    let worker = FakeWorker::start(200, TOKEN_ANSWER);
    let s = control_with_worker(&worker.url());
    assert_eq!(
        sync(&s, "a", json!({ "KILO_JWT": "orig.tok.en" }), no_settings()).0,
        200
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert!(worker.seen().is_empty(), "{:?}", worker.seen());
    assert_eq!(
        gateway_file(&s, "a").as_deref(),
        Some("KILO_JWT=orig.tok.en\n")
    );
    let (_, state) = town_state(&s, "a");
    assert_eq!(state["gateway_refresh_attempts"], 0);

    // A stopped town's container token is gone with it: no more calls for it.
    assert_eq!(refresh("a", "ctok").auth("a").send(&s).0, 200);
    assert!(eventually(WAIT, || !worker.seen().is_empty()));
    let stop = req("POST", "/stop")
        .json(&json!({ "townId": "a" }))
        .auth("a");
    assert_eq!(stop.send(&s).0, 200);
    std::thread::sleep(Duration::from_millis(400)); // a call under way when it stopped ends
    let calls = worker.seen().len();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(worker.seen().len(), calls);
}

#[test]
fn without_a_worker_url_nothing_is_renewed() {
    let worker = FakeWorker::start(200, TOKEN_ANSWER);
    let s = start(
        DEBUG_BIN,
        &[(KEY_ENV, KEY)],
        &["--gateway-refresh-ms", "100"],
    );
    assert_eq!(
        sync(&s, "a", json!({ "KILO_JWT": "orig.tok.en" }), no_settings()).0,
        200
    );
    assert_eq!(refresh("a", "ctok").auth("a").send(&s).0, 200);
    std::thread::sleep(Duration::from_millis(800));
    assert!(worker.seen().is_empty());
    assert_eq!(
        gateway_file(&s, "a").as_deref(),
        Some("KILO_JWT=orig.tok.en\n")
    );
}

#[test]
fn the_production_binary_renews_too_and_takes_the_url_from_the_environment() {
    let worker = FakeWorker::start(200, TOKEN_ANSWER);
    let url = worker.url();
    let s = start(
        PROD_BIN,
        &[(KEY_ENV, KEY), ("GASTOWN_WORKER_URL", url.as_str())],
        &["--gateway-refresh-ms", "200"],
    );
    assert_eq!(refresh("a", "ctok-prod").auth("a").send(&s).0, 200);
    // No sync yet: the renewed token still reaches the file.
    assert!(eventually(WAIT, || gateway_file(&s, "a")
        .is_some_and(|f| f.ends_with(".fresh.sig\n"))));
    assert_eq!(
        worker.seen()[0].authorization.as_deref(),
        Some("Bearer ctok-prod")
    );
}

/// The production image's `CMD` (container/Dockerfile), word by word.
fn image_cmd() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../container/Dockerfile"
    ))
    .unwrap();
    let line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("the Dockerfile has a CMD");
    serde_json::from_str(line).expect("CMD in exec form")
}

#[test]
fn the_image_renews_the_gateway_token_with_the_env_its_town_starts_it_with() {
    let cmd = image_cmd();
    assert_eq!(cmd[0], "gastown-control", "{cmd:?}");
    // As the image runs it, but for the port (a free one here) and the work directory (the
    // harness's, where the container's is its working directory). Dropping to the agent user
    // needs root, as it does in the container.
    let mut args: Vec<&str> = Vec::new();
    let mut words = cmd[1..].iter().map(String::as_str);
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    while let Some(word) = words.next() {
        match word {
            "--port" => {
                words.next();
            }
            "--agent-uid" | "--agent-gid" if !root => {
                eprintln!("without root: {word} left out");
                words.next();
            }
            other => args.push(other),
        }
    }
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--worker-url") || a.starts_with("--gateway-refresh")),
        "the image names neither: they come from the start-up env"
    );
    let worker = FakeWorker::start(200, TOKEN_ANSWER);
    let town = "town-image";
    let startup = gastown_core::control::startup_env(&secret(town), town, &worker.url(), 200);
    let env: Vec<(&str, &str)> = startup.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = start(PROD_BIN, &env, &args);
    // What the town's DO does once the container answers: push the container token.
    assert_eq!(refresh(town, "ctok-image").auth(town).send(&s).0, 200);
    assert!(
        eventually(WAIT, || gateway_file(&s, town)
            .is_some_and(|f| f.ends_with(".fresh.sig\n"))),
        "the gateway token was not renewed: {:?}",
        gateway_file(&s, town)
    );
    let seen = worker.seen();
    assert_eq!(seen[0].path, sandbox_token_path(town));
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer ctok-image"));
}

#[test]
fn a_bad_worker_url_or_interval_refuses_to_start() {
    for args in [
        vec!["--worker-url", "ftp://x"],
        vec!["--worker-url", "localhost:8787"],
        vec!["--gateway-refresh-ms", "99"],
    ] {
        let out = command(PROD_BIN, &[(KEY_ENV, KEY)], &args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        assert!(String::from_utf8_lossy(&out.stderr).contains("gastown-control:"));
    }
}

//! The control server as the worker (and an attacker inside the container) meets it: each test
//! starts a built binary on a free loopback port and talks raw HTTP/1.1 to it.

mod common;

use common::*;
use gastown_core::control::{control_secret, KEY_ENV, SECRET_ENV, TOWN_ID_ENV};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Only the debug routes hold this text (see lib.rs `refresh_token`).
const DEBUG_MARKER: &[u8] = b"failing on purpose";

#[test]
fn health_is_open_and_says_nothing() {
    let s = debug_server();
    assert_eq!(refresh("a", "t").auth("a").send(&s).0, 200);
    let (status, body) = req("GET", "/health").send(&s);
    assert_eq!((status, body), (200, json!({ "status": "ok" })));
}

#[test]
fn happy_path_stores_token_and_env_per_town() {
    let s = debug_server();
    assert_eq!(refresh("a", "t1").auth("a").send(&s).0, 200);
    let sync = |town: &str, env: Value| {
        req("POST", "/sync-config")
            .json(&json!({ "env": env, "townId": town }))
            .auth(town)
            .send(&s)
    };
    let (status, body) = sync("a", json!({ "A": "1", "B": "2" }));
    assert_eq!(
        (status, body),
        (200, json!({ "ok": true, "names": ["A", "B"] }))
    );
    assert_eq!(sync("a", json!({ "A": "1" })).0, 200);
    assert_eq!(sync("b", json!({ "C": "3" })).0, 200);
    // charset parameters are fine
    let r = req("POST", "/refresh-token")
        .raw(
            "Application/JSON; charset=utf-8",
            br#"{"token":"t2","townId":"a"}"#,
        )
        .auth("a");
    assert_eq!(r.send(&s).0, 200);

    let (status, a) = town_state(&s, "a");
    assert_eq!(status, 200);
    let held = json!({
        "token": a["token"], "token_updates": a["token_updates"],
        "env": a["env"], "env_updates": a["env_updates"],
    });
    assert_eq!(
        held,
        json!({ "token": "t2", "token_updates": 2, "env": { "A": "1" }, "env_updates": 2 }),
        "a key no longer sent is removed"
    );
    assert_eq!(a["workdir"], json!(s.canonical_town_dir("a")));
    assert_eq!(
        (&a["gateway_refreshes"], &a["gateway_refresh_failures"]),
        (&json!(0), &json!(0)),
        "no worker URL, no self-refresh"
    );
    let (_, b) = town_state(&s, "b");
    assert_eq!(b["env"], json!({ "C": "3" }));
    assert_eq!(b["token"], Value::Null);
    assert_eq!(town_state(&s, "c").0, 404);
    // One town's credentials do not read another's state.
    let cross = req("GET", "/debug/towns/b").auth("a").send(&s);
    assert_eq!(cross.0, 403);

    // Stopping a town drops what its container held, and only that town's.
    let stop = |town: &str, as_town: &str| {
        req("POST", "/stop")
            .json(&json!({ "townId": town }))
            .auth(as_town)
            .send(&s)
    };
    assert_eq!(stop("b", "a").0, 403, "one town cannot stop another");
    assert_eq!(
        stop("a", "a"),
        (200, json!({ "ok": true, "stopped": true }))
    );
    assert_eq!(town_state(&s, "a").0, 404);
    assert_eq!(town_state(&s, "b").0, 200);
    assert_eq!(stop("a", "a").1["stopped"], json!(false), "idempotent");
}

#[test]
fn refuses_without_credentials() {
    let s = debug_server();
    let (status, body) = refresh("a", "t").send(&s);
    assert_eq!(status, 401);
    assert!(body["error"].is_string());
    // The town header alone, or the bearer alone, is not enough.
    let only_town = refresh("a", "t").header("x-gastown-town-id", "a");
    assert_eq!(only_town.send(&s).0, 401);
    let only_bearer = refresh("a", "t").header("authorization", &format!("Bearer {}", secret("a")));
    assert_eq!(only_bearer.send(&s).0, 401);
    let basic = refresh("a", "t")
        .header("authorization", &format!("Basic {}", secret("a")))
        .header("x-gastown-town-id", "a");
    assert_eq!(basic.send(&s).0, 401);
    assert_eq!(town_state(&s, "a").0, 404, "nothing was stored");
}

#[test]
fn refuses_a_wrong_secret() {
    let s = debug_server();
    let wrong = control_secret(b"another-key-another-key-another-key", "a");
    assert_eq!(refresh("a", "t").auth_as("a", &wrong).send(&s).0, 401);
    assert_eq!(refresh("a", "t").auth_as("a", "x").send(&s).0, 401);
    let sync = req("POST", "/sync-config")
        .json(&json!({ "env": { "A": "1" }, "townId": "a" }))
        .auth_as("a", &wrong);
    assert_eq!(sync.send(&s).0, 401);
    assert_eq!(town_state(&s, "a").0, 404, "nothing was stored");
}

#[test]
fn refuses_the_secret_of_another_town() {
    let s = debug_server();
    assert_eq!(refresh("a", "t").auth_as("a", &secret("b")).send(&s).0, 401);
    assert_eq!(town_state(&s, "a").0, 404);
}

#[test]
fn refuses_a_body_for_another_town_than_the_header() {
    let s = debug_server();
    // Authenticated for b, body for a.
    assert_eq!(refresh("a", "t").auth("b").send(&s).0, 403);
    let sync = req("POST", "/sync-config")
        .json(&json!({ "env": {}, "townId": "a" }))
        .auth("b");
    assert_eq!(sync.send(&s).0, 403);
    assert_eq!(town_state(&s, "a").0, 404);
    assert_eq!(town_state(&s, "b").0, 404);
}

#[test]
fn refuses_what_a_browser_can_send_cross_site() {
    let s = debug_server();
    let body = br#"{"token":"t","townId":"a"}"#;
    for content_type in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ] {
        let r = req("POST", "/refresh-token")
            .raw(content_type, body)
            .auth("a");
        assert_eq!(r.send(&s).0, 415, "{content_type}");
    }
    let mut none = req("POST", "/refresh-token").auth("a");
    none.body = body.to_vec();
    assert_eq!(none.send(&s).0, 415, "no content-type");
    assert_eq!(town_state(&s, "a").0, 404);
}

#[test]
fn refuses_a_foreign_host() {
    let s = debug_server();
    for host in [
        "attacker.example",
        "attacker.example:8080",
        "127.0.0.1.nip.io",
    ] {
        let r = refresh("a", "t").auth("a").header("host", host);
        let (status, body) = r.send(&s);
        assert_eq!(status, 421, "{host}");
        assert!(body["error"].is_string());
    }
    // Health too: a rebound page learns nothing.
    assert_eq!(
        req("GET", "/health")
            .header("host", "attacker.example")
            .send(&s)
            .0,
        421
    );
    // No Host at all.
    let (status, _) = exchange(s.addr, b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(status, 421);
    // The Cloudflare Container URL (http://container/...) and ports are fine.
    for host in [
        "container",
        "container:8080",
        "localhost:1234",
        "[::1]:8080",
    ] {
        assert_eq!(
            refresh("a", "t").auth("a").header("host", host).send(&s).0,
            200,
            "{host}"
        );
    }
    assert_eq!(town_state(&s, "a").1["token_updates"], 4);
}

#[test]
fn allowed_hosts_are_configurable() {
    let s = start(
        DEBUG_BIN,
        &[(KEY_ENV, KEY)],
        &["--allowed-host", "control.internal"],
    );
    let r = |host: &str| req("GET", "/health").header("host", host).send(&s).0;
    assert_eq!(r("control.internal:8080"), 200);
    assert_eq!(r("localhost"), 421, "the list replaces the default");
}

#[test]
fn refuses_an_oversize_body() {
    let s = debug_server();
    let big = json!({ "env": { "A": "x".repeat(300 * 1024) }, "townId": "a" });
    let (status, _) = req("POST", "/sync-config").json(&big).auth("a").send(&s);
    assert_eq!(status, 413);
    // A claimed length over the limit is refused before anything is read.
    let head = format!(
        "POST /sync-config HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\nx-gastown-town-id: a\r\ncontent-length: 262145\r\n\r\n",
        secret("a")
    );
    assert_eq!(exchange(s.addr, head.as_bytes()).0, 413);
    // Exactly the limit is read (and then found to be bad JSON).
    let exact = vec![b' '; 256 * 1024];
    let r = req("POST", "/sync-config")
        .raw("application/json", &exact)
        .auth("a");
    assert_eq!(r.send(&s).0, 400);
    assert_eq!(town_state(&s, "a").0, 404);
}

#[test]
fn refuses_malformed_requests() {
    let s = debug_server();
    let r = |raw: &str| exchange(s.addr, raw.as_bytes()).0;
    let auth = format!(
        "authorization: Bearer {}\r\nx-gastown-town-id: a\r\n",
        secret("a")
    );
    let post = |extra: &str| {
        format!(
            "POST /refresh-token HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{auth}{extra}\r\n"
        )
    };
    assert_eq!(r(&post("")), 411, "no content-length");
    assert_eq!(r(&post("transfer-encoding: chunked\r\n")), 411);
    assert_eq!(r(&post("content-length: -1\r\n")), 400);
    assert_eq!(r(&post("content-length: 1\r\ncontent-length: 1\r\n")), 400);
    assert_eq!(
        r("GET /health HTTP/1.1\r\nhost: a\r\nhost: localhost\r\n\r\n"),
        400
    );
    assert_eq!(
        r("GET http://localhost/health HTTP/1.1\r\nhost: localhost\r\n\r\n"),
        400
    );
    assert_eq!(r("garbage\r\n\r\n"), 400);
    let long = format!(
        "GET /health HTTP/1.1\r\nhost: localhost\r\nx: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(r(&long), 431);
    assert_eq!(req("GET", "/refresh-token").auth("a").send(&s).0, 405);
    assert_eq!(req("GET", "/nope").auth("a").send(&s).0, 404);
    let bad_town = refresh("a b", "t").auth_as("a b", &secret("a b"));
    assert_eq!(bad_town.send(&s).0, 400);
    assert_eq!(refresh("a", "").auth("a").send(&s).0, 400, "empty token");
    let not_json = req("POST", "/refresh-token")
        .raw("application/json", b"nope")
        .auth("a");
    assert_eq!(not_json.send(&s).0, 400);
}

#[test]
fn a_stalled_upload_blocks_nobody_and_is_closed_at_the_deadline() {
    let s = debug_server(); // 1.5 s deadline
    let head = format!(
        "POST /sync-config HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\nx-gastown-town-id: a\r\ncontent-length: 1000\r\n\r\n0123456789",
        secret("a")
    );
    let opened = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(head.as_bytes()).unwrap();
            c
        })
        .collect();
    // A connection that sends half a head and nothing more.
    let mut half = TcpStream::connect(s.addr).unwrap();
    half.write_all(b"POST /refresh-token HTTP/1.1\r\nhost: loc")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let t = Instant::now();
    assert_eq!(refresh("b", "t").auth("b").send(&s).0, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        t.elapsed()
    );
    assert_eq!(town_state(&s, "b").0, 200);

    for c in stalled.iter_mut().chain(std::iter::once(&mut half)) {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).expect("closed by the server");
        assert_eq!(parse_answer(&answer).0, 408);
    }
    let closed = opened.elapsed();
    assert!(
        closed >= Duration::from_millis(1400) && closed < Duration::from_millis(3500),
        "closed after {closed:?}"
    );
    assert_eq!(
        town_state(&s, "a").0,
        404,
        "nothing of the stalled upload was stored"
    );
}

#[test]
fn the_credentials_leave_the_environment() {
    let s = debug_server();
    let (status, body) = req("GET", "/debug/env").auth("a").send(&s);
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "process": [], "child": [] }));
    assert_eq!(
        req("GET", "/debug/env").send(&s).0,
        401,
        "debug routes need credentials"
    );

    let s = start(
        DEBUG_BIN,
        &[(SECRET_ENV, &secret("a")), (TOWN_ID_ENV, "a")],
        &[],
    );
    let (status, body) = req("GET", "/debug/env").auth("a").send(&s);
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "process": [], "child": [] }));
}

#[test]
fn fail_modes_need_credentials_and_work() {
    let s = debug_server();
    let fail = |modes: Value| req("POST", "/debug/fail").json(&modes);
    assert_eq!(fail(json!({ "refresh_token": true })).send(&s).0, 401);
    assert_eq!(
        fail(json!({ "refresh_token": true })).auth("x").send(&s).0,
        200
    );
    assert_eq!(refresh("a", "t").auth("a").send(&s).0, 503);
    assert_eq!(fail(json!({})).auth("x").send(&s).0, 200);
    assert_eq!(refresh("a", "t").auth("a").send(&s).0, 200);
}

#[test]
fn production_mode_serves_its_own_town_only() {
    let s = start(
        PROD_BIN,
        &[(SECRET_ENV, &secret("a")), (TOWN_ID_ENV, "a")],
        &[],
    );
    assert_eq!(refresh("a", "t").auth("a").send(&s).0, 200);
    // The worker's credentials for another town: valid for that town, not for this container.
    assert_eq!(refresh("b", "t").auth("b").send(&s).0, 401);
    // This container's secret, aimed at another town.
    assert_eq!(refresh("b", "t").auth_as("b", &secret("a")).send(&s).0, 403);
    assert_eq!(refresh("a", "t").auth_as("a", &secret("b")).send(&s).0, 401);
    assert_eq!(refresh("a", "t").send(&s).0, 401);
    assert_eq!(
        refresh("b", "t").auth("a").send(&s).0,
        403,
        "body for another town"
    );
}

#[test]
fn the_production_binary_has_no_debug_routes() {
    let s = start(PROD_BIN, &[(KEY_ENV, KEY)], &[]);
    for path in ["/debug/towns/a", "/debug/env"] {
        assert_eq!(req("GET", path).auth("a").send(&s).0, 404, "{path}");
    }
    let fail = req("POST", "/debug/fail")
        .json(&json!({ "refresh_token": true }))
        .auth("a");
    assert_eq!(fail.send(&s).0, 404);
    assert_eq!(refresh("a", "t").auth("a").send(&s).0, 200);
}

#[test]
fn refuses_to_start_without_credentials_or_with_debug() {
    for (bin, env, args) in [
        (PROD_BIN, vec![], vec![]),
        (DEBUG_BIN, vec![], vec![]),
        (PROD_BIN, vec![(SECRET_ENV, "s".repeat(43))], vec![]),
        (PROD_BIN, vec![(KEY_ENV, "short".to_owned())], vec![]),
        (PROD_BIN, vec![(KEY_ENV, KEY.to_owned())], vec!["--debug"]),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = command(bin, &env, &args).output().unwrap();
        assert!(!out.status.success(), "{bin} {env:?} {args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("gastown-control:"), "{err}");
    }
}

/// The release binaries scripts/build.sh makes: `gastown-control` must not hold the debug code
/// at all (not only keep it switched off). Skipped when they have not been built.
#[test]
fn the_release_binary_is_built_without_the_debug_routes() {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    let release = dir.join("release");
    let contains = |bin: &str| {
        std::fs::read(release.join(bin))
            .ok()
            .map(|bytes| bytes.windows(DEBUG_MARKER.len()).any(|w| w == DEBUG_MARKER))
    };
    match contains("gastown-control") {
        None => eprintln!("skipped: no {}", release.join("gastown-control").display()),
        Some(found) => assert!(
            !found,
            "{} holds the debug routes (rebuild with scripts/build.sh)",
            release.join("gastown-control").display()
        ),
    }
    if let Some(found) = contains("gastown-control-debug") {
        assert!(
            found,
            "the marker is not in the debug binary: the check above proves nothing"
        );
    }
}

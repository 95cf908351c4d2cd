//! The stand-in Kilo gateway (`gastown-gateway`): sandbox tokens accepted and their usage
//! attributed; every other token, and bad bodies, refused with nothing recorded.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use gastown_core::auth::{sign_container, sign_sandbox, Keys};
use gastown_core::control::GATEWAY_CHAT_PATH;
use gastown_core::ids::{OrgId, TownId};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

const SECRET: &str = "stand-in-gateway-nextauth-secret-0123456789";

fn sandbox(secret: &str, user: &str, town: &str, org: Option<&str>, now: i64) -> String {
    let keys = Keys::new(Some(secret), None);
    let org = org.map(|o| OrgId::parse(o).unwrap());
    sign_sandbox(
        &keys,
        user,
        &TownId::parse(town).unwrap(),
        org.as_ref(),
        now,
    )
    .unwrap()
    .0
}

/// An HS256 token with `claims`, signed with `secret`, made by hand.
fn hand_made(secret: &str, claims: &Value) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = B64.encode(claims.to_string());
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{claims}").as_bytes());
    let signature = B64.encode(mac.finalize().into_bytes());
    format!("{header}.{claims}.{signature}")
}

fn chat(token: Option<&str>, body: &Value) -> Req {
    let r = req("POST", GATEWAY_CHAT_PATH).json(body);
    match token {
        Some(t) => r.header("authorization", &format!("Bearer {t}")),
        None => r,
    }
}

fn usage(s: &Server) -> Vec<Value> {
    let (status, body) = req("GET", "/debug/usage").send(s);
    assert_eq!(status, 200);
    body["calls"].as_array().unwrap().clone()
}

fn hello(model: &str) -> Value {
    // 12 + 8 characters of text: 5 prompt tokens.
    json!({
        "model": model,
        "messages": [
            { "role": "system", "content": "be brief" },
            { "role": "user", "content": [{ "type": "text", "text": "hello world!" }] }
        ]
    })
}

#[test]
fn health_answers() {
    let g = start_gateway(SECRET);
    assert_eq!(req("GET", "/health").send(&g), (200, json!({ "ok": true })));
    assert_eq!(req("GET", "/nope").send(&g).0, 404);
    let (status, body) = req("GET", GATEWAY_CHAT_PATH).send(&g);
    assert_eq!(
        (status, &body["error"]["code"]),
        (405, &json!("method_not_allowed"))
    );
}

#[test]
fn sandbox_tokens_are_served_and_their_usage_attributed() {
    let g = start_gateway(SECRET);
    let with_org = sandbox(SECRET, "user-1", "town-a", Some("org-1"), now());
    let personal = sandbox(SECRET, "user-2", "town-b", None, now());

    let before = now();
    let (status, answer) = chat(Some(&with_org), &hello("kilo/model-a")).send(&g);
    assert_eq!(status, 200, "{answer}");
    let created = answer["created"].as_i64().unwrap();
    assert!(created >= before && created <= now(), "{created}");
    assert_eq!(
        answer,
        json!({
            "id": "chatcmpl-standin-1",
            "object": "chat.completion",
            "created": created,
            "model": "kilo/model-a",
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": "stand-in gateway reply" },
                "finish_reason": "stop"
            }],
            "usage": { "prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10 }
        })
    );

    let body = json!({ "model": "kilo/model-b", "messages": [] });
    let (status, answer) = chat(Some(&personal), &body).send(&g);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "chatcmpl-standin-2");
    assert_eq!(answer["usage"]["prompt_tokens"], 1, "at least one");

    assert_eq!(
        usage(&g),
        [
            json!({
                "user_id": "user-1", "organization_id": "org-1", "town_id": "town-a",
                "model": "kilo/model-a", "prompt_tokens": 5, "completion_tokens": 5
            }),
            json!({
                "user_id": "user-2", "organization_id": null, "town_id": "town-b",
                "model": "kilo/model-b", "prompt_tokens": 1, "completion_tokens": 5
            }),
        ]
    );
}

#[test]
fn every_other_token_is_refused_and_nothing_recorded() {
    let g = start_gateway(SECRET);
    let now = now();
    let expired = sandbox(SECRET, "user-1", "town-a", None, now - 25 * 60 * 60);
    let forged = sandbox(
        "another-secret-another-secret-0123",
        "user-1",
        "town-a",
        None,
        now,
    );
    // A container token signed with the very same secret: only its kind is wrong.
    let both = Keys::new(None, Some(SECRET));
    let container = sign_container(&both, &TownId::parse("town-a").unwrap(), "user-1", 1, now)
        .unwrap()
        .0;
    let user = hand_made(
        SECRET,
        &json!({ "kiloUserId": "user-1", "iat": now, "exp": now + 600 }),
    );
    // The hand-made user token is a good one, so the refusal below is about its kind.
    Keys::new(Some(SECRET), None)
        .verify_user(&user, now)
        .expect("a valid user token");
    let valid = sandbox(SECRET, "user-1", "town-a", None, now);
    let (head, rest) = valid.split_once('.').unwrap();
    let tampered = format!("{head}.{}", rest.replacen('.', "x.", 1));

    for (name, token) in [
        ("expired", Some(expired.as_str())),
        ("forged", Some(forged.as_str())),
        ("container", Some(container.as_str())),
        ("user", Some(user.as_str())),
        ("tampered", Some(tampered.as_str())),
        ("garbage", Some("not-a-token")),
        ("none", None),
    ] {
        let (status, body) = chat(token, &hello("kilo/m")).send(&g);
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{name}: {body}");
        assert!(body["error"]["message"].is_string(), "{name}: {body}");
        if let Some(token) = token {
            assert!(
                !body.to_string().contains(token),
                "{name}: the token is repeated"
            );
        }
    }
    let basic = req("POST", GATEWAY_CHAT_PATH)
        .json(&hello("kilo/m"))
        .header("authorization", &format!("Basic {valid}"));
    assert_eq!(basic.send(&g).0, 401);
    assert_eq!(usage(&g), Vec::<Value>::new());

    // The same request with the valid token is served: the refusals were about the tokens.
    assert_eq!(chat(Some(&valid), &hello("kilo/m")).send(&g).0, 200);
    assert_eq!(usage(&g).len(), 1);
}

#[test]
fn bad_bodies_are_refused_and_nothing_recorded() {
    let g = start_gateway(SECRET);
    let token = sandbox(SECRET, "user-1", "town-a", None, now());
    let bearer = format!("Bearer {token}");
    for (name, body) in [
        ("not json", b"{nope".to_vec()),
        ("empty", Vec::new()),
        ("not an object", b"[1,2]".to_vec()),
        ("no model", br#"{"messages":[]}"#.to_vec()),
        (
            "model not a string",
            br#"{"model":1,"messages":[]}"#.to_vec(),
        ),
        ("empty model", br#"{"model":"","messages":[]}"#.to_vec()),
        ("no messages", br#"{"model":"m"}"#.to_vec()),
        (
            "messages not an array",
            br#"{"model":"m","messages":"hi"}"#.to_vec(),
        ),
    ] {
        let r = req("POST", GATEWAY_CHAT_PATH)
            .raw("application/json", &body)
            .header("authorization", &bearer);
        let (status, answer) = r.send(&g);
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request", "{name}");
    }
    // Too large, announced: refused before it is read.
    let head = format!(
        "POST {GATEWAY_CHAT_PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         authorization: {bearer}\r\ncontent-length: {}\r\n\r\n",
        5 * 1024 * 1024
    );
    let (status, answer) = exchange(g.addr, head.as_bytes());
    assert_eq!(
        (status, &answer["error"]["code"]),
        (413, &json!("body_too_large"))
    );
    // No length.
    let head = format!(
        "POST {GATEWAY_CHAT_PATH} HTTP/1.1\r\nhost: localhost\r\nauthorization: {bearer}\r\n\r\n"
    );
    assert_eq!(exchange(g.addr, head.as_bytes()).0, 411);
    assert_eq!(exchange(g.addr, b"garbage\r\n\r\n").0, 400);
    assert_eq!(usage(&g), Vec::<Value>::new());
}

#[test]
fn a_stalled_request_is_closed_at_the_deadline() {
    let g = start_gateway(SECRET); // 1.5 s deadline
    let token = sandbox(SECRET, "user-1", "town-a", None, now());
    let head = format!(
        "POST {GATEWAY_CHAT_PATH} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\""
    );
    let mut stalled = std::net::TcpStream::connect(g.addr).unwrap();
    std::io::Write::write_all(&mut stalled, head.as_bytes()).unwrap();
    // Meanwhile others are served.
    assert_eq!(req("GET", "/health").send(&g).0, 200);
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut stalled, &mut answer).unwrap();
    let (status, body) = parse_answer(&answer);
    assert_eq!(
        (status, &body["error"]["code"]),
        (408, &json!("request_timeout"))
    );
    assert_eq!(usage(&g), Vec::<Value>::new());
}

#[test]
fn refuses_to_start_without_the_secret() {
    for env in [vec![], vec![("NEXTAUTH_SECRET", "")]] {
        let mut cmd = command(GATEWAY_BIN, &env, &[]);
        if env.is_empty() {
            cmd.env_remove("NEXTAUTH_SECRET");
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("gastown-gateway:") && err.contains("NEXTAUTH_SECRET"),
            "{err}"
        );
    }
}

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
    sandbox_with_exp(secret, user, town, org, now).0
}

/// A sandbox token and its `exp`.
fn sandbox_with_exp(
    secret: &str,
    user: &str,
    town: &str,
    org: Option<&str>,
    now: i64,
) -> (String, i64) {
    let keys = Keys::new(Some(secret), None);
    let org = org.map(|o| OrgId::parse(o).unwrap());
    sign_sandbox(
        &keys,
        user,
        &TownId::parse(town).unwrap(),
        org.as_ref(),
        now,
        gastown_core::auth::SANDBOX_TOKEN_TTL_SECS,
    )
    .unwrap()
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
    let (with_org, org_exp) = sandbox_with_exp(SECRET, "user-1", "town-a", Some("org-1"), now());
    let (personal, personal_exp) = sandbox_with_exp(SECRET, "user-2", "town-b", None, now() - 5);

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
                "model": "kilo/model-a", "prompt_tokens": 5, "completion_tokens": 5,
                "token_expires_at": org_exp
            }),
            json!({
                "user_id": "user-2", "organization_id": null, "town_id": "town-b",
                "model": "kilo/model-b", "prompt_tokens": 1, "completion_tokens": 5,
                "token_expires_at": personal_exp
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
    let container = sign_container(
        &both,
        &TownId::parse("town-a").unwrap(),
        "user-1",
        1,
        now,
        gastown_core::auth::CONTAINER_TOKEN_TTL_SECS,
    )
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

/// A request as the Kilo CLI makes it: a system prompt, `messages`, the `write` and `bash`
/// tools.
fn kilo(messages: &[Value], stream: bool) -> Value {
    let mut all = vec![json!({ "role": "system", "content": "You are Kilo. ".repeat(50) })];
    all.extend_from_slice(messages);
    let tool = |name: &str, parameters: Value| {
        json!({ "type": "function", "function": {
            "name": name, "description": format!("the {name} tool"), "parameters": parameters
        } })
    };
    json!({
        "model": "kilo/test-model",
        "max_tokens": 32000,
        "messages": all,
        "tools": [
            tool("write", json!({ "type": "object", "properties": {
                "filePath": { "type": "string" }, "content": { "type": "string" }
            } })),
            tool("bash", json!({ "type": "object", "properties": {
                "command": { "type": "string" }, "description": { "type": "string" }
            } })),
        ],
        "tool_choice": "auto",
        "stream": stream,
        "stream_options": { "include_usage": true },
    })
}

/// A user message as Kilo sends it: text parts.
fn user(text: &str) -> Value {
    json!({ "role": "user", "content": [{ "type": "text", "text": text }] })
}

const BRIEF: &str = "Work on this bead.\n[script:agent]\nBead: gt-7\nTitle: Add the notes\n\
                     Branch: gastown/polecat/gt-7";

/// Sends `r` and reads the streamed answer to its end: the status, the head (lowercase) and
/// the data of each event.
fn stream(s: &Server, r: &Req) -> (u16, String, Vec<String>) {
    let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut conn, &r.bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(body.ends_with("\n\n"), "{body:?}");
    let events = body
        .strip_suffix("\n\n")
        .unwrap()
        .split("\n\n")
        .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
        .collect();
    (status, head.to_ascii_lowercase(), events)
}

/// The chunks of a stream that ended with `[DONE]`, each checked to carry the completion's id,
/// object, creation time and model.
fn parsed_chunks(events: &[String]) -> Vec<Value> {
    let (done, events) = events.split_last().unwrap();
    assert_eq!(done, "[DONE]");
    let chunks: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["id"], chunks[0]["id"], "{c}");
        assert_eq!(c["created"], chunks[0]["created"], "{c}");
        assert_eq!(c["model"], "kilo/test-model", "{c}");
    }
    chunks
}

/// The first choice's delta of each chunk but the last (the usage).
fn choice_deltas(chunks: &[Value]) -> Vec<&Value> {
    chunks[..chunks.len() - 1]
        .iter()
        .map(|c| &c["choices"][0]["delta"])
        .collect()
}

/// The tool call of a non-streamed answer: its name and its arguments, parsed.
fn tool_call(answer: &Value) -> (String, Value) {
    assert_eq!(
        answer["choices"][0]["finish_reason"], "tool_calls",
        "{answer}"
    );
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    let arguments = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    (
        call["function"]["name"].as_str().unwrap().to_owned(),
        arguments,
    )
}

fn text(answer: &Value) -> &str {
    assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{answer}");
    answer["choices"][0]["message"]["content"].as_str().unwrap()
}

#[test]
fn streamed_answers_are_chunks_kilo_reads() {
    let g = start_gateway(SECRET);
    let token = sandbox(SECRET, "user-1", "town-a", None, now());

    let (status, head, events) = stream(&g, &chat(Some(&token), &kilo(&[user(BRIEF)], true)));
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let chunks = parsed_chunks(&events);
    assert_eq!(chunks[0]["id"], "chatcmpl-standin-1");
    let deltas = choice_deltas(&chunks);
    assert_eq!(*deltas[0], json!({ "role": "assistant", "content": "" }));
    assert_eq!(
        deltas[1]["tool_calls"],
        json!([{ "index": 0, "id": "call_1", "type": "function",
                 "function": { "name": "write", "arguments": "" } }])
    );
    let fragments = &deltas[2..deltas.len() - 1];
    assert!(fragments.len() > 1, "{events:?}");
    let arguments: String = fragments
        .iter()
        .map(|d| {
            assert_eq!(d["tool_calls"][0]["index"], 0, "{d}");
            d["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({
            "filePath": "gastown/gt-7.md",
            "content": "# Add the notes\n\nWritten by the scripted model for bead gt-7.\n"
        })
    );
    let finish = &chunks[chunks.len() - 2]["choices"];
    assert_eq!(
        *finish,
        json!([{ "index": 0, "delta": {}, "finish_reason": "tool_calls" }])
    );
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    let recorded = &usage(&g)[0];
    let (prompt, completion) = (&recorded["prompt_tokens"], &recorded["completion_tokens"]);
    assert_eq!(
        last["usage"],
        json!({
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt.as_u64().unwrap() + completion.as_u64().unwrap()
        })
    );
    // "write" and the arguments' JSON, over 4.
    assert_eq!(
        completion.as_u64().unwrap(),
        (5 + arguments.chars().count() as u64) / 4
    );

    // A text: its content, then `stop`.
    let mut no_tools = kilo(&[user(BRIEF)], true);
    no_tools.as_object_mut().unwrap().remove("tools");
    let (status, _, events) = stream(&g, &chat(Some(&token), &no_tools));
    assert_eq!(status, 200);
    let chunks = parsed_chunks(&events);
    assert_eq!(chunks[0]["id"], "chatcmpl-standin-2");
    let deltas = choice_deltas(&chunks);
    assert_eq!(
        deltas[1..],
        [&json!({ "content": "stand-in gateway reply" }), &json!({})]
    );
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 5);
    assert_eq!(usage(&g).len(), 2);
}

#[test]
fn the_agent_script_steps_with_the_tool_results() {
    let g = start_gateway(SECRET);
    let token = sandbox(SECRET, "user-1", "town-a", Some("org-1"), now());
    let mut messages = vec![user(BRIEF)];
    let mut answers = Vec::new();
    for step in 0..5 {
        let (status, answer) = chat(Some(&token), &kilo(&messages, false)).send(&g);
        assert_eq!(status, 200, "step {step}: {answer}");
        assert_eq!(answer["id"], format!("chatcmpl-standin-{}", step + 1));
        if let Some(calls) = answer["choices"][0]["message"].get("tool_calls") {
            messages.push(json!({ "role": "assistant", "content": null, "tool_calls": calls }));
            // Whatever the tool said, the script goes on.
            let output = ["Wrote file successfully.", "exit code 1", "Error: no gt"][step];
            messages.push(json!({
                "role": "tool", "tool_call_id": calls[0]["id"], "content": output
            }));
        }
        answers.push(answer);
    }
    assert_eq!(
        tool_call(&answers[0]),
        (
            "write".to_owned(),
            json!({
                "filePath": "gastown/gt-7.md",
                "content": "# Add the notes\n\nWritten by the scripted model for bead gt-7.\n"
            })
        )
    );
    assert_eq!(
        answers[0]["choices"][0]["message"]["tool_calls"][0]["id"],
        "call_1"
    );
    assert_eq!(
        tool_call(&answers[1]),
        (
            "bash".to_owned(),
            json!({
                "command": "git add -A && git commit -q -m 'Add the notes' && git push -q origin \
                            HEAD:refs/heads/gastown/polecat/gt-7",
                "description": "Commit and push the work"
            })
        )
    );
    assert_eq!(
        tool_call(&answers[2]),
        (
            "bash".to_owned(),
            json!({
                "command": "gt done --summary 'Add the notes' --branch gastown/polecat/gt-7",
                "description": "Report the bead done"
            })
        )
    );
    assert_eq!(text(&answers[3]), "done: gt-7");
    // The conversation does not grow past step 3: the same answer.
    assert_eq!(text(&answers[4]), "done: gt-7");

    // A streamed step is the same step.
    let (_, _, events) = stream(&g, &chat(Some(&token), &kilo(&messages[..3], true)));
    let chunks = parsed_chunks(&events);
    assert_eq!(
        choice_deltas(&chunks)[1]["tool_calls"][0]["function"]["name"],
        "bash"
    );

    // A branch that is no branch is refused, at every step.
    let bad = BRIEF.replace("gastown/polecat/gt-7", "x; rm -rf ~");
    let (_, answer) = chat(Some(&token), &kilo(&[user(&bad)], false)).send(&g);
    assert_eq!(text(&answer), "cannot: bad branch");
    let attributed = usage(&g);
    assert_eq!(attributed.len(), 7);
    assert!(attributed
        .iter()
        .all(|u| u["user_id"] == "user-1" && u["organization_id"] == "org-1"));
}

#[test]
fn requests_without_tools_get_the_fixed_text() {
    let g = start_gateway(SECRET);
    let token = sandbox(SECRET, "user-1", "town-a", None, now());
    // A title request: the brief is there, the tools are not.
    let mut title = kilo(&[user(BRIEF)], false);
    title.as_object_mut().unwrap().remove("tools");
    let mut empty = kilo(&[user(BRIEF)], false);
    empty["tools"] = json!([]);
    for body in [title, empty, kilo(&[user("hello there")], false)] {
        let (status, answer) = chat(Some(&token), &body).send(&g);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["choices"][0]["message"],
            json!({ "role": "assistant", "content": "stand-in gateway reply" })
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    }
}

#[test]
fn a_follow_up_reply_reaches_the_model() {
    let g = start_gateway(SECRET);
    let token = sandbox(SECRET, "user-1", "town-a", None, now());
    let first = user("hello");
    let answer = json!({ "role": "assistant", "content": "stand-in gateway reply" });
    let follow_up = user("One more thing.\n[script:reply]   second message arrived  \nbye");
    let (status, reply) = chat(Some(&token), &kilo(&[first, answer, follow_up], false)).send(&g);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(text(&reply), "reply: second message arrived");

    // Streamed, after the agent's work: the same.
    let follow_up = json!({ "role": "user", "content": "[script:reply] still there?" });
    let messages = [
        user(BRIEF),
        json!({ "role": "tool", "tool_call_id": "call_1", "content": "ok" }),
        follow_up,
    ];
    let (_, _, events) = stream(&g, &chat(Some(&token), &kilo(&messages, true)));
    let chunks = parsed_chunks(&events);
    assert_eq!(
        *choice_deltas(&chunks)[1],
        json!({ "content": "reply: still there?" })
    );

    // In the first message it is no follow-up.
    let (_, reply) = chat(Some(&token), &kilo(&[user("[script:reply] x")], false)).send(&g);
    assert_eq!(text(&reply), "stand-in gateway reply");
}

#[test]
fn a_slow_answer_is_paced() {
    let g = start_gateway(SECRET);
    let token = sandbox(SECRET, "user-1", "town-a", None, now());
    let started = std::time::Instant::now();
    let (status, _, events) = stream(
        &g,
        &chat(Some(&token), &kilo(&[user("[script:slow]")], true)),
    );
    let took = started.elapsed();
    assert_eq!(status, 200);
    let chunks = parsed_chunks(&events);
    let pieces: Vec<&str> = choice_deltas(&chunks)[1..]
        .iter()
        .filter_map(|d| d["content"].as_str())
        .collect();
    assert_eq!(pieces.len(), 20, "{events:?}");
    assert_eq!(pieces.concat(), "stand-in gateway reply");
    // 19 pauses of 200 ms.
    assert!(took >= std::time::Duration::from_millis(3700), "{took:?}");
}

#[test]
fn a_bad_token_is_refused_before_anything_is_streamed() {
    let g = start_gateway(SECRET);
    let expired = sandbox(SECRET, "user-1", "town-a", None, now() - 25 * 60 * 60);
    let forged = sandbox(
        "another-secret-another-secret-0123",
        "user-1",
        "town-a",
        None,
        now(),
    );
    for (name, token) in [
        ("expired", Some(expired.as_str())),
        ("forged", Some(forged.as_str())),
        ("none", None),
    ] {
        // `parse_answer` checks the answer is JSON, not a stream.
        let (status, body) = chat(token, &kilo(&[user(BRIEF)], true)).send(&g);
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("unauthorized")),
            "{name}: {body}"
        );
    }
    assert_eq!(usage(&g), Vec::<Value>::new());
    let (_, requests) = req("GET", "/debug/requests").send(&g);
    assert_eq!(requests, json!({ "requests": [] }));
}

#[test]
fn debug_requests_show_what_was_asked_without_secrets() {
    let g = start_gateway(SECRET);
    let token = sandbox(SECRET, "user-1", "town-a", Some("org-1"), now());
    let long = "x".repeat(5000);
    let messages = [
        user(BRIEF),
        json!({ "role": "assistant", "content": null, "tool_calls": [] }),
        json!({ "role": "tool", "tool_call_id": "call_1", "content": "Error: file exists" }),
        json!({ "role": "tool", "tool_call_id": "call_2", "content": [{ "type": "text", "text": long }] }),
    ];
    assert_eq!(chat(Some(&token), &kilo(&messages, false)).send(&g).0, 200);
    assert_eq!(chat(Some(&token), &hello("kilo/plain")).send(&g).0, 200);

    let (status, body) = req("GET", "/debug/requests").send(&g);
    assert_eq!(status, 200);
    let requests = body["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2, "{body}");
    let first = &requests[0];
    assert_eq!(
        (
            &first["model"],
            &first["stream"],
            &first["tools"],
            &first["step"]
        ),
        (
            &json!("kilo/test-model"),
            &json!(false),
            &json!(["write", "bash"]),
            &json!(2)
        )
    );
    let outputs = first["tool_outputs"].as_array().unwrap();
    assert_eq!(outputs[0], "Error: file exists");
    assert_eq!(outputs[1], "x".repeat(2000));
    assert_eq!(first["answer"]["call"]["name"], "bash");
    let mut second = requests[1].clone();
    let at = second["at_ms"].take().as_u64().unwrap();
    let now_ms = u64::try_from(now()).unwrap() * 1000;
    assert!(at + 60_000 > now_ms && at <= now_ms + 1000, "{at}");
    assert_eq!(
        second,
        json!({
            "at_ms": null, "town_id": "town-a", "model": "kilo/plain", "stream": false, "tools": [], "step": 0,
            "tool_outputs": [], "user_texts": ["hello world!"],
            "answer": { "text": "stand-in gateway reply" }
        })
    );
    let shown = body.to_string();
    for secret in [token.as_str(), SECRET, "Bearer", "authorization"] {
        assert!(!shown.contains(secret), "{secret} shown");
    }
}

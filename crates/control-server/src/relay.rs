//! The gateway relay of the Kilo runtime ([`crate::kilo`]): a loopback endpoint that the Kilo
//! CLI takes for the Kilo gateway. Each model call it receives goes on to `KILO_GATEWAY_URL`
//! with the town's gateway token as it is *at that moment* (read from the town's
//! `.env.gateway` on every call), and the answer streams back as it arrives. So a token
//! refreshed while a session runs (the worker's push or the control server's self-refresh
//! rewrites that file) reaches the CLI's very next model call, and the CLI never holds the
//! token at all: it knows only the relay's key, made for one run.
//!
//! Rules:
//!
//! * loopback only; `POST` under `/api/gateway/`, nothing else (404/405);
//! * the caller shows the run's key as its bearer, compared in constant time (401);
//! * the request body is at most [`MAX_REQUEST_BYTES`], read before anything is sent on;
//! * only `content-type` and `accept` are passed on, with the token and, for an org town, the
//!   org (`x-kilocode-organizationid`); nothing the CLI sent as credentials goes upstream;
//! * the gateway's status, `content-type` and body come back as they are, the body copied as
//!   it arrives (a streamed completion stays streamed), the connection closed after it;
//! * a missing token is a 503 and an unreachable gateway a 502, both as JSON errors that name
//!   no token.

use crate::http::{self, read_body, read_head, ReadFail, Reply};
use gastown_core::auth::InternalKey;
use gastown_core::control::GATEWAY_TOKEN_ENV;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The path prefix of the gateway's API.
pub const GATEWAY_PREFIX: &str = "/api/gateway/";
/// Largest model request passed on (a long conversation with its tool results).
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// Deadline for reading the CLI's request.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one model call, from connecting to the end of its (streamed) answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A relayed call's thread: a TLS client (https gateways) and a streamed copy, with room to
/// spare (an overflow would end the whole run).
const STACK: usize = 1024 * 1024;
/// How long writing to the CLI may block before the call is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running relay: where the CLI reaches it and the key it must show.
pub struct Relay {
    pub port: u16,
    pub key: String,
}

struct Upstream {
    origin: String,
    token_file: PathBuf,
    organization: Option<String>,
    key: InternalKey,
    http: ureq::Agent,
}

/// The gateway token in the town's gateway env file now, if it holds a plain one.
#[must_use]
pub fn current_token(file: &Path) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    let prefix = format!("{GATEWAY_TOKEN_ENV}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|t| t.trim().to_owned()))
        .filter(|t| crate::workdir::is_plain_token(t))
}

/// Starts the relay on a free loopback port, on a thread of its own that lives as long as the
/// process: calls go to `origin` (an origin as [`crate::client::origin`] makes it) with the
/// token of `token_file`, and `key` is what the CLI must show.
///
/// # Errors
/// Why it could not listen, or an organization id no header can carry.
pub fn start(
    origin: String,
    token_file: PathBuf,
    organization: Option<String>,
    key: &str,
) -> Result<Relay, String> {
    if let Some(org) = &organization {
        if org.is_empty() || !org.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the organization id cannot be sent as a header".to_owned());
        }
    }
    let (listener, bound) = http::listen("gastown-kilo-relay", "127.0.0.1", 0)
        .map_err(|_| "the gateway relay cannot listen".to_owned())?;
    let port = bound
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("the gateway relay listens on {bound}, no port"))?;
    let upstream = Arc::new(Upstream {
        origin,
        token_file,
        organization,
        key: InternalKey::new(Some(key)),
        http: crate::client::agent_with(CALL_TIMEOUT),
    });
    std::thread::Builder::new()
        .name("gastown-kilo-relay".into())
        .spawn(move || {
            let relay = move |stream| relay_one(stream, &upstream);
            let _ = http::serve_each_with_stack(listener, "gastown-kilo-relay", STACK, relay);
        })
        .map_err(|e| format!("cannot start the gateway relay: {e}"))?;
    Ok(Relay {
        port,
        key: key.to_owned(),
    })
}

/// Serves one connection: the call passed on and its answer copied back, or a JSON refusal.
fn relay_one(mut stream: TcpStream, upstream: &Upstream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    match pass_on(&mut stream, upstream) {
        Ok(()) => {}
        Err(ReadFail::Reply(reply)) => {
            let _ = http::write_reply(&mut stream, &reply);
        }
        Err(ReadFail::Closed) => return,
    }
    let _ = stream.shutdown(Shutdown::Write);
}

fn refuse(status: u16, message: &str) -> ReadFail {
    ReadFail::Reply(http::error(status, message))
}

fn pass_on(stream: &mut TcpStream, upstream: &Upstream) -> Result<(), ReadFail> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::with_capacity(8 * 1024);
    let head = read_head(stream, &mut buf, deadline)?;
    let reply = |r: Reply| ReadFail::Reply(r);
    if !head.path().starts_with(GATEWAY_PREFIX) || head.path().contains("/../") {
        return Err(refuse(404, "not a gateway route"));
    }
    if head.method != "POST" {
        return Err(refuse(405, "POST only"));
    }
    let presented = head
        .one("authorization")
        .map_err(reply)?
        .and_then(|v| v.strip_prefix("Bearer "));
    if !upstream.key.matches(presented) {
        return Err(refuse(401, "not this run's relay key"));
    }
    let body = read_body(stream, &head, buf, MAX_REQUEST_BYTES, deadline)?;
    let token = current_token(&upstream.token_file)
        .ok_or_else(|| refuse(503, "the town has no gateway token now"))?;
    let url = format!("{}{}", upstream.origin, head.target);
    let mut call = upstream
        .http
        .post(&url)
        .header("authorization", &format!("Bearer {token}"));
    for name in ["content-type", "accept"] {
        if let Some(value) = head.one(name).map_err(reply)? {
            call = call.header(name, value);
        }
    }
    if let Some(org) = &upstream.organization {
        call = call.header("x-kilocode-organizationid", org);
    }
    let response = call.send(&body[..]).map_err(|e| {
        eprintln!("gastown-kilo-relay: the gateway was not reached: {e}");
        refuse(502, "the gateway was not reached")
    })?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .unwrap_or("application/octet-stream")
        .to_owned();
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncache-control: no-store\r\n\
         connection: close\r\n\r\n",
        http::reason(status)
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return Err(ReadFail::Closed);
    }
    let mut reader = response.into_body().into_reader();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => {
                if stream.write_all(&chunk[..n]).is_err() {
                    return Err(ReadFail::Closed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_its_line_and_must_be_plain() {
        let dir = std::env::temp_dir().join(format!("gastown-relay-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".env.gateway");
        fs::write(&file, format!("OTHER=x\n{GATEWAY_TOKEN_ENV}=abc.def.ghi\n")).unwrap();
        assert_eq!(current_token(&file).as_deref(), Some("abc.def.ghi"));
        fs::write(&file, format!("{GATEWAY_TOKEN_ENV}=a b\n")).unwrap();
        assert_eq!(current_token(&file), None);
        fs::write(&file, "OTHER=x\n").unwrap();
        assert_eq!(current_token(&file), None);
        assert_eq!(current_token(&dir.join("missing")), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A one-connection-at-a-time stand-in for the gateway: records each call's head and body,
    /// answers `part one`, waits for the test's word, then `part two` and closes.
    fn fake_gateway() -> (
        String,
        std::sync::mpsc::Receiver<String>,
        std::sync::mpsc::Sender<()>,
    ) {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                seen_tx
                    .send(format!("{head}\n{}", String::from_utf8_lossy(&body)))
                    .unwrap();
                stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\npart one\n",
                    )
                    .unwrap();
                let _ = go_rx.recv();
                let _ = stream.write_all(b"part two\n");
            }
        });
        (origin, seen, go)
    }

    fn call(port: u16, key: &str, path: &str) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let body = r#"{"model":"m"}"#;
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        stream
    }

    fn read_all(mut stream: TcpStream) -> String {
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn each_call_carries_the_token_of_that_moment_and_streams_back() {
        let dir = std::env::temp_dir().join(format!("gastown-relay-call-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".env.gateway");
        fs::write(&file, format!("{GATEWAY_TOKEN_ENV}=first.token.a\n")).unwrap();
        let (origin, seen, go) = fake_gateway();
        let relay = start(origin, file.clone(), Some("org-7".into()), "run-key").unwrap();

        let mut first = call(relay.port, "run-key", "/api/gateway/chat/completions");
        let upstream = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            upstream.starts_with("POST /api/gateway/chat/completions "),
            "{upstream}"
        );
        let lower = upstream.to_ascii_lowercase();
        assert!(
            lower.contains("authorization: bearer first.token.a"),
            "{upstream}"
        );
        assert!(
            lower.contains("x-kilocode-organizationid: org-7"),
            "{upstream}"
        );
        assert!(
            !upstream.contains("run-key"),
            "the run's key stays here: {upstream}"
        );
        assert!(upstream.ends_with(r#"{"model":"m"}"#), "{upstream}");
        // The first piece arrives while the gateway still holds the rest: streamed, not buffered.
        let mut piece = [0u8; 512];
        let mut got = String::new();
        while !got.contains("part one") {
            let n = first.read(&mut piece).unwrap();
            assert!(n > 0, "closed early: {got}");
            got.push_str(&String::from_utf8_lossy(&piece[..n]));
        }
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("content-type: text/event-stream\r\n"), "{got}");
        assert!(!got.contains("part two"));
        go.send(()).unwrap();
        assert!(format!("{got}{}", read_all(first)).ends_with("part one\npart two\n"));

        // A refresh rewrites the file; the next call carries the new token.
        fs::write(&file, format!("{GATEWAY_TOKEN_ENV}=second.token.b\n")).unwrap();
        let second = call(relay.port, "run-key", "/api/gateway/chat/completions");
        let upstream = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            upstream
                .to_ascii_lowercase()
                .contains("authorization: bearer second.token.b"),
            "{upstream}"
        );
        go.send(()).unwrap();
        assert!(read_all(second).ends_with("part two\n"));

        // Refusals, none of which reaches the gateway.
        let status = |s: TcpStream| read_all(s).lines().next().unwrap_or_default().to_owned();
        assert!(status(call(
            relay.port,
            "wrong-key",
            "/api/gateway/chat/completions"
        ))
        .starts_with("HTTP/1.1 401"));
        assert!(
            status(call(relay.port, "run-key", "/v1/chat/completions")).starts_with("HTTP/1.1 404")
        );
        fs::write(&file, "NOTHING=here\n").unwrap();
        let none = read_all(call(relay.port, "run-key", "/api/gateway/chat/completions"));
        assert!(none.starts_with("HTTP/1.1 503"), "{none}");
        assert!(seen.try_recv().is_err(), "a refused call went upstream");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_org_that_no_header_can_carry_is_refused() {
        for org in ["", "a b", "a\nb"] {
            let err = start(
                "http://127.0.0.1:9".into(),
                PathBuf::from("/nonexistent"),
                Some(org.to_owned()),
                "k",
            )
            .err();
            assert!(err.is_some(), "{org:?}");
        }
    }
}

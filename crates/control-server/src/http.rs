//! The HTTP/1.1 plumbing of the control server, shared with the stand-in gateway of
//! `gastown-standins`: a thread per connection (at most [`MAX_CONNECTIONS`] at once), one
//! request per connection, a deadline on reading the whole request, a bounded head and body,
//! and JSON answers. A stalled upload thus holds only its own thread: its connection is answered
//! 408 and closed when the deadline passes.
//!
//! What a request may contain (routes, credentials, media types) is the caller's business; this
//! module only gets the bytes in and out. Every refusal it makes itself is a [`Reply`] built by
//! [`error`], `{"error": "<message>"}`; a server with another error shape reshapes it.

use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Longest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Default deadline for reading a whole request.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEADERS: usize = 64;
/// How long a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// A status and its JSON body.
pub type Reply = (u16, Value);

/// `{"error": message}` with `status`.
pub fn error(status: u16, message: &str) -> Reply {
    (status, json!({ "error": message }))
}

/// Binds `host:port` for `program`; with the listener, the address bound (with port 0, the
/// port the system chose) for the line that says where it listens, which tests read.
///
/// # Errors
/// The exit code, 1, the failure logged as `<program>: cannot listen on <addr>: <why>`.
pub fn listen(program: &str, host: &str, port: u16) -> Result<(TcpListener, String), i32> {
    let addr = format!("{host}:{port}");
    let listener = TcpListener::bind(&addr).map_err(|e| {
        eprintln!("{program}: cannot listen on {addr}: {e}");
        1
    })?;
    let bound = listener
        .local_addr()
        .map_or_else(|_| addr.clone(), |a| a.to_string());
    Ok((listener, bound))
}

/// Accepts connections until the listener fails, each answered on its own thread by `answer`.
/// Past [`MAX_CONNECTIONS`] at once, a connection is answered 503 at once. `name` prefixes the
/// log lines and names the threads.
///
/// # Errors
/// Never at present: a failed accept or thread start is logged and the loop goes on.
pub fn serve_each(
    listener: TcpListener,
    name: &'static str,
    answer: impl Fn(TcpStream) + Send + Sync + 'static,
) -> io::Result<()> {
    serve_each_with_stack(listener, name, CONNECTION_STACK, answer)
}

/// A connection thread's stack: enough for a route's own HTTP call (a TLS client included).
pub const CONNECTION_STACK: usize = 256 * 1024;

/// As [`serve_each`], each connection's thread with a stack of `stack` bytes (for answers that
/// make deeper calls of their own).
///
/// # Errors
/// As [`serve_each`].
pub fn serve_each_with_stack(
    listener: TcpListener,
    name: &'static str,
    stack: usize,
    answer: impl Fn(TcpStream) + Send + Sync + 'static,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                eprintln!("{name}: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = write_reply(&mut stream, &error(503, "too many connections"));
            continue;
        }
        let (active, answer) = (Arc::clone(&active), Arc::clone(&answer));
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-conn"))
            .stack_size(stack)
            .spawn(move || {
                answer(stream);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            eprintln!("{name}: cannot start a thread: {e}");
        }
    }
    Ok(())
}

/// Serves one connection: `request` reads and handles one request before `read_timeout`
/// passes, its answer is written, the connection closed.
pub fn one_exchange(
    mut stream: TcpStream,
    read_timeout: Duration,
    request: impl FnOnce(&mut TcpStream, Instant) -> Result<Reply, ReadFail>,
) {
    let deadline = Instant::now() + read_timeout;
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let reply = match request(&mut stream, deadline) {
        Ok(reply) => reply,
        Err(ReadFail::Reply(reply)) => reply,
        Err(ReadFail::Closed) => return,
    };
    if write_reply(&mut stream, &reply).is_err() {
        return;
    }
    linger(&mut stream);
}

/// Closes gracefully: a request body left unread would make the kernel reset the connection
/// and the client could lose the answer, so read (and drop) what is still coming, briefly.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut chunk = [0u8; 8192];
    let mut drained = 0usize;
    while drained < 2 * gastown_core::control::MAX_BODY_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero()
            || stream
                .set_read_timeout(Some(left.min(Duration::from_millis(250))))
                .is_err()
        {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// The reason phrase of `status` (`Error` for one without its own here).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        402 => "Payment Required",
        429 => "Too Many Requests",
        502 => "Bad Gateway",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Writes `reply` as a whole JSON answer that closes the connection.
///
/// # Errors
/// The write's failure.
pub fn write_reply(stream: &mut TcpStream, &(status, ref body): &Reply) -> io::Result<()> {
    let body = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 401 {
        head.push_str("www-authenticate: Bearer\r\n");
    }
    head.push_str("\r\n");
    head.push_str(&body);
    stream.write_all(head.as_bytes())?;
    stream.flush()
}

/// What reading a request ran into.
pub enum ReadFail {
    /// The peer went away (or sent nothing): no answer.
    Closed,
    /// Answer this and close.
    Reply(Reply),
}

/// Reads until `done(buf)`, the deadline passes or the peer closes.
fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    mut done: impl FnMut(&[u8]) -> bool,
) -> Result<(), ReadFail> {
    let mut chunk = [0u8; 8192];
    while !done(buf) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFail::Reply(error(408, "request not received in time")));
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return Err(ReadFail::Closed);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadFail::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadFail::Reply(error(408, "request not received in time")))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadFail::Closed),
        }
    }
    Ok(())
}

/// A parsed request head.
pub struct Head {
    pub method: String,
    pub target: String,
    /// Lowercase names, raw values.
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// The value of the header `name` (lowercase) if it occurs exactly once.
    ///
    /// # Errors
    /// A 400 when it repeats or is not UTF-8.
    pub fn one(&self, name: &str) -> Result<Option<&str>, Reply> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(error(400, &format!("{name} given more than once")));
        }
        match first {
            None => Ok(None),
            Some((_, v)) => std::str::from_utf8(v)
                .map(|s| Some(s.trim()))
                .map_err(|_| error(400, &format!("{name} is not UTF-8"))),
        }
    }

    /// The path of the target, without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// Reads the head; `buf` keeps whatever of the body came with it.
///
/// # Errors
/// The refusal to answer (400, 408, 431), or the peer gone.
pub fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Head, ReadFail> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    method: req.method.unwrap_or_default().to_owned(),
                    target: req.path.unwrap_or_default().to_owned(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                        .collect(),
                };
                buf.drain(..len);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(ReadFail::Reply(error(431, "request head too large")))
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadFail::Reply(error(431, "too many headers")))
            }
            Err(_) => return Err(ReadFail::Reply(error(400, "malformed request"))),
        }
        let before = buf.len();
        read_until(stream, buf, deadline, |b| b.len() > before)?;
    }
}

/// Reads the body announced by `head`'s `content-length` (at most `max` bytes), `buf` holding
/// what came with the head. A chunked body, a missing or bad length and one over `max` are
/// refused before anything more is read.
///
/// # Errors
/// The refusal to answer (400, 408, 411, 413), or the peer gone.
pub fn read_body(
    stream: &mut TcpStream,
    head: &Head,
    mut buf: Vec<u8>,
    max: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ReadFail> {
    let refuse = ReadFail::Reply;
    if head.one("transfer-encoding").map_err(refuse)?.is_some() {
        return Err(refuse(error(
            411,
            "send a content-length, not a transfer-encoding",
        )));
    }
    let length = match head.one("content-length").map_err(refuse)? {
        None => return Err(refuse(error(411, "content-length required"))),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse::<usize>().unwrap_or(usize::MAX)
        }
        Some(_) => return Err(refuse(error(400, "bad content-length"))),
    };
    if length > max {
        return Err(refuse(error(413, "body too large")));
    }
    read_until(stream, &mut buf, deadline, |b| b.len() >= length)?;
    buf.truncate(length);
    Ok(buf)
}

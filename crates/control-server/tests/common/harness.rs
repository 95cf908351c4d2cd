//! The integration tests' harness, shared by this crate's tests and those of
//! `gastown-standins` (which include this file): start a built binary on a free loopback port
//! (each control server with its own temporary work directory), talk raw HTTP/1.1 to it, drive
//! a town's agents, stand in for the worker, wait for something to become true. Which binaries
//! there are is each crate's `common/mod.rs`'s business.

use gastown_control::workdir::WORKDIR_ENV;
use gastown_core::control::{control_secret, KEY_ENV, SECRET_ENV, TOWN_ID_ENV, WORKER_URL_ENV};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const KEY: &str = "dev-gastown-control-key-change-me-0123456789";

/// A running binary, killed (and its temporary work directory removed) when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The control server's work directory, made for it by [`start`].
    pub workdir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.workdir.starts_with(std::env::temp_dir()) {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
    }
}

impl Server {
    /// `<workdir>/<town>`.
    pub fn town_dir(&self, town: &str) -> PathBuf {
        self.workdir.join(town)
    }

    /// `<workdir>/<town>` as the server names it (it resolves its work directory at start).
    pub fn canonical_town_dir(&self, town: &str) -> PathBuf {
        std::fs::canonicalize(&self.workdir).unwrap().join(town)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A temporary directory ([`temp_dir`]), removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        TempDir(temp_dir(name))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `name=value` lines of a file, as an `env` dump or a probe script writes them (no value
/// here spans lines).
pub fn read_pairs(path: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A new, empty directory under the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "gastown-control-test-{name}-{}-{nanos}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The control server's own variables, which a test's child must not inherit from the shell.
pub const SERVER_ENV: [&str; 5] = [
    KEY_ENV,
    SECRET_ENV,
    TOWN_ID_ENV,
    WORKDIR_ENV,
    WORKER_URL_ENV,
];

/// `cmd` without any of [`SERVER_ENV`].
pub fn without_server_env(cmd: &mut Command) {
    for name in SERVER_ENV {
        cmd.env_remove(name);
    }
}

/// The binary with `--port 0` and `args`, and none of the control server's variables but
/// `env`.
pub fn command(bin: &str, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--port", "0"]).args(args);
    without_server_env(&mut cmd);
    cmd.envs(env.iter().copied());
    cmd
}

/// Starts a control server binary with a fresh temporary work directory (unless `args` name
/// one) and waits for its listening line.
pub fn start(bin: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
    let workdir = temp_dir("workdir");
    let workdir_arg = workdir.to_str().unwrap().to_owned();
    let mut all: Vec<&str> = args.to_vec();
    if !args.contains(&"--workdir") {
        all.extend(["--workdir", &workdir_arg]);
    }
    spawn(command(bin, env, &all), workdir)
}

/// Runs `cmd` (its stdout piped) and waits for its listening line, `… http://<addr> …`.
pub fn spawn(mut cmd: Command, workdir: PathBuf) -> Server {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    Server {
        child,
        addr,
        workdir,
    }
}

/// Seconds since the epoch, for the tokens tests sign.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

pub fn secret(town: &str) -> String {
    control_secret(KEY.as_bytes(), town)
}

/// A request under construction; `send` writes it and reads the whole answer.
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn req(method: &'static str, path: &str) -> Req {
    Req {
        method,
        path: path.to_owned(),
        headers: vec![("host".into(), "127.0.0.1".into())],
        body: Vec::new(),
    }
}

impl Req {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Authenticated as the worker for `town`.
    pub fn auth(self, town: &str) -> Self {
        self.auth_as(town, &secret(town))
    }
    pub fn auth_as(self, town: &str, secret: &str) -> Self {
        self.header("authorization", &format!("Bearer {secret}"))
            .header("x-gastown-town-id", town)
    }
    pub fn json(self, body: &Value) -> Self {
        self.raw("application/json", body.to_string().as_bytes())
    }
    pub fn raw(mut self, content_type: &str, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self.header("content-type", content_type)
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        if self.method == "POST" {
            out.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
    pub fn send(&self, s: &Server) -> (u16, Value) {
        exchange(s.addr, &self.bytes())
    }
}

/// Writes `raw`, reads until the server closes, returns status and JSON body.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    parse_answer(&answer)
}

pub fn parse_answer(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `POST /refresh-token` with the container token `token`.
pub fn refresh(town: &str, token: &str) -> Req {
    req("POST", "/refresh-token").json(&json!({ "token": token, "townId": town }))
}

/// `POST /sync-config` with `env` and `settings`, authenticated for `town`.
pub fn sync(s: &Server, town: &str, env: Value, settings: Value) -> (u16, Value) {
    req("POST", "/sync-config")
        .json(&json!({ "env": env, "settings": settings, "townId": town }))
        .auth(town)
        .send(s)
}

pub fn town_state(s: &Server, town: &str) -> (u16, Value) {
    req("GET", &format!("/debug/towns/{town}"))
        .auth(town)
        .send(s)
}

/// `POST /agents/start` with `body`, authenticated for `town`.
pub fn start_agent(s: &Server, town: &str, body: &Value) -> (u16, Value) {
    req("POST", "/agents/start").json(body).auth(town).send(s)
}

/// `GET /agents/:agent/status`, authenticated for `town`.
pub fn status(s: &Server, town: &str, agent: &str) -> (u16, Value) {
    req("GET", &format!("/agents/{agent}/status"))
        .auth(town)
        .send(s)
}

/// Whether the agent's process has exited, as the server reports it.
pub fn exited(s: &Server, town: &str, agent: &str) -> bool {
    status(s, town, agent).1["state"] == "exited"
}

/// Waits up to `limit` for `check` to hold, polling every 20 ms; whether it did.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON in the file at `path`.
pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// One request the fake worker received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    /// Every header, its name in lower case, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The value of the header `name` (in lower case), the first when there are several.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the fake worker answers: a status and a body; `{n}` in the body becomes the number of
/// the request (from 1), so each answer carries a new token.
struct Answer {
    status: u16,
    body: String,
}

/// A stand-in for the worker: answers every request with one (settable) status and body, in which
/// `{n}` becomes the request's number, and records what it received. The control server's
/// reports of an agent process's end (`…/exit`, sent whenever it sees one) and its batches of
/// agent events (`…/events`) are answered `{}` and kept apart ([`FakeWorker::exits`],
/// [`FakeWorker::events`]), so they neither take a number nor count as calls.
pub struct FakeWorker {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    exits: Arc<Mutex<Vec<Seen>>>,
    events: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<Answer>>,
    /// How long the answer to the first request waits once the request is recorded.
    first_delay: Arc<Mutex<Duration>>,
}

impl FakeWorker {
    pub fn start(status: u16, body: &str) -> FakeWorker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let exits = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Answer {
            status,
            body: body.to_owned(),
        }));
        let first_delay = Arc::new(Mutex::new(Duration::ZERO));
        let (seen_by_thread, exits_by_thread, events_by_thread) =
            (Arc::clone(&seen), Arc::clone(&exits), Arc::clone(&events));
        let (answer_by_thread, delay_by_thread) = (Arc::clone(&answer), Arc::clone(&first_delay));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = Kept {
                    seen: &seen_by_thread,
                    exits: &exits_by_thread,
                    events: &events_by_thread,
                };
                serve_one(stream, kept, &answer_by_thread, &delay_by_thread);
            }
        });
        FakeWorker {
            addr,
            seen,
            exits,
            events,
            answer,
            first_delay,
        }
    }

    /// Holds the answer to the first request for `delay` after recording it (requests are
    /// answered one at a time, so every later one waits too): a test can change something
    /// between a client's first call and its next.
    pub fn delay_first(&self, delay: Duration) {
        *self.first_delay.lock().unwrap() = delay;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = Answer {
            status,
            body: body.to_owned(),
        };
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The exit reports received.
    pub fn exits(&self) -> Vec<Seen> {
        self.exits.lock().unwrap().clone()
    }

    /// The batches of agent events received.
    pub fn events(&self) -> Vec<Seen> {
        self.events.lock().unwrap().clone()
    }
}

/// Where a fake worker keeps what it received.
#[derive(Clone, Copy)]
struct Kept<'a> {
    seen: &'a Mutex<Vec<Seen>>,
    exits: &'a Mutex<Vec<Seen>>,
    events: &'a Mutex<Vec<Seen>>,
}

/// Reads one request (head, then `content-length` bytes), records it, answers, closes.
fn serve_one(
    mut stream: TcpStream,
    kept: Kept<'_>,
    answer: &Mutex<Answer>,
    first_delay: &Mutex<Duration>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let headers = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| {
            let (n, v) = line.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let call = Seen {
        headers,
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
        method,
        path,
    };
    let side = if call.path.ends_with("/exit") {
        Some(kept.exits)
    } else if call.path.ends_with("/events") {
        Some(kept.events)
    } else {
        None
    };
    if let Some(list) = side {
        list.lock().unwrap().push(call);
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
             connection: close\r\n\r\n{{}}"
        );
        return;
    }
    let n = {
        let mut seen = kept.seen.lock().unwrap();
        seen.push(call);
        seen.len()
    };
    if n == 1 {
        let delay = *first_delay.lock().unwrap();
        std::thread::sleep(delay);
    }
    let (status, body) = {
        let answer = answer.lock().unwrap();
        (answer.status, answer.body.replace("{n}", &n.to_string()))
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
}

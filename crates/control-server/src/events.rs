//! An agent's events, forwarded to the worker: each line its process writes (to its log) is an
//! event, `output` by default; a runtime marks its own with `gastown-kilo: event <kind> <text>`
//! (the Kilo runtime's tool calls and session changes). A thread per run reads the log's new
//! lines every [`EVERY`] and posts them in batches to the agent's `events` callback (the
//! mayor's: its `events` tool, with its session's key), numbered within the run, so a batch
//! sent again is stored once; the last lines go when the process ends.
//!
//! No secret leaves the container in an event: before a batch is sent, every value the
//! scrubber knows (the town's container token and gateway token as their files hold them now,
//! the rig git tokens in the town's cache, the values of the agent's env that are not its own
//! identity) and anything shaped like a token (a JWT, a GitHub or GitLab token) is replaced by
//! [`MASK`].

use crate::callbacks::Callbacks;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often new lines are read and sent.
pub const EVERY: Duration = Duration::from_millis(500);
/// Lines in one batch (the worker takes up to 200).
const BATCH: usize = 100;
/// What a secret becomes.
pub const MASK: &str = "****";
/// A runtime's own event: `gastown-kilo: event <kind> <text>`.
const EVENT_PREFIX: &str = "gastown-kilo: event ";
/// The env of an agent that is its identity and settings, never a secret: kept in events.
const NOT_SECRET: &[&str] = &[
    "PATH",
    "HOME",
    "GASTOWN_TOWN_ID",
    "GASTOWN_RIG_ID",
    "GASTOWN_AGENT_ID",
    "GASTOWN_AGENT_NAME",
    "GASTOWN_AGENT_ROLE",
    "GASTOWN_BEAD_ID",
    "GASTOWN_BEAD_TITLE",
    "GASTOWN_BEAD_BODY",
    "GASTOWN_BRANCH",
    "GASTOWN_DEFAULT_BRANCH",
    "GASTOWN_GIT_URL",
    "GASTOWN_MODEL",
    "GASTOWN_WORKER_URL",
    "GASTOWN_WORK_DIR",
    "GASTOWN_HEARTBEAT_MS",
    "GASTOWN_AGENT_RUN",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "KILO_GATEWAY_URL",
];

/// One event as the worker takes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: String,
    pub text: String,
}

/// The event a log line is.
#[must_use]
pub fn event_of(line: &str, seq: u64, at_ms: u64) -> Event {
    let (kind, text) = match line.strip_prefix(EVENT_PREFIX) {
        Some(rest) => {
            let (kind, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let ok = !kind.is_empty()
                && kind.len() <= 40
                && kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if ok {
                (kind, text)
            } else {
                ("output", line)
            }
        }
        None => ("output", line),
    };
    Event {
        seq,
        at_ms,
        kind: kind.to_owned(),
        text: text.to_owned(),
    }
}

/// Replaces every secret in `text`: the `known` values, then anything shaped like a token.
#[must_use]
pub fn scrub(text: &str, known: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in known.iter().filter(|s| s.len() >= 8) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    mask_shapes(&out)
}

/// Tokens by their shape: JWTs (`eyJ….….…`) and GitHub (`ghp_`, `gho_`, `ghu_`, `ghs_`,
/// `ghr_`, `github_pat_`) and GitLab (`glpat-`, `gloas-`) tokens.
fn mask_shapes(text: &str) -> String {
    const PREFIXES: &[&str] = &[
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "glpat-",
        "gloas-",
    ];
    let token_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let starts_token = rest.starts_with("eyJ") || PREFIXES.iter().any(|p| rest.starts_with(p));
        let at_boundary = out
            .chars()
            .last()
            .is_none_or(|c| !token_char(c) && c != '.');
        if starts_token && at_boundary {
            let len = rest
                .find(|c: char| !(token_char(c) || c == '.'))
                .unwrap_or(rest.len());
            let word = &rest[..len];
            let is_jwt = word.starts_with("eyJ") && word.split('.').count() == 3;
            if (is_jwt || !word.starts_with("eyJ")) && len >= 12 {
                out.push_str(MASK);
                rest = &rest[len..];
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// What the scrubber knows now: the town's tokens as their files hold them, the git tokens in
/// its cache, and the agent's env values that are not its identity.
fn known_secrets(town_dir: &Path, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut known: Vec<String> = env
        .iter()
        .filter(|(k, _)| !NOT_SECRET.contains(&k.as_str()) && !k.ends_with("_FILE"))
        .map(|(_, v)| v.clone())
        .collect();
    if let Ok(token) = crate::workdir::read_container_token(town_dir) {
        known.push(token);
    }
    if let Some(jwt) =
        crate::relay::current_token(&town_dir.join(gastown_core::control::GATEWAY_ENV_FILE))
    {
        known.push(jwt);
    }
    if let Ok(entries) = std::fs::read_dir(town_dir.join(crate::workdir::GIT_TOKENS_DIR)) {
        for entry in entries.flatten() {
            let rig = entry
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_owned();
            if let Some(reply) = crate::workdir::read_git_token_cache(town_dir, &rig) {
                known.push(reply.token.clone());
            }
        }
    }
    known
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where a run's events go: a rig agent's callback, or the mayor's tool.
enum Sender {
    Agent(Callbacks),
    Mayor(crate::mayor_tools::MayorTools),
}

impl Sender {
    fn send(&self, body: &str) {
        match self {
            // Tried as callbacks are.
            Sender::Agent(c) => {
                let _ = c.call("events", body);
            }
            Sender::Mayor(tools) => match tools.request("POST", "/events", Some(body)) {
                Ok((200..=299, _)) => {}
                Ok((status, _)) => {
                    eprintln!("gastown-control: the mayor's events: the worker answered {status}");
                }
                Err(e) => eprintln!("gastown-control: the mayor's events: {e}"),
            },
        }
    }
}

/// Forwards one run's log lines until [`Forwarder::finish`] (or the server's end).
pub struct Forwarder {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Starts forwarding the lines `log` gains after `from` (its length at the start), as run
    /// `run` of the agent whose env is `env` (its callbacks' session).
    pub fn start(
        log: PathBuf,
        from: u64,
        run: u64,
        town_dir: PathBuf,
        env: BTreeMap<String, String>,
    ) -> Option<Forwarder> {
        let lookup = |name: &str| env.get(name).cloned();
        let session = if env.contains_key(gastown_core::mayor::MAYOR_KEY_ENV) {
            Sender::Mayor(crate::mayor_tools::MayorTools::from_env(&lookup).ok()?)
        } else {
            Sender::Agent(Callbacks::from_env(&lookup, "gastown-control").ok()?)
        };
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let thread = std::thread::Builder::new()
            .name("gastown-control-events".into())
            .stack_size(1024 * 1024)
            .spawn(move || {
                let mut reader = LogReader {
                    path: log,
                    offset: from,
                    partial: String::new(),
                };
                let mut seq = 0;
                loop {
                    let finished = stop.load(Ordering::SeqCst);
                    let lines = reader.new_lines(finished);
                    if !lines.is_empty() {
                        let known = known_secrets(&town_dir, &env);
                        for chunk in lines.chunks(BATCH) {
                            let events: Vec<Event> = chunk
                                .iter()
                                .map(|line| {
                                    seq += 1;
                                    let mut e = event_of(line, seq, now_ms());
                                    e.text = scrub(&e.text, &known);
                                    e
                                })
                                .collect();
                            let body = serde_json::json!({ "run": run, "events": events });
                            // A batch the worker never took is lost (the log keeps it).
                            session.send(&body.to_string());
                        }
                    }
                    if finished {
                        return;
                    }
                    std::thread::sleep(EVERY);
                }
            })
            .ok()?;
        Some(Forwarder {
            done,
            thread: Some(thread),
        })
    }

    /// Sends what is left and stops.
    pub fn finish(mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the complete lines a file gained since the last read.
struct LogReader {
    path: PathBuf,
    offset: u64,
    /// A line not yet ended.
    partial: String,
}

impl LogReader {
    /// The new complete lines (and, when `last`, the unfinished one too); this server's own
    /// lines are left out.
    fn new_lines(&mut self, last: bool) -> Vec<String> {
        let mut bytes = Vec::new();
        if let Ok(mut file) = File::open(&self.path) {
            if file.seek(SeekFrom::Start(self.offset)).is_ok() {
                let _ = file.by_ref().take(4 * 1024 * 1024).read_to_end(&mut bytes);
            }
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines: Vec<String> = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            lines.push(line.trim_end_matches(['\n', '\r']).to_owned());
        }
        if last && !self.partial.is_empty() {
            lines.push(std::mem::take(&mut self.partial));
        }
        lines.retain(|l| !l.trim().is_empty() && !l.starts_with("--- gastown-control:"));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_events() {
        assert_eq!(
            event_of("hello", 3, 9),
            Event {
                seq: 3,
                at_ms: 9,
                kind: "output".into(),
                text: "hello".into()
            }
        );
        let tool = event_of("gastown-kilo: event tool bash: running", 1, 1);
        assert_eq!(
            (tool.kind.as_str(), tool.text.as_str()),
            ("tool", "bash: running")
        );
        let bad = event_of("gastown-kilo: event Not-A-Kind x", 1, 1);
        assert_eq!(bad.kind, "output");
    }

    #[test]
    fn secrets_are_masked() {
        let known = vec!["s3cr3t-value-123".to_owned(), "short".to_owned()];
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let text = format!(
            "token={jwt} env s3cr3t-value-123 gh ghs_abcdefghijklmnop lab glpat-abcdefghij12 short eyJust-a-word"
        );
        let out = scrub(&text, &known);
        assert_eq!(
            out,
            "token=**** env **** gh **** lab **** short eyJust-a-word"
        );
        assert_eq!(
            scrub("x.ghs_abcdefghijklmnop", &[]),
            "x.ghs_abcdefghijklmnop",
            "mid-word is no token"
        );
        assert_eq!(scrub("(ghs_abcdefghijklmnop)", &[]), "(****)");
    }

    #[test]
    fn the_reader_takes_complete_lines_then_the_rest() {
        let dir = std::env::temp_dir().join(format!("gastown-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        std::fs::write(&path, "--- gastown-control: start 1\none\ntw").unwrap();
        let mut r = LogReader {
            path: path.clone(),
            offset: 0,
            partial: String::new(),
        };
        assert_eq!(r.new_lines(false), vec!["one"]);
        std::fs::write(&path, "--- gastown-control: start 1\none\ntwo\n\nthr").unwrap();
        assert_eq!(r.new_lines(false), vec!["two"]);
        assert_eq!(r.new_lines(true), vec!["thr"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

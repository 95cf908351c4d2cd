//! The mayor: the town-wide agent a user talks to. What the chat routes and the mayor's tools
//! read and answer, and the one prompt a new mayor session starts from (the conversation so
//! far, then what it has not heard yet), so a session that ended (the container idled out)
//! resumes the same conversation.
//!
//! Status, as the dashboard sees it:
//!
//! * `idle`: no session runs; the next message starts one;
//! * `starting`: a session was asked for and has not yet said it works;
//! * `working`: the session is answering (the town is busy: fast loop, token pushes, patrol
//!   stalls a silent one);
//! * `waiting`: it answered and waits for the next message. A waiting mayor keeps nothing
//!   awake: the town is idle unless it has other work, and its container may idle out.

use crate::body::{only_fields, parse_object, Fields};
use crate::error::ApiError;
use crate::text::{check_text, Lines};
use serde::{Deserialize, Serialize};

/// Longest message or reply, in characters.
pub const MAX_MESSAGE_TEXT: usize = 8000;
/// Messages kept per town; the oldest are dropped beyond it.
pub const TRANSCRIPT_CAP: u64 = 1000;
/// Longest transcript replayed into a new session's first prompt, in characters (the newest
/// messages are kept).
pub const MAX_REPLAY_CHARS: usize = 24_000;
/// The header that carries the mayor session's key on the mayor's tool routes.
pub const MAYOR_KEY_HEADER: &str = "x-gastown-mayor-key";
/// The env variable the mayor's session finds its key in.
pub const MAYOR_KEY_ENV: &str = "GASTOWN_MAYOR_KEY";
/// The env variable holding a new session's first prompt: the messages it has not heard.
pub const MAYOR_PROMPT_ENV: &str = "GASTOWN_MAYOR_PROMPT";
/// The env variable holding what a new session resumes ([`memory`]), when there is any.
pub const MAYOR_MEMORY_ENV: &str = "GASTOWN_MAYOR_MEMORY";

/// The stored form of a session key: its SHA-256, hex.
#[must_use]
pub fn key_hash(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `key` is the session key whose hash is `stored`, compared in constant time.
#[must_use]
pub fn key_matches(stored: &str, key: &str) -> bool {
    use subtle::ConstantTimeEq;
    !key.is_empty() && bool::from(key_hash(key).as_bytes().ct_eq(stored.as_bytes()))
}

/// What the mayor's session is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MayorStatus {
    Idle,
    Starting,
    Working,
    Waiting,
}

impl MayorStatus {
    /// The stored value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            MayorStatus::Idle => "idle",
            MayorStatus::Starting => "starting",
            MayorStatus::Working => "working",
            MayorStatus::Waiting => "waiting",
        }
    }

    /// A stored value; anything else reads as `idle`.
    #[must_use]
    pub fn from_stored(s: &str) -> MayorStatus {
        match s {
            "starting" => MayorStatus::Starting,
            "working" => MayorStatus::Working,
            "waiting" => MayorStatus::Waiting,
            _ => MayorStatus::Idle,
        }
    }

    /// Whether a session runs (started or starting: no other is started).
    #[must_use]
    pub fn has_session(self) -> bool {
        !matches!(self, MayorStatus::Idle)
    }

    /// Whether a further message can be given to the session now (a starting one has not had
    /// its first prompt yet: messages wait for it).
    #[must_use]
    pub fn takes_messages(self) -> bool {
        matches!(self, MayorStatus::Working | MayorStatus::Waiting)
    }

    /// Whether the mayor makes the town busy.
    #[must_use]
    pub fn is_busy(self) -> bool {
        matches!(self, MayorStatus::Starting | MayorStatus::Working)
    }
}

/// What the runtime may say of its session (`POST /api/mayor/:townId/tools/state`):
/// `starting` (alive, its CLI not yet given the first prompt), `working`, `waiting`, `idle`
/// (the session ended).
///
/// # Errors
/// 422 for anything else.
pub fn parse_state(body: &[u8]) -> Result<MayorStatus, ApiError> {
    let map = parse_object(body)?;
    only_fields(&map, &["status"])?;
    match Fields(&map).required_str("status", 16)? {
        "starting" => Ok(MayorStatus::Starting),
        "working" => Ok(MayorStatus::Working),
        "waiting" => Ok(MayorStatus::Waiting),
        "idle" => Ok(MayorStatus::Idle),
        _ => Err(ApiError::invalid(
            "status",
            "must be one of starting, working, waiting, idle",
        )),
    }
}

/// Who said a message of the transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    /// A user of the town (`user_id` names them).
    User,
    /// The mayor's reply (`gt reply`).
    Mayor,
    /// The town itself: an escalation for the mayor to act on.
    Town,
}

impl Speaker {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::User => "user",
            Speaker::Mayor => "mayor",
            Speaker::Town => "town",
        }
    }
}

/// One message of the transcript. `seq` orders them and is the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MayorMessage {
    pub seq: u64,
    pub role: Speaker,
    pub text: String,
    /// The user who sent it (`None` for the mayor's and the town's).
    pub user_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Whether the mayor's session has been given it (always true for the mayor's own).
    pub delivered: bool,
}

/// `GET /api/towns/:townId/mayor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MayorView {
    pub status: MayorStatus,
    /// The mayor agent, once the town has one.
    pub agent_id: Option<String>,
    /// RFC 3339: the session's last sign of life, or the last message.
    pub last_activity_at: Option<String>,
    /// The model of the running (or last) session.
    pub model: Option<String>,
    /// Messages the session has not been given yet.
    pub pending_messages: u64,
}

/// `POST /api/towns/:townId/mayor/messages {text}` and `POST .../tools/reply {text}`: the
/// message's text, multi-line, trimmed, at most [`MAX_MESSAGE_TEXT`] characters.
///
/// # Errors
/// 400 for a body that is not a JSON object; 422 naming `text`.
pub fn parse_text(body: &[u8]) -> Result<String, ApiError> {
    let map = parse_object(body)?;
    only_fields(&map, &["text"])?;
    match map.get("text") {
        Some(serde_json::Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                return Err(ApiError::invalid("text", "must not be blank"));
            }
            check_text("text", s, MAX_MESSAGE_TEXT, Lines::Many)?;
            Ok(s.to_owned())
        }
        None | Some(serde_json::Value::Null) => Err(ApiError::invalid("text", "is required")),
        Some(_) => Err(ApiError::invalid("text", "must be a string")),
    }
}

/// A page of the transcript: `next_after` is the cursor of the next page (the last `seq`),
/// `None` when this page is the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    pub messages: Vec<MayorMessage>,
    pub next_after: Option<u64>,
    /// How many of the oldest messages the cap has dropped so far.
    pub dropped: u64,
}

/// One line of a prompt naming who spoke.
fn said(m: &MayorMessage) -> String {
    let who = match (m.role, &m.user_id) {
        (Speaker::User, Some(user)) => format!("user {user}"),
        (Speaker::User, None) => "user".to_owned(),
        (Speaker::Mayor, _) => "you (the mayor)".to_owned(),
        (Speaker::Town, _) => "the town".to_owned(),
    };
    format!("[{} {who}]\n{}", m.created_at, m.text)
}

/// What the session is given for messages it has not heard: each with who sent it, oldest
/// first.
#[must_use]
pub fn delivery_text(pending: &[MayorMessage]) -> String {
    pending.iter().map(said).collect::<Vec<_>>().join("\n\n")
}

/// What a new session is given to remember before it hears what is new: the conversation it
/// resumes (the newest of `earlier` that fit in [`MAX_REPLAY_CHARS`]); `None` for a first
/// conversation. The runtime adds it to the session without a reply, so the model answers only
/// what is new.
#[must_use]
pub fn memory(earlier: &[MayorMessage]) -> Option<String> {
    let mut kept: Vec<String> = Vec::new();
    let mut size = 0;
    for m in earlier.iter().rev() {
        let line = said(m);
        size += line.chars().count() + 2;
        if size > MAX_REPLAY_CHARS {
            break;
        }
        kept.push(line);
    }
    kept.reverse();
    (!kept.is_empty()).then(|| {
        format!(
            "The conversation so far (you were restarted; this is your memory):\n\n{}",
            kept.join("\n\n")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, role: Speaker, text: &str) -> MayorMessage {
        MayorMessage {
            seq,
            role,
            text: text.to_owned(),
            user_id: (role == Speaker::User).then(|| "u1".to_owned()),
            created_at: "2026-12-06T00:00:00Z".to_owned(),
            delivered: true,
        }
    }

    #[test]
    fn keys_match_only_themselves() {
        let stored = key_hash("k1");
        assert_eq!(stored.len(), 64);
        assert!(key_matches(&stored, "k1"));
        assert!(!key_matches(&stored, "k2") && !key_matches(&stored, ""));
        assert!(!key_matches("", "k1"));
    }

    #[test]
    fn statuses_round_trip_and_only_work_is_busy() {
        for s in [
            MayorStatus::Idle,
            MayorStatus::Starting,
            MayorStatus::Working,
            MayorStatus::Waiting,
        ] {
            assert_eq!(MayorStatus::from_stored(s.as_str()), s);
        }
        assert_eq!(MayorStatus::from_stored("junk"), MayorStatus::Idle);
        assert!(MayorStatus::Working.is_busy() && MayorStatus::Starting.is_busy());
        assert!(!MayorStatus::Waiting.is_busy() && !MayorStatus::Idle.is_busy());
        assert!(MayorStatus::Waiting.has_session() && !MayorStatus::Idle.has_session());
        assert!(MayorStatus::Starting.has_session() && !MayorStatus::Starting.takes_messages());
        assert!(MayorStatus::Working.takes_messages() && MayorStatus::Waiting.takes_messages());
    }

    #[test]
    fn message_texts_are_checked() {
        assert_eq!(
            parse_text(br#"{"text":"  hi\nthere "}"#).unwrap(),
            "hi\nthere"
        );
        for bad in [
            &br#"{"text":""}"#[..],
            br#"{"text":"   "}"#,
            br#"{}"#,
            br#"{"text":3}"#,
            br#"{"text":"a","x":1}"#,
            br#"{"text":"a\u0007"}"#,
            br#"[]"#,
        ] {
            assert!(parse_text(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"text":"{}"}}"#, "a".repeat(MAX_MESSAGE_TEXT + 1));
        assert!(parse_text(long.as_bytes()).is_err());
    }

    #[test]
    fn states_are_checked() {
        assert_eq!(
            parse_state(br#"{"status":"waiting"}"#).unwrap(),
            MayorStatus::Waiting
        );
        assert_eq!(
            parse_state(br#"{"status":"starting"}"#).unwrap(),
            MayorStatus::Starting
        );
        assert!(parse_state(br#"{"status":"asleep"}"#).is_err());
    }

    #[test]
    fn a_new_session_remembers_the_conversation_and_hears_what_is_new() {
        let earlier = [
            msg(1, Speaker::User, "plan it"),
            msg(2, Speaker::Mayor, "planned"),
        ];
        let memory = memory(&earlier).unwrap();
        assert!(memory.contains("plan it") && memory.contains("planned"));
        assert!(memory.find("plan it") < memory.find("planned"));
        assert!(memory.contains("user u1") && memory.contains("you (the mayor)"));
        assert_eq!(super::memory(&[]), None);
        let new = delivery_text(&[
            msg(3, Speaker::User, "and now?"),
            msg(4, Speaker::Town, "esc"),
        ]);
        assert!(new.find("and now?") < new.find("the town]\nesc"), "{new}");
        // Too long a past keeps its newest messages.
        let long: Vec<_> = (1..=100)
            .map(|i| msg(i, Speaker::User, &format!("m{i} {}", "x".repeat(1000))))
            .collect();
        let kept = super::memory(&long).unwrap();
        assert!(kept.contains("m100 ") && !kept.contains("m1 "));
        assert!(kept.chars().count() <= MAX_REPLAY_CHARS + 100);
    }
}

//! Agent events: what an agent's session did (its output lines, the runtime's notes on tool
//! calls and messages), sent by the container in batches and kept by the town per agent for the
//! dashboard's live view and its backfill.
//!
//! A batch names the agent's run (the control server's start count) and numbers each event
//! within it, so a batch sent again after a lost answer is stored once. An event's text is
//! cut to [`MAX_EVENT_TEXT`] characters (marked `truncated`); the town keeps the newest
//! `AGENT_EVENTS_CAP` events per agent and counts what it dropped.

use crate::body::parse_object;
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Events in one batch.
pub const MAX_BATCH: usize = 200;
/// Longest text kept of an event, in characters; longer text is cut and marked.
pub const MAX_EVENT_TEXT: usize = 4000;
/// Longest kind, in characters (`[a-z0-9._-]`).
pub const MAX_KIND: usize = 40;
/// Events kept per agent by default (`AGENT_EVENTS_CAP`).
pub const DEFAULT_CAP: u64 = 10_000;

/// One event as the container sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    pub seq: u64,
    /// When it happened, ms since the Unix epoch (the container's clock).
    pub at_ms: u64,
    pub kind: String,
    pub text: String,
    pub truncated: bool,
}

/// `POST /api/towns/:townId/rigs/:rigId/agents/:agentId/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// The agent's run: the control server's count of its starts.
    pub run: u64,
    pub events: Vec<NewEvent>,
}

fn whole(value: Option<&Value>, field: &str) -> Result<u64, ApiError> {
    value
        .and_then(Value::as_u64)
        .filter(|n| *n < (1 << 53))
        .ok_or_else(|| ApiError::invalid(field, "must be a whole number"))
}

impl EventBatch {
    /// `{run, events: [{seq, at_ms, kind, text}]}`: 1 to [`MAX_BATCH`] events. Text keeps
    /// newlines and tabs and loses other control characters; too long, it is cut and marked.
    ///
    /// # Errors
    /// 400 for a body that is not a JSON object; 422 naming the bad field.
    pub fn parse(body: &[u8]) -> Result<EventBatch, ApiError> {
        let map = parse_object(body)?;
        crate::body::only_fields(&map, &["run", "events"])?;
        let run = whole(map.get("run"), "run")?;
        let list = map
            .get("events")
            .and_then(Value::as_array)
            .filter(|l| (1..=MAX_BATCH).contains(&l.len()))
            .ok_or_else(|| {
                ApiError::invalid(
                    "events",
                    format!("must be a list of 1 to {MAX_BATCH} events"),
                )
            })?;
        let mut events = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let field = |name: &str| format!("events[{i}].{name}");
            let obj = item
                .as_object()
                .ok_or_else(|| ApiError::invalid(format!("events[{i}]"), "must be an object"))?;
            if let Some(unknown) = obj
                .keys()
                .find(|k| !["seq", "at_ms", "kind", "text"].contains(&k.as_str()))
            {
                return Err(ApiError::invalid(field(unknown), "is not a known field"));
            }
            let kind = obj
                .get("kind")
                .and_then(Value::as_str)
                .filter(|k| {
                    (1..=MAX_KIND).contains(&k.len())
                        && k.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                        })
                })
                .ok_or_else(|| {
                    ApiError::invalid(field("kind"), "must be 1 to 40 of a-z 0-9 . _ -")
                })?;
            let text = obj
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid(field("text"), "must be a string"))?;
            let (text, truncated) = clean_text(text);
            events.push(NewEvent {
                seq: whole(obj.get("seq"), &field("seq"))?,
                at_ms: whole(obj.get("at_ms"), &field("at_ms"))?,
                kind: kind.to_owned(),
                text,
                truncated,
            });
        }
        Ok(EventBatch { run, events })
    }
}

/// The text as kept: control characters but newline and tab dropped, at most
/// [`MAX_EVENT_TEXT`] characters; whether it was cut.
#[must_use]
pub fn clean_text(text: &str) -> (String, bool) {
    let mut kept = String::with_capacity(text.len().min(MAX_EVENT_TEXT * 4));
    let mut n = 0;
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            continue;
        }
        if n == MAX_EVENT_TEXT {
            return (kept, true);
        }
        kept.push(c);
        n += 1;
    }
    (kept, false)
}

/// What a batch did: events stored, and those already stored (a batch sent again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsStored {
    pub stored: u64,
    pub duplicates: u64,
}

/// One stored event. `id` orders an agent's events and is the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEvent {
    pub id: u64,
    pub run: u64,
    pub seq: u64,
    pub kind: String,
    pub text: String,
    pub truncated: bool,
    /// RFC 3339, from the container's clock.
    pub at: String,
}

/// `GET /api/towns/:townId/agents/:agentId/events?after=&limit=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<AgentEvent>,
    /// The cursor of the next page (the last `id`), `None` at the end.
    pub next_after: Option<u64>,
    /// How many of the agent's oldest events the cap has dropped so far.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_checked_and_text_is_kept_clean() {
        let b = EventBatch::parse(
            br#"{"run":2,"events":[{"seq":1,"at_ms":5,"kind":"output","text":"a\tb\u0007\nc"}]}"#,
        )
        .unwrap();
        assert_eq!(b.run, 2);
        assert_eq!(
            b.events,
            vec![NewEvent {
                seq: 1,
                at_ms: 5,
                kind: "output".into(),
                text: "a\tb\nc".into(),
                truncated: false,
            }]
        );
        for bad in [
            &br#"{"run":1,"events":[]}"#[..],
            br#"{"events":[{"seq":1,"at_ms":1,"kind":"x","text":""}]}"#,
            br#"{"run":1,"events":[{"seq":-1,"at_ms":1,"kind":"x","text":""}]}"#,
            br#"{"run":1,"events":[{"seq":1,"at_ms":1,"kind":"X Y","text":""}]}"#,
            br#"{"run":1,"events":[{"seq":1,"at_ms":1,"kind":"x","text":3}]}"#,
            br#"{"run":1,"events":[{"seq":1,"at_ms":1,"kind":"x","text":"","more":1}]}"#,
            br#"{"run":1,"events":[1]}"#,
            br#"{"run":1,"events":[],"x":1}"#,
            br#"[]"#,
        ] {
            assert!(
                EventBatch::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = format!(
            r#"{{"run":1,"events":[{}]}}"#,
            vec![r#"{"seq":1,"at_ms":1,"kind":"x","text":""}"#; MAX_BATCH + 1].join(",")
        );
        assert!(EventBatch::parse(many.as_bytes()).is_err());
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        let (text, cut) = clean_text(&"é".repeat(MAX_EVENT_TEXT + 1));
        assert!(cut);
        assert_eq!(text.chars().count(), MAX_EVENT_TEXT);
        let (text, cut) = clean_text(&"é".repeat(MAX_EVENT_TEXT));
        assert!(!cut);
        assert_eq!(text.chars().count(), MAX_EVENT_TEXT);
    }
}

//! Beads: a town's work items, their append-only event log, and the bodies of the routes that
//! create and change them. Every body is checked here, in full, before a Durable Object is
//! called, so a bad request writes nothing.

use crate::body::{only_fields, parse_object, Fields};
use crate::error::ApiError;
use crate::ids::{AgentId, RigId};
use crate::text::{check_text, Lines};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest title, in characters.
pub const MAX_TITLE: usize = 200;
/// Longest body, in characters.
pub const MAX_BODY: usize = 20_000;
/// Most labels on one bead, and the longest label.
pub const MAX_LABELS: usize = 20;
pub const MAX_LABEL: usize = 50;
/// Largest `metadata` object, as JSON text.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Priorities run from 0 (most urgent) to this; 2 when not given.
pub const MAX_PRIORITY: u8 = 4;
pub const DEFAULT_PRIORITY: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeadType {
    Issue,
    Message,
    Escalation,
    MergeRequest,
    /// Groups the beads slung together (their `convoy_id`): closes when they all close, fails
    /// naming the first that fails. Never dispatched.
    Convoy,
}

impl BeadType {
    pub fn as_str(self) -> &'static str {
        match self {
            BeadType::Issue => "issue",
            BeadType::Message => "message",
            BeadType::Escalation => "escalation",
            BeadType::MergeRequest => "merge_request",
            BeadType::Convoy => "convoy",
        }
    }

    fn parse(field: &str, s: &str) -> Result<Self, ApiError> {
        match s {
            "issue" => Ok(BeadType::Issue),
            "message" => Ok(BeadType::Message),
            "escalation" => Ok(BeadType::Escalation),
            "merge_request" => Ok(BeadType::MergeRequest),
            "convoy" => Ok(BeadType::Convoy),
            _ => Err(ApiError::invalid(
                field,
                "must be one of issue, message, escalation, merge_request, convoy",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeadStatus {
    Open,
    InProgress,
    InReview,
    Closed,
    Failed,
}

impl BeadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BeadStatus::Open => "open",
            BeadStatus::InProgress => "in_progress",
            BeadStatus::InReview => "in_review",
            BeadStatus::Closed => "closed",
            BeadStatus::Failed => "failed",
        }
    }

    fn parse(field: &str, s: &str) -> Result<Self, ApiError> {
        match s {
            "open" => Ok(BeadStatus::Open),
            "in_progress" => Ok(BeadStatus::InProgress),
            "in_review" => Ok(BeadStatus::InReview),
            "closed" => Ok(BeadStatus::Closed),
            "failed" => Ok(BeadStatus::Failed),
            _ => Err(ApiError::invalid(
                field,
                "must be one of open, in_progress, in_review, closed, failed",
            )),
        }
    }
}

/// A bead as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bead {
    pub id: String,
    #[serde(rename = "type")]
    pub bead_type: BeadType,
    pub status: BeadStatus,
    pub title: String,
    pub body: String,
    pub rig_id: Option<RigId>,
    pub assignee_agent_id: Option<AgentId>,
    pub priority: u8,
    pub labels: Vec<String>,
    pub metadata: Map<String, Value>,
    /// The user id of its creator, or `town` for beads the town made itself (escalations).
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub closed_at: Option<String>,
    pub failure_reason: Option<String>,
    /// Dispatches tried since the bead was last opened.
    pub dispatch_attempts: u32,
    /// The convoy it was slung in, if any.
    pub convoy_id: Option<String>,
}

/// A SQLite expression that builds a bead row's JSON exactly as [`Bead`] serialises (pinned by
/// a test in the worker's storage), so reads pass through without decoding.
pub const BEAD_JSON: &str = "json_object('id', id, 'type', type, 'status', status, 'title', title, 'body', body, 'rig_id', rig_id, 'assignee_agent_id', assignee_agent_id, 'priority', priority, 'labels', json(labels), 'metadata', json(metadata), 'created_by', created_by, 'created_at', created_at, 'updated_at', updated_at, 'closed_at', closed_at, 'failure_reason', failure_reason, 'dispatch_attempts', dispatch_attempts, 'convoy_id', convoy_id)";

/// What happened to a bead, in its event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeadEventKind {
    Created,
    Updated,
    Dispatched,
    DispatchFailed,
    /// An agent's status message.
    Status,
    /// Its agent finished it: closed.
    Done,
    /// Its agent finished it with a pull request to review.
    InReview,
    Stalled,
    Reopened,
    Closed,
    Failed,
    Escalated,
    /// Who the agent's commits are authored as, and why (first for a session, and on each
    /// change, such as a fall back to the bot when the user revoked).
    GitIdentity,
    /// The refinery opened (or adopted) the bead's pull request.
    PullRequest,
    /// Its pull request merged: closed.
    Merged,
    /// A review or failing check of its pull request became a feedback bead.
    Feedback,
}

impl BeadEventKind {
    /// The stored value (bound into queries, never written in them).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BeadEventKind::Created => "created",
            BeadEventKind::Updated => "updated",
            BeadEventKind::Dispatched => "dispatched",
            BeadEventKind::DispatchFailed => "dispatch_failed",
            BeadEventKind::Status => "status",
            BeadEventKind::Done => "done",
            BeadEventKind::InReview => "in_review",
            BeadEventKind::Stalled => "stalled",
            BeadEventKind::Reopened => "reopened",
            BeadEventKind::Closed => "closed",
            BeadEventKind::Failed => "failed",
            BeadEventKind::Escalated => "escalated",
            BeadEventKind::GitIdentity => "git_identity",
            BeadEventKind::PullRequest => "pull_request",
            BeadEventKind::Merged => "merged",
            BeadEventKind::Feedback => "feedback",
        }
    }
}

/// One entry of a bead's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeadEvent {
    pub id: i64,
    pub kind: BeadEventKind,
    /// `user:<id>`, `agent:<id>` or `town`.
    pub actor: String,
    pub message: Option<String>,
    pub created_at: String,
}

pub const BEAD_EVENT_JSON: &str = "json_object('id', id, 'kind', kind, 'actor', actor, 'message', message, 'created_at', created_at)";

/// A bead with its whole event log, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeadDetail {
    #[serde(flatten)]
    pub bead: Bead,
    /// Its pull request (a merge request bead's own; a source bead's newest), as the refinery
    /// last read it.
    #[serde(default)]
    pub pull_request: Option<crate::refinery::PullRequestInfo>,
    pub events: Vec<BeadEvent>,
}

/// A new bead, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewBead {
    pub bead_type: BeadType,
    pub title: String,
    pub body: String,
    pub rig_id: Option<RigId>,
    pub priority: u8,
    pub labels: Vec<String>,
    /// JSON text of an object.
    pub metadata: String,
}

/// A body text: may be empty, at most [`MAX_BODY`] characters, no control characters but
/// newlines and tabs.
fn body_text(f: &Fields<'_>, name: &str) -> Result<Option<String>, ApiError> {
    match f.0.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_text(name, s, MAX_BODY, Lines::Many)?;
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::invalid(name, "must be a string")),
    }
}

fn priority(f: &Fields<'_>) -> Result<Option<u8>, ApiError> {
    match f.0.get("priority") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .filter(|n| *n <= MAX_PRIORITY)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    "priority",
                    format!("must be a whole number from 0 to {MAX_PRIORITY}"),
                )
            }),
        Some(_) => Err(ApiError::invalid(
            "priority",
            format!("must be a whole number from 0 to {MAX_PRIORITY}"),
        )),
    }
}

fn labels(f: &Fields<'_>) -> Result<Option<Vec<String>>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "labels",
            format!(
                "must be an array of at most {MAX_LABELS} distinct labels of 1 to {MAX_LABEL} printable characters"
            ),
        )
    };
    match f.0.get("labels") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            if items.len() > MAX_LABELS {
                return Err(bad());
            }
            let mut out: Vec<String> = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(s) = item else {
                    return Err(bad());
                };
                let s = s.trim();
                if s.is_empty()
                    || s.chars().count() > MAX_LABEL
                    || s.chars().any(char::is_control)
                    || out.iter().any(|l| l == s)
                {
                    return Err(bad());
                }
                out.push(s.to_owned());
            }
            Ok(Some(out))
        }
        Some(_) => Err(bad()),
    }
}

fn metadata(f: &Fields<'_>) -> Result<Option<String>, ApiError> {
    match f.0.get("metadata") {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => {
            let text = serde_json::to_string(v).map_err(ApiError::internal)?;
            if text.len() > MAX_METADATA_BYTES {
                return Err(ApiError::invalid(
                    "metadata",
                    format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"),
                ));
            }
            Ok(Some(text))
        }
        Some(_) => Err(ApiError::invalid("metadata", "must be a JSON object")),
    }
}

fn rig(f: &Fields<'_>) -> Result<Option<RigId>, ApiError> {
    f.optional_str("rig_id", crate::ids::MAX_ID_LEN)?
        .map(|r| RigId::parse(r).map_err(|e| ApiError::invalid("rig_id", e.to_string())))
        .transpose()
}

impl NewBead {
    /// `POST /api/towns/:townId/beads`: `{title, body?, type?, rig_id?, priority?, labels?,
    /// metadata?}`. An issue needs a rig: it is the rig's work.
    ///
    /// # Errors
    /// 400 for a body that is not a JSON object; 422 naming the bad field.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let map = parse_object(body)?;
        only_fields(
            &map,
            &[
                "title", "body", "type", "rig_id", "priority", "labels", "metadata",
            ],
        )?;
        let f = Fields(&map);
        let bead_type = match f.optional_str("type", 20)? {
            Some(t) => BeadType::parse("type", t)?,
            None => BeadType::Issue,
        };
        if bead_type == BeadType::Convoy {
            return Err(ApiError::invalid(
                "type",
                "a convoy is made by POST /api/towns/:townId/sling-batch",
            ));
        }
        let rig_id = rig(&f)?;
        if bead_type == BeadType::Issue && rig_id.is_none() {
            return Err(ApiError::invalid("rig_id", "is required for an issue"));
        }
        Ok(NewBead {
            bead_type,
            title: f.required_str("title", MAX_TITLE)?.to_owned(),
            body: body_text(&f, "body")?.unwrap_or_default(),
            rig_id,
            priority: priority(&f)?.unwrap_or(DEFAULT_PRIORITY),
            labels: labels(&f)?.unwrap_or_default(),
            metadata: metadata(&f)?.unwrap_or_else(|| "{}".to_owned()),
        })
    }

    /// `POST /api/towns/:townId/sling`: `{rig_id, title, body?}`, an issue for dispatch.
    ///
    /// # Errors
    /// As [`NewBead::parse`].
    pub fn parse_sling(body: &[u8]) -> Result<Self, ApiError> {
        let map = parse_object(body)?;
        only_fields(&map, &["rig_id", "title", "body"])?;
        let f = Fields(&map);
        let rig_id = rig(&f)?.ok_or_else(|| ApiError::invalid("rig_id", "is required"))?;
        Ok(NewBead {
            bead_type: BeadType::Issue,
            title: f.required_str("title", MAX_TITLE)?.to_owned(),
            body: body_text(&f, "body")?.unwrap_or_default(),
            rig_id: Some(rig_id),
            priority: DEFAULT_PRIORITY,
            labels: Vec::new(),
            metadata: "{}".to_owned(),
        })
    }
}

/// Most beads slung in one batch.
pub const MAX_BATCH: usize = 20;

/// One bead of a batch: an issue for a rig, and the beads of the same batch it waits for (as
/// their indexes in the batch, each before its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchBead {
    pub bead: NewBead,
    pub depends_on: Vec<usize>,
}

/// `POST /api/towns/:townId/sling-batch`: issues slung together under one convoy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlingBatch {
    /// The convoy's title.
    pub title: String,
    pub beads: Vec<BatchBead>,
}

impl SlingBatch {
    /// `{title, beads: [{rig_id, title, body?, priority?, depends_on?: [index…]}…]}`, 1 to
    /// [`MAX_BATCH`] beads; a dependency names an earlier bead of the batch, at most once.
    ///
    /// # Errors
    /// 400 for a body that is not a JSON object; 422 naming the bad field (`beads[1].title`).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let map = parse_object(body)?;
        only_fields(&map, &["title", "beads"])?;
        let title = Fields(&map).required_str("title", MAX_TITLE)?.to_owned();
        let bad_list = || {
            ApiError::invalid(
                "beads",
                format!("must be an array of 1 to {MAX_BATCH} beads"),
            )
        };
        let Some(Value::Array(items)) = map.get("beads") else {
            return Err(bad_list());
        };
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(bad_list());
        }
        let mut beads = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let within = |e: ApiError| match e {
                ApiError::Invalid { field, message } => {
                    ApiError::invalid(format!("beads[{i}].{field}"), message)
                }
                other => other,
            };
            let Value::Object(m) = item else {
                return Err(ApiError::invalid(
                    format!("beads[{i}]"),
                    "must be an object",
                ));
            };
            only_fields(m, &["rig_id", "title", "body", "priority", "depends_on"])
                .map_err(within)?;
            let f = Fields(m);
            let rig_id = rig(&f)
                .map_err(within)?
                .ok_or_else(|| within(ApiError::invalid("rig_id", "is required")))?;
            let bead = NewBead {
                bead_type: BeadType::Issue,
                title: f
                    .required_str("title", MAX_TITLE)
                    .map_err(within)?
                    .to_owned(),
                body: body_text(&f, "body").map_err(within)?.unwrap_or_default(),
                rig_id: Some(rig_id),
                priority: priority(&f).map_err(within)?.unwrap_or(DEFAULT_PRIORITY),
                labels: Vec::new(),
                metadata: "{}".to_owned(),
            };
            let depends_on = depends_on(m.get("depends_on"), i).map_err(within)?;
            beads.push(BatchBead { bead, depends_on });
        }
        Ok(SlingBatch { title, beads })
    }
}

/// The indexes a batch's bead `i` waits for: distinct, each below `i`.
fn depends_on(value: Option<&Value>, i: usize) -> Result<Vec<usize>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "depends_on",
            "must be an array of distinct indexes of earlier beads of the batch",
        )
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            let mut out: Vec<usize> = Vec::with_capacity(items.len());
            for item in items {
                let index = item
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n < i && !out.contains(n))
                    .ok_or_else(bad)?;
                out.push(index);
            }
            Ok(out)
        }
        Some(_) => Err(bad()),
    }
}

/// A convoy's progress: how many of its beads closed, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub closed: u32,
    pub total: u32,
}

/// A convoy as the list shows it: the convoy bead and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvoySummary {
    #[serde(flatten)]
    pub convoy: Bead,
    pub progress: Progress,
}

/// One bead of a convoy, with the beads it waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvoyBead {
    #[serde(flatten)]
    pub bead: Bead,
    pub depends_on: Vec<String>,
}

/// A convoy with its beads, in the order they were slung.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvoyDetail {
    #[serde(flatten)]
    pub convoy: Bead,
    pub progress: Progress,
    pub beads: Vec<ConvoyBead>,
}

/// What a user may change of a bead. Status only closes or reopens: everything between is the
/// town's to decide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeadPatch {
    pub title: Option<String>,
    pub body: Option<String>,
    pub priority: Option<u8>,
    pub labels: Option<Vec<String>>,
    pub status: Option<UserStatus>,
}

/// The two status changes a user makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// Closes the bead (its agent, if any, is freed).
    Closed,
    /// Reopens a closed or failed bead for dispatch, with its attempts reset.
    Open,
}

impl BeadPatch {
    /// # Errors
    /// 400 for a body that is not a JSON object; 422 naming the bad field, including a status
    /// other than `open` or `closed` and an empty patch.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let map = parse_object(body)?;
        only_fields(&map, &["title", "body", "priority", "labels", "status"])?;
        let f = Fields(&map);
        let status = match f.optional_str("status", 20)? {
            None => None,
            Some(s) => match BeadStatus::parse("status", s)? {
                BeadStatus::Open => Some(UserStatus::Open),
                BeadStatus::Closed => Some(UserStatus::Closed),
                _ => {
                    return Err(ApiError::invalid(
                        "status",
                        "may only be set to open (reopen) or closed",
                    ))
                }
            },
        };
        let patch = BeadPatch {
            title: f.optional_str("title", MAX_TITLE)?.map(str::to_owned),
            body: body_text(&f, "body")?,
            priority: priority(&f)?,
            labels: labels(&f)?,
            status,
        };
        if patch == BeadPatch::default() {
            return Err(ApiError::invalid("body", "names nothing to change"));
        }
        Ok(patch)
    }
}

/// Filters of `GET /api/towns/:townId/beads`: `status`, `rig_id` (or `rig`), `type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeadFilter {
    pub status: Option<BeadStatus>,
    pub rig_id: Option<RigId>,
    pub bead_type: Option<BeadType>,
}

impl BeadFilter {
    /// Parses the query string (without `?`); `limit` and `after` are the page's
    /// ([`crate::page::Page`]), other unknown parameters are ignored.
    ///
    /// # Errors
    /// 422 naming the malformed filter.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut filter = BeadFilter::default();
        for (key, value) in crate::page::query_pairs(query) {
            let value = crate::ids::percent_decode(value).unwrap_or_default();
            match key {
                "status" => filter.status = Some(BeadStatus::parse("status", &value)?),
                "type" => filter.bead_type = Some(BeadType::parse("type", &value)?),
                "rig" | "rig_id" => {
                    filter.rig_id = Some(
                        RigId::parse(&value).map_err(|e| ApiError::invalid(key, e.to_string()))?,
                    );
                }
                _ => {}
            }
        }
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: ApiError) -> String {
        match e {
            ApiError::Invalid { field, .. } => field,
            other => panic!("not a 422: {other:?}"),
        }
    }

    #[test]
    fn new_beads() {
        let b = NewBead::parse(br#"{"title":" Fix it ","rig_id":"r1","labels":["a","b"],"metadata":{"k":1},"priority":0}"#).unwrap();
        assert_eq!(b.title, "Fix it");
        assert_eq!(b.bead_type, BeadType::Issue);
        assert_eq!(b.labels, ["a", "b"]);
        assert_eq!(b.metadata, r#"{"k":1}"#);
        assert_eq!(b.priority, 0);
        let m = NewBead::parse(br#"{"title":"hi","type":"message","body":"line\nline"}"#).unwrap();
        assert_eq!(
            (m.bead_type, m.rig_id, m.priority),
            (BeadType::Message, None, 2)
        );
        for (body, bad) in [
            (r#"{"title":"x"}"#, "rig_id"),
            (r#"{"title":"","rig_id":"r"}"#, "title"),
            (r#"{"title":"x","rig_id":"r","type":"epic"}"#, "type"),
            (r#"{"title":"x","rig_id":"r","priority":5}"#, "priority"),
            (r#"{"title":"x","rig_id":"r","priority":-1}"#, "priority"),
            (r#"{"title":"x","rig_id":"r","priority":1.5}"#, "priority"),
            (r#"{"title":"x","rig_id":"r","labels":"a"}"#, "labels"),
            (r#"{"title":"x","rig_id":"r","labels":["a","a"]}"#, "labels"),
            (r#"{"title":"x","rig_id":"r","metadata":[]}"#, "metadata"),
            (r#"{"title":"x","rig_id":"r","status":"closed"}"#, "status"),
            (r#"{"title":"x","rig_id":"bad id"}"#, "rig_id"),
            (r#"{"title":"x","rig_id":"r","body":"\u0000"}"#, "body"),
        ] {
            assert_eq!(
                field(NewBead::parse(body.as_bytes()).unwrap_err()),
                bad,
                "{body}"
            );
        }
        let long = format!(
            r#"{{"title":"x","rig_id":"r","body":"{}"}}"#,
            "b".repeat(MAX_BODY + 1)
        );
        assert_eq!(field(NewBead::parse(long.as_bytes()).unwrap_err()), "body");
        let meta = format!(
            r#"{{"title":"x","rig_id":"r","metadata":{{"k":"{}"}}}}"#,
            "m".repeat(MAX_METADATA_BYTES)
        );
        assert_eq!(
            field(NewBead::parse(meta.as_bytes()).unwrap_err()),
            "metadata"
        );
        assert!(matches!(
            NewBead::parse(b"[]"),
            Err(ApiError::InvalidJson(_))
        ));
    }

    #[test]
    fn sling_is_an_issue_on_a_rig() {
        let s = NewBead::parse_sling(br#"{"rig_id":"r1","title":"t","body":"b"}"#).unwrap();
        assert_eq!(
            (s.bead_type, s.rig_id.unwrap().as_str()),
            (BeadType::Issue, "r1")
        );
        assert_eq!(
            field(NewBead::parse_sling(br#"{"title":"t"}"#).unwrap_err()),
            "rig_id"
        );
        assert_eq!(
            field(
                NewBead::parse_sling(br#"{"rig_id":"r","title":"t","type":"message"}"#)
                    .unwrap_err()
            ),
            "type"
        );
    }

    #[test]
    fn patches_close_or_reopen_only() {
        let p = BeadPatch::parse(br#"{"status":"closed","priority":1}"#).unwrap();
        assert_eq!((p.status, p.priority), (Some(UserStatus::Closed), Some(1)));
        assert_eq!(
            BeadPatch::parse(br#"{"status":"open"}"#).unwrap().status,
            Some(UserStatus::Open)
        );
        for (body, bad) in [
            (r#"{"status":"in_progress"}"#, "status"),
            (r#"{"status":"failed"}"#, "status"),
            (r#"{"status":"done"}"#, "status"),
            (r#"{}"#, "body"),
            (r#"{"assignee_agent_id":"a"}"#, "assignee_agent_id"),
            (r#"{"title":null}"#, "body"),
        ] {
            assert_eq!(
                field(BeadPatch::parse(body.as_bytes()).unwrap_err()),
                bad,
                "{body}"
            );
        }
    }

    /// `BEAD_JSON` and `BEAD_EVENT_JSON` build exactly the fields the records serialise, in
    /// their order.
    #[test]
    fn sqlite_json_matches_the_records() {
        let keys = |expr: &str| -> Vec<String> {
            let inner = expr
                .strip_prefix("json_object(")
                .and_then(|e| e.strip_suffix(')'))
                .unwrap();
            inner
                .split(", ")
                .step_by(2)
                .map(|k| k.trim_matches('\'').to_owned())
                .collect()
        };
        let bead = Bead {
            id: "b1".into(),
            bead_type: BeadType::Issue,
            status: BeadStatus::Open,
            title: "t".into(),
            body: String::new(),
            rig_id: None,
            assignee_agent_id: None,
            priority: 2,
            labels: vec![],
            metadata: Map::new(),
            created_by: "u1".into(),
            created_at: "x".into(),
            updated_at: "x".into(),
            closed_at: None,
            failure_reason: None,
            dispatch_attempts: 0,
            convoy_id: None,
        };
        let fields = |v: Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
        let mut want = fields(serde_json::to_value(&bead).unwrap());
        let mut got = keys(BEAD_JSON);
        want.sort();
        got.sort();
        assert_eq!(got, want);
        let event = BeadEvent {
            id: 1,
            kind: BeadEventKind::Created,
            actor: "town".into(),
            message: None,
            created_at: "x".into(),
        };
        let mut want = fields(serde_json::to_value(&event).unwrap());
        let mut got = keys(BEAD_EVENT_JSON);
        want.sort();
        got.sort();
        assert_eq!(got, want);
        // The JSON columns are embedded as JSON, not as strings.
        assert!(
            BEAD_JSON.contains("'labels', json(labels)")
                && BEAD_JSON.contains("'metadata', json(metadata)")
        );
    }

    #[test]
    fn filters() {
        let f = BeadFilter::parse(Some("status=in_progress&rig=r1&type=issue&limit=5")).unwrap();
        assert_eq!(f.status, Some(BeadStatus::InProgress));
        assert_eq!(f.rig_id.unwrap().as_str(), "r1");
        assert_eq!(f.bead_type, Some(BeadType::Issue));
        assert_eq!(BeadFilter::parse(None).unwrap(), BeadFilter::default());
        assert_eq!(
            field(BeadFilter::parse(Some("status=nope")).unwrap_err()),
            "status"
        );
        assert_eq!(field(BeadFilter::parse(Some("type=")).unwrap_err()), "type");
        assert_eq!(
            field(BeadFilter::parse(Some("rig_id=a%20b")).unwrap_err()),
            "rig_id"
        );
    }

    #[test]
    fn a_batch_is_read_whole_with_its_dependencies() {
        let batch = SlingBatch::parse(
            br#"{"title":"Two steps","beads":[{"rig_id":"r1","title":"A"},{"rig_id":"r2","title":"B","body":"b","priority":0,"depends_on":[0]}]}"#,
        )
        .unwrap();
        assert_eq!(batch.title, "Two steps");
        assert_eq!(batch.beads.len(), 2);
        assert_eq!(batch.beads[0].depends_on, Vec::<usize>::new());
        assert_eq!(batch.beads[1].depends_on, vec![0]);
        let b = &batch.beads[1].bead;
        assert_eq!(
            (b.bead_type, b.title.as_str(), b.body.as_str(), b.priority),
            (BeadType::Issue, "B", "b", 0)
        );
        assert_eq!(b.rig_id.as_ref().map(RigId::as_str), Some("r2"));
    }

    #[test]
    fn a_bad_batch_names_the_bead_and_the_field() {
        let field = |body: &str| match SlingBatch::parse(body.as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        };
        let one = r#"{"rig_id":"r1","title":"A"}"#;
        for (body, want) in [
            (r#"{"title":"t","beads":[]}"#.to_owned(), "beads"),
            (r#"{"title":"t"}"#.to_owned(), "beads"),
            (r#"{"title":"t","beads":{}}"#.to_owned(), "beads"),
            (format!(r#"{{"beads":[{one}]}}"#), "title"),
            (format!(r#"{{"title":"t","beads":[{one}],"x":1}}"#), "x"),
            (r#"{"title":"t","beads":[1]}"#.to_owned(), "beads[0]"),
            (
                r#"{"title":"t","beads":[{"title":"A"}]}"#.to_owned(),
                "beads[0].rig_id",
            ),
            (
                format!(r#"{{"title":"t","beads":[{one},{{"rig_id":"r1"}}]}}"#),
                "beads[1].title",
            ),
            (
                format!(
                    r#"{{"title":"t","beads":[{one},{{"rig_id":"r1","title":"B","depends_on":[1]}}]}}"#
                ),
                "beads[1].depends_on",
            ),
            (
                format!(
                    r#"{{"title":"t","beads":[{one},{{"rig_id":"r1","title":"B","depends_on":[0,0]}}]}}"#
                ),
                "beads[1].depends_on",
            ),
            (
                format!(
                    r#"{{"title":"t","beads":[{one},{{"rig_id":"r1","title":"B","depends_on":[-1]}}]}}"#
                ),
                "beads[1].depends_on",
            ),
            (
                format!(
                    r#"{{"title":"t","beads":[{one},{{"rig_id":"r1","title":"B","depends_on":"0"}}]}}"#
                ),
                "beads[1].depends_on",
            ),
            (
                format!(
                    r#"{{"title":"t","beads":[{one},{{"rig_id":"r1","title":"B","type":"convoy"}}]}}"#
                ),
                "beads[1].type",
            ),
            (
                format!(
                    r#"{{"title":"t","beads":[{one},{{"rig_id":"r1","title":"B","priority":9}}]}}"#
                ),
                "beads[1].priority",
            ),
        ] {
            assert_eq!(field(&body), want, "{body}");
        }
        let many = vec![one; MAX_BATCH + 1].join(",");
        assert_eq!(
            field(&format!(r#"{{"title":"t","beads":[{many}]}}"#)),
            "beads"
        );
        let most = vec![one; MAX_BATCH].join(",");
        assert!(
            SlingBatch::parse(format!(r#"{{"title":"t","beads":[{most}]}}"#).as_bytes()).is_ok()
        );
        assert!(matches!(
            NewBead::parse(br#"{"type":"convoy","title":"x"}"#),
            Err(ApiError::Invalid { field, .. }) if field == "type"
        ));
    }
}

//! The town's SQL: every query `TownDO` runs lives here, in the style of `owner/store.rs`, as
//! functions over its `SqlStorage`. Status, role, type and event-kind values are bound from
//! their enums' `as_str()`, never written into a query; the schema is `migrations/town_do/`.

use crate::storage::{
    count, exec, exists, first, int, json_record, json_text, rig_values, rows, town_values,
    RIG_COLUMNS, RIG_JSON, TOWN_COLUMNS,
};
use gastown_core::beads::{
    Bead, BeadEventKind, BeadFilter, BeadPatch, BeadStatus, BeadType, ConvoyBead, ConvoyDetail,
    ConvoySummary, NewBead, Progress, BEAD_EVENT_JSON, BEAD_JSON,
};
use gastown_core::control::AgentDoneCallback;
use gastown_core::error::ApiError;
use gastown_core::events::{AgentEvent, EventBatch, EventPage, EventsStored};
use gastown_core::ids::{AgentId, RigId, UserId};
use gastown_core::mayor::{MayorMessage, MayorStatus, Speaker};
use gastown_core::model::{Agent, AgentStatus, Rig, Town, TownStatus, AGENT_COLUMNS, AGENT_JSON};
use gastown_core::page::{Page, SeqPage};
use gastown_core::protocol::Json;
use gastown_core::stream::TownEvent;
use gastown_core::time::rfc3339;
use gastown_core::vocab::Role;
use serde::Deserialize;
use worker::{SqlStorage, SqlStorageValue};

type Reply<T> = Result<T, ApiError>;

#[derive(Deserialize)]
struct Id {
    id: String,
}

fn ids(sql: &SqlStorage, query: &str, bindings: Vec<SqlStorageValue>) -> Reply<Vec<String>> {
    Ok(rows::<Id>(sql, query, bindings)?
        .into_iter()
        .map(|r| r.id)
        .collect())
}

/// `[...]` of a `json_group_array` query, `[]` when it has no row.
fn json_list<T>(sql: &SqlStorage, query: &str, bindings: Vec<SqlStorageValue>) -> Reply<Json<T>> {
    Json::from_text(json_text(sql, query, bindings)?.unwrap_or_else(|| "[]".to_owned()))
}

/// The rowid-like `seq` of the row `id` of `table`, for a page cursor.
fn cursor(sql: &SqlStorage, query: &str, id: Option<&str>, what: &str) -> Reply<i64> {
    let Some(id) = id else {
        return Ok(0);
    };
    #[derive(Deserialize)]
    struct Seq {
        seq: f64,
    }
    first::<Seq>(sql, query, vec![id.into()])?
        .map(|s| s.seq as i64)
        .ok_or_else(|| ApiError::invalid("after", format!("does not name {what}")))
}

// ------------------------------------------------------------------ the town and its config

pub fn town(sql: &SqlStorage) -> Reply<Option<Town>> {
    first(
        sql,
        &format!("SELECT {TOWN_COLUMNS} FROM town LIMIT 1"),
        vec![],
    )
}

pub fn insert_town(sql: &SqlStorage, town: &Town) -> Reply<()> {
    exec(
        sql,
        &format!("INSERT INTO town ({TOWN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
        town_values(town),
    )
}

pub fn set_town_status(sql: &SqlStorage, status: TownStatus) -> Reply<()> {
    exec(
        sql,
        "UPDATE town SET status = ?",
        vec![status.as_str().into()],
    )
}

/// Makes `user` the one the town acts as, and its creator (an org owner's claim).
pub fn set_town_user(sql: &SqlStorage, user: &UserId) -> Reply<()> {
    exec(
        sql,
        "UPDATE town SET owner_user_id = ?, created_by_user_id = ?",
        vec![user.as_str().into(), user.as_str().into()],
    )
}

/// The sealed config, if the town ever stored one.
pub fn sealed_config(sql: &SqlStorage) -> Reply<Option<String>> {
    #[derive(Deserialize)]
    struct Row {
        json: String,
    }
    Ok(first::<Row>(sql, "SELECT json FROM config WHERE id = 1", vec![])?.map(|r| r.json))
}

pub fn store_sealed_config(sql: &SqlStorage, sealed: String) -> Reply<()> {
    exec(
        sql,
        "INSERT INTO config (id, json) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET json = excluded.json",
        vec![sealed.into()],
    )
}

// ------------------------------------------------------------------ rigs

/// A page of the town's rigs in the order they were added (their rowid), as the owner's DO
/// pages the same rigs; `after` is the id of the last rig of the previous page.
///
/// # Errors
/// 422 for a cursor that names no rig of this town.
pub fn rigs_page(sql: &SqlStorage, page: &Page) -> Reply<Json<Vec<Rig>>> {
    let after = cursor(
        sql,
        "SELECT rowid AS seq FROM rigs WHERE id = ?",
        page.after.as_deref(),
        "a row of this list",
    )?;
    json_list(
        sql,
        &format!(
            "SELECT COALESCE(json_group_array({RIG_JSON} ORDER BY seq), '[]') AS j FROM (SELECT rowid AS seq, * FROM rigs WHERE rowid > ? ORDER BY rowid LIMIT ?)"
        ),
        vec![after.into(), i64::from(page.limit).into()],
    )
}

/// Every rig, oldest first (the mayor's view).
pub fn rigs(sql: &SqlStorage) -> Reply<Json<Vec<Rig>>> {
    json_list(
        sql,
        &format!(
            "SELECT COALESCE(json_group_array({RIG_JSON} ORDER BY created_at, id), '[]') AS j FROM rigs"
        ),
        vec![],
    )
}

pub fn rig_ids(sql: &SqlStorage) -> Reply<Vec<String>> {
    ids(sql, "SELECT id FROM rigs ORDER BY id", vec![])
}

pub fn rig(sql: &SqlStorage, id: &str) -> Reply<Option<Rig>> {
    first(
        sql,
        &format!("SELECT {RIG_COLUMNS} FROM rigs WHERE id = ?"),
        vec![id.into()],
    )
}

pub fn rig_exists(sql: &SqlStorage, id: &str) -> Reply<bool> {
    exists(sql, "SELECT 1 FROM rigs WHERE id = ?", vec![id.into()])
}

pub fn rig_count(sql: &SqlStorage) -> Reply<u64> {
    count(sql, "SELECT COUNT(*) AS n FROM rigs", vec![])
}

/// Registers a rig, or updates it in place: an upsert keeps its rowid, so a rig registered
/// again keeps its place in [`rigs_page`] (a `REPLACE` would move it to the end).
pub fn put_rig(sql: &SqlStorage, rig: &Rig) -> Reply<()> {
    exec(
        sql,
        &format!(
            "INSERT INTO rigs ({RIG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET town_id = excluded.town_id, name = excluded.name, git_url = excluded.git_url, default_branch = excluded.default_branch, platform_integration_id = excluded.platform_integration_id, created_at = excluded.created_at"
        ),
        rig_values(rig),
    )
}

/// The rig and its agents go.
pub fn delete_rig(sql: &SqlStorage, id: &RigId) -> Reply<()> {
    exec(
        sql,
        "DELETE FROM rigs WHERE id = ?",
        vec![id.as_str().into()],
    )?;
    exec(
        sql,
        "DELETE FROM agents WHERE rig_id = ?",
        vec![id.as_str().into()],
    )
}

// ------------------------------------------------------------------ agents

/// One agent as its record, built by SQLite (`AGENT_JSON`) so the row's types need no mapping.
pub fn agent(sql: &SqlStorage, id: &str) -> Reply<Option<Agent>> {
    json_record(sql, AGENT_JSON, "agents", id)
}

pub fn agents(sql: &SqlStorage) -> Reply<Json<Vec<Agent>>> {
    json_list(
        sql,
        &format!(
            "SELECT COALESCE(json_group_array({AGENT_JSON} ORDER BY created_at, id), '[]') AS j FROM agents"
        ),
        vec![],
    )
}

pub fn mayor(sql: &SqlStorage) -> Reply<Option<Agent>> {
    json_text(
        sql,
        &format!("SELECT {AGENT_JSON} AS j FROM agents WHERE role = ?"),
        vec![Role::Mayor.as_str().into()],
    )?
    .map(|text| {
        serde_json::from_str(&text).map_err(|e| ApiError::internal(format!("agent row: {e}")))
    })
    .transpose()
}

pub fn agent_count(sql: &SqlStorage) -> Reply<u64> {
    count(sql, "SELECT COUNT(*) AS n FROM agents", vec![])
}

/// A new idle agent.
pub fn insert_agent(
    sql: &SqlStorage,
    id: &AgentId,
    role: Role,
    name: &str,
    rig: Option<&RigId>,
    created_at: String,
) -> Reply<()> {
    exec(
        sql,
        &format!("INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, 0, NULL, ?)"),
        vec![
            id.as_str().into(),
            role.as_str().into(),
            name.into(),
            rig.map(RigId::as_str).into(),
            AgentStatus::Idle.as_str().into(),
            created_at.into(),
        ],
    )
}

/// For the registration test hook only.
#[cfg(feature = "test-hooks")]
pub fn set_agent_status(sql: &SqlStorage, id: &str, status: AgentStatus) -> Reply<()> {
    exec(
        sql,
        "UPDATE agents SET status = ? WHERE id = ?",
        vec![status.as_str().into(), id.into()],
    )
}

/// Any sign of life from an agent.
pub fn touch_agent(sql: &SqlStorage, id: &str, now_ms: u64) -> Reply<()> {
    exec(
        sql,
        "UPDATE agents SET last_activity_at = ?, last_activity_ms = ?, heartbeats = heartbeats + 1 WHERE id = ?",
        vec![rfc3339(now_ms).into(), int(now_ms), id.into()],
    )
}

/// The agent stops working (or stalls): `status`, with no bead.
pub fn release_agent(sql: &SqlStorage, id: &str, status: AgentStatus) -> Reply<()> {
    exec(
        sql,
        "UPDATE agents SET status = ?, current_bead_id = NULL WHERE id = ?",
        vec![status.as_str().into(), id.into()],
    )
}

/// The agent is idle again, if it is still on `bead` (nothing else took it meanwhile).
pub fn release_agent_of(sql: &SqlStorage, id: &str, bead: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE agents SET status = ?, current_bead_id = NULL WHERE id = ? AND current_bead_id = ?",
        vec![AgentStatus::Idle.as_str().into(), id.into(), bead.into()],
    )
}

/// Every agent in one of `from` goes to `to`, with no bead (the town stopped).
pub fn release_agents(sql: &SqlStorage, from: [AgentStatus; 2], to: AgentStatus) -> Reply<()> {
    exec(
        sql,
        "UPDATE agents SET status = ?, current_bead_id = NULL WHERE status IN (?, ?)",
        vec![
            to.as_str().into(),
            from[0].as_str().into(),
            from[1].as_str().into(),
        ],
    )
}

/// A working agent silent since before `before_ms`.
#[derive(Deserialize)]
pub struct Silent {
    pub id: String,
    pub current_bead_id: Option<String>,
}

pub fn silent_agents(sql: &SqlStorage, before_ms: u64) -> Reply<Vec<Silent>> {
    rows(
        sql,
        "SELECT id, current_bead_id FROM agents WHERE status = ? AND COALESCE(last_activity_ms, 0) < ?",
        vec![AgentStatus::Working.as_str().into(), int(before_ms)],
    )
}

/// An agent dispatch may hand a bead to.
#[derive(Deserialize)]
pub struct Polecat {
    pub id: String,
    pub name: String,
}

/// An idle (or else stalled) polecat of the rig, the longest-standing first.
pub fn free_polecat(sql: &SqlStorage, rig: &RigId) -> Reply<Option<Polecat>> {
    first(
        sql,
        "SELECT id, name FROM agents WHERE rig_id = ? AND role = ? AND status IN (?, ?) ORDER BY status, created_at LIMIT 1",
        vec![
            rig.as_str().into(),
            Role::Polecat.as_str().into(),
            AgentStatus::Idle.as_str().into(),
            AgentStatus::Stalled.as_str().into(),
        ],
    )
}

pub fn polecat_count(sql: &SqlStorage, rig: &RigId) -> Reply<u64> {
    count(
        sql,
        "SELECT COUNT(*) AS n FROM agents WHERE rig_id = ? AND role = ?",
        vec![rig.as_str().into(), Role::Polecat.as_str().into()],
    )
}

pub fn working_on_rig(sql: &SqlStorage, rig: &RigId) -> Reply<u64> {
    count(
        sql,
        "SELECT COUNT(*) AS n FROM agents WHERE rig_id = ? AND status = ?",
        vec![rig.as_str().into(), AgentStatus::Working.as_str().into()],
    )
}

/// Whether an issue waits or runs, and whether an agent works.
pub fn work(sql: &SqlStorage) -> Reply<(bool, bool)> {
    let issue = exists(
        sql,
        "SELECT 1 FROM beads WHERE type = ? AND status IN (?, ?) LIMIT 1",
        vec![
            BeadType::Issue.as_str().into(),
            BeadStatus::Open.as_str().into(),
            BeadStatus::InProgress.as_str().into(),
        ],
    )?;
    let working = exists(
        sql,
        "SELECT 1 FROM agents WHERE status = ? LIMIT 1",
        vec![AgentStatus::Working.as_str().into()],
    )?;
    Ok((issue, working))
}

// ------------------------------------------------------------------ beads and their events

/// Who did something, in a bead's event log.
pub enum Actor<'a> {
    User(&'a str),
    Agent(&'a AgentId),
    Town,
}

impl Actor<'_> {
    fn label(&self) -> String {
        match self {
            Actor::User(id) => format!("user:{id}"),
            Actor::Agent(id) => format!("agent:{id}"),
            Actor::Town => "town".to_owned(),
        }
    }
}

/// Appends to a bead's event log.
pub fn event(
    sql: &SqlStorage,
    bead: &str,
    kind: BeadEventKind,
    actor: &Actor<'_>,
    message: Option<&str>,
    now_ms: u64,
) -> Reply<()> {
    exec(
        sql,
        "INSERT INTO bead_events (bead_id, kind, actor, message, created_at, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            bead.into(),
            kind.as_str().into(),
            actor.label().into(),
            message.into(),
            rfc3339(now_ms).into(),
            int(now_ms),
        ],
    )
}

/// Events of `kind` on `bead` since `since_ms`.
pub fn events_since(
    sql: &SqlStorage,
    bead: &str,
    kind: BeadEventKind,
    since_ms: u64,
) -> Reply<u64> {
    count(
        sql,
        "SELECT COUNT(*) AS n FROM bead_events WHERE bead_id = ? AND kind = ? AND created_ms > ?",
        vec![bead.into(), kind.as_str().into(), int(since_ms)],
    )
}

/// One bead, decoded (the places that need its fields).
/// The git identity the agent's session last committed as.
pub fn agent_git_identity(sql: &SqlStorage, agent: &str) -> Reply<Option<String>> {
    #[derive(Deserialize)]
    struct Row {
        git_identity: Option<String>,
    }
    Ok(first::<Row>(
        sql,
        "SELECT git_identity FROM agents WHERE id = ?",
        vec![agent.into()],
    )?
    .and_then(|r| r.git_identity))
}

pub fn set_agent_git_identity(sql: &SqlStorage, agent: &str, identity: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE agents SET git_identity = ? WHERE id = ?",
        vec![identity.into(), agent.into()],
    )
}

pub fn bead(sql: &SqlStorage, id: &str) -> Reply<Option<Bead>> {
    json_record(sql, BEAD_JSON, "beads", id)
}

/// The bead, if it is still in progress with `agent` (not finished, handed back or given to
/// another meanwhile).
pub fn bead_held_by(sql: &SqlStorage, id: &str, agent: &str) -> Reply<Option<Bead>> {
    Ok(bead(sql, id)?.filter(|b| {
        b.status == BeadStatus::InProgress
            && b.assignee_agent_id.as_ref().map(AgentId::as_str) == Some(agent)
    }))
}

/// A bead with its event log, as JSON built by SQLite: `{...bead, "events": [...]}`.
pub fn bead_detail_json(sql: &SqlStorage, id: &str) -> Reply<Option<String>> {
    let Some(bead) = json_text(
        sql,
        &format!("SELECT {BEAD_JSON} AS j FROM beads WHERE id = ?"),
        vec![id.into()],
    )?
    else {
        return Ok(None);
    };
    let events = json_text(
        sql,
        &format!("SELECT COALESCE(json_group_array({BEAD_EVENT_JSON} ORDER BY id), '[]') AS j FROM bead_events WHERE bead_id = ?"),
        vec![id.into()],
    )?
    .unwrap_or_else(|| "[]".to_owned());
    let pull = pull_json_of(sql, id)?.unwrap_or_else(|| "null".to_owned());
    // The bead's object is SQLite's, never empty.
    let body = bead
        .trim_end()
        .strip_suffix('}')
        .ok_or_else(|| ApiError::internal("bead json"))?;
    Ok(Some(format!(
        "{body},\"pull_request\":{pull},\"events\":{events}}}"
    )))
}

/// A page of beads in the order they were made, filtered.
///
/// # Errors
/// 422 for a cursor that names no bead of this town.
pub fn beads_page(sql: &SqlStorage, filter: &BeadFilter, page: &Page) -> Reply<Json<Vec<Bead>>> {
    let after = cursor(
        sql,
        "SELECT seq FROM beads WHERE id = ?",
        page.after.as_deref(),
        "a bead of this town",
    )?;
    let mut clauses = String::from("seq > ?");
    let mut bindings: Vec<SqlStorageValue> = vec![after.into()];
    if let Some(status) = filter.status {
        clauses.push_str(" AND status = ?");
        bindings.push(status.as_str().into());
    }
    if let Some(rig) = &filter.rig_id {
        clauses.push_str(" AND rig_id = ?");
        bindings.push(rig.as_str().into());
    }
    if let Some(t) = filter.bead_type {
        clauses.push_str(" AND type = ?");
        bindings.push(t.as_str().into());
    }
    bindings.push(i64::from(page.limit).into());
    json_list(
        sql,
        &format!(
            "SELECT COALESCE(json_group_array({BEAD_JSON} ORDER BY seq), '[]') AS j FROM (SELECT * FROM beads WHERE {clauses} ORDER BY seq LIMIT ?)"
        ),
        bindings,
    )
}

/// A new open bead.
pub fn insert_bead(
    sql: &SqlStorage,
    id: &str,
    new: &NewBead,
    created_by: &str,
    now: &str,
) -> Reply<()> {
    let labels = serde_json::to_string(&new.labels).map_err(ApiError::internal)?;
    exec(
        sql,
        "INSERT INTO beads (id, type, status, title, body, rig_id, priority, labels, metadata, created_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            id.into(),
            new.bead_type.as_str().into(),
            BeadStatus::Open.as_str().into(),
            new.title.as_str().into(),
            new.body.as_str().into(),
            new.rig_id.as_ref().map(RigId::as_str).into(),
            i64::from(new.priority).into(),
            labels.into(),
            new.metadata.as_str().into(),
            created_by.into(),
            now.into(),
            now.into(),
        ],
    )
}

/// A user's change of a bead's fields (those the patch names) and its `updated_at`.
pub fn patch_bead_fields(sql: &SqlStorage, id: &str, patch: &BeadPatch, now: &str) -> Reply<()> {
    let labels = patch
        .labels
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(ApiError::internal)?;
    exec(
        sql,
        "UPDATE beads SET title = COALESCE(?, title), body = COALESCE(?, body), priority = COALESCE(?, priority), labels = COALESCE(?, labels), updated_at = ? WHERE id = ?",
        vec![
            patch.title.as_deref().into(),
            patch.body.as_deref().into(),
            patch.priority.map(i64::from).into(),
            labels.into(),
            now.into(),
            id.into(),
        ],
    )
}

pub fn close_bead(sql: &SqlStorage, id: &str, now: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET status = ?, closed_at = ?, updated_at = ? WHERE id = ?",
        vec![
            BeadStatus::Closed.as_str().into(),
            now.into(),
            now.into(),
            id.into(),
        ],
    )
}

/// A user reopens a bead: open, unassigned, and its failure, attempts and backoff reset.
pub fn reopen_bead_afresh(sql: &SqlStorage, id: &str, now: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET status = ?, assignee_agent_id = NULL, closed_at = NULL, failure_reason = NULL, dispatch_attempts = 0, next_dispatch_at = 0, updated_at = ? WHERE id = ?",
        vec![BeadStatus::Open.as_str().into(), now.into(), id.into()],
    )
}

/// The town hands a bead back (its agent stalled, or the town stopped): `status` (open) and
/// unassigned, its attempts kept.
pub fn hand_back_bead(sql: &SqlStorage, id: &str, status: BeadStatus, now: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET status = ?, assignee_agent_id = NULL, updated_at = ? WHERE id = ?",
        vec![status.as_str().into(), now.into(), id.into()],
    )
}

/// A failed dispatch: open again once `at_ms` has passed.
pub fn retry_bead(sql: &SqlStorage, id: &str, at_ms: u64, now: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET status = ?, assignee_agent_id = NULL, next_dispatch_at = ?, updated_at = ? WHERE id = ?",
        vec![
            BeadStatus::Open.as_str().into(),
            int(at_ms),
            now.into(),
            id.into(),
        ],
    )
}

pub fn fail_bead(sql: &SqlStorage, id: &str, reason: &str, now: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET status = ?, assignee_agent_id = NULL, failure_reason = ?, updated_at = ? WHERE id = ?",
        vec![
            BeadStatus::Failed.as_str().into(),
            reason.into(),
            now.into(),
            id.into(),
        ],
    )
}

/// An agent finished the bead: `status`, with `closed_at` when it `closes`, and what it
/// reported (branch, pull request, summary) in the metadata.
pub fn finish_bead(
    sql: &SqlStorage,
    id: &str,
    status: BeadStatus,
    closes: bool,
    done: &AgentDoneCallback,
    now: &str,
) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET status = ?, closed_at = ?, updated_at = ?, metadata = json_set(metadata, '$.branch', ?, '$.pr_url', ?, '$.summary', ?) WHERE id = ?",
        vec![
            status.as_str().into(),
            closes.then_some(now).into(),
            now.into(),
            done.branch.as_deref().into(),
            done.pr_url.as_deref().into(),
            done.summary.as_str().into(),
            id.into(),
        ],
    )
}

/// The bead and its events go.
pub fn delete_bead(sql: &SqlStorage, id: &str) -> Reply<()> {
    exec(
        sql,
        "DELETE FROM bead_events WHERE bead_id = ?",
        vec![id.into()],
    )?;
    exec(sql, "DELETE FROM beads WHERE id = ?", vec![id.into()])
}

pub fn bead_ids_with_status(sql: &SqlStorage, status: BeadStatus) -> Reply<Vec<String>> {
    ids(
        sql,
        "SELECT id FROM beads WHERE status = ?",
        vec![status.as_str().into()],
    )
}

/// The rig's beads that wait or run.
pub fn unfinished_beads_of_rig(sql: &SqlStorage, rig: &RigId) -> Reply<Vec<String>> {
    ids(
        sql,
        "SELECT id FROM beads WHERE rig_id = ? AND status IN (?, ?)",
        vec![
            rig.as_str().into(),
            BeadStatus::Open.as_str().into(),
            BeadStatus::InProgress.as_str().into(),
        ],
    )
}

/// An open issue dispatch may hand out.
#[derive(Deserialize)]
pub struct Candidate {
    pub id: String,
    pub title: String,
    pub body: String,
    pub rig_id: String,
    pub dispatch_attempts: f64,
    /// The branch the town chose (a feedback bead's pull request's), if any.
    pub work_branch: Option<String>,
}

/// Up to 20 open, unassigned issues whose backoff has passed and whose dependencies have all
/// closed, most urgent and oldest first.
pub fn candidates(sql: &SqlStorage, now_ms: u64) -> Reply<Vec<Candidate>> {
    rows(
        sql,
        "SELECT id, title, body, rig_id, dispatch_attempts, work_branch FROM beads WHERE status = ? AND type = ? AND assignee_agent_id IS NULL AND next_dispatch_at <= ? AND NOT EXISTS (SELECT 1 FROM bead_dependencies d JOIN beads x ON x.id = d.depends_on WHERE d.bead_id = beads.id AND x.status != 'closed') ORDER BY priority, seq LIMIT 20",
        vec![
            BeadStatus::Open.as_str().into(),
            BeadType::Issue.as_str().into(),
            int(now_ms),
        ],
    )
}

/// The claim: the bead with the agent (`status`, its `attempts`), the agent working on it.
pub fn claim(
    sql: &SqlStorage,
    bead: &str,
    agent: &str,
    status: BeadStatus,
    attempts: u32,
    now_ms: u64,
) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET status = ?, assignee_agent_id = ?, dispatch_attempts = ?, updated_at = ? WHERE id = ?",
        vec![
            status.as_str().into(),
            agent.into(),
            i64::from(attempts).into(),
            rfc3339(now_ms).into(),
            bead.into(),
        ],
    )?;
    exec(
        sql,
        "UPDATE agents SET status = ?, current_bead_id = ?, dispatch_attempts = dispatch_attempts + 1, last_activity_at = ?, last_activity_ms = ?, git_identity = NULL WHERE id = ?",
        vec![
            AgentStatus::Working.as_str().into(),
            bead.into(),
            rfc3339(now_ms).into(),
            int(now_ms),
            agent.into(),
        ],
    )
}

/// The bead belongs to `convoy`.
pub fn set_convoy(sql: &SqlStorage, id: &str, convoy: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET convoy_id = ? WHERE id = ?",
        vec![convoy.into(), id.into()],
    )
}

/// `bead` waits for `on` to close.
pub fn add_dependency(sql: &SqlStorage, bead: &str, on: &str) -> Reply<()> {
    exec(
        sql,
        "INSERT OR IGNORE INTO bead_dependencies (bead_id, depends_on) VALUES (?, ?)",
        vec![bead.into(), on.into()],
    )
}

#[derive(Deserialize)]
struct JsonRow {
    j: String,
}

fn beads_where(sql: &SqlStorage, clause: &str, bindings: Vec<SqlStorageValue>) -> Reply<Vec<Bead>> {
    rows::<JsonRow>(
        sql,
        &format!("SELECT {BEAD_JSON} AS j FROM beads WHERE {clause} ORDER BY seq"),
        bindings,
    )?
    .into_iter()
    .map(|r| serde_json::from_str(&r.j).map_err(ApiError::internal))
    .collect()
}

fn progress_of(beads: &[Bead]) -> Progress {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Progress {
        closed: count(
            beads
                .iter()
                .filter(|b| b.status == BeadStatus::Closed)
                .count(),
        ),
        total: count(beads.len()),
    }
}

/// The town's convoys, newest first (the latest [`MAX_CONVOYS_LISTED`]), with their progress.
pub fn convoys(sql: &SqlStorage) -> Reply<Vec<ConvoySummary>> {
    let mut convoys = beads_where(
        sql,
        "seq IN (SELECT seq FROM beads WHERE type = ? ORDER BY seq DESC LIMIT ?)",
        vec![BeadType::Convoy.as_str().into(), int(MAX_CONVOYS_LISTED)],
    )?;
    convoys.reverse();
    convoys
        .into_iter()
        .map(|convoy| {
            let members = beads_where(sql, "convoy_id = ?", vec![convoy.id.as_str().into()])?;
            Ok(ConvoySummary {
                progress: progress_of(&members),
                convoy,
            })
        })
        .collect()
}

/// Most convoys `GET …/convoys` lists.
pub const MAX_CONVOYS_LISTED: u64 = 200;

/// A convoy with its beads (in the order they were slung) and what each waits for.
pub fn convoy_detail(sql: &SqlStorage, id: &str) -> Reply<Option<ConvoyDetail>> {
    let Some(convoy) = bead(sql, id)?.filter(|b| b.bead_type == BeadType::Convoy) else {
        return Ok(None);
    };
    let members = beads_where(sql, "convoy_id = ?", vec![id.into()])?;
    #[derive(Deserialize)]
    struct Dependency {
        bead_id: String,
        depends_on: String,
    }
    let dependencies: Vec<Dependency> = rows(
        sql,
        "SELECT d.bead_id, d.depends_on FROM bead_dependencies d JOIN beads b ON b.id = d.bead_id WHERE b.convoy_id = ? ORDER BY b.seq",
        vec![id.into()],
    )?;
    let progress = progress_of(&members);
    let beads = members
        .into_iter()
        .map(|bead| ConvoyBead {
            depends_on: dependencies
                .iter()
                .filter(|d| d.bead_id == bead.id)
                .map(|d| d.depends_on.clone())
                .collect(),
            bead,
        })
        .collect();
    Ok(Some(ConvoyDetail {
        convoy,
        progress,
        beads,
    }))
}

/// After a change to `member`'s status: its convoy (if any) follows its beads. Every bead
/// closed → closed; one failed → failed, naming the first that failed; one started (in
/// progress, in review or closed) → in progress; else open. A change is written to the
/// convoy's events.
pub fn settle_convoy_of(sql: &SqlStorage, member: &str, now_ms: u64) -> Reply<()> {
    #[derive(Deserialize)]
    struct Of {
        convoy_id: Option<String>,
    }
    let convoy = first::<Of>(
        sql,
        "SELECT convoy_id FROM beads WHERE id = ?",
        vec![member.into()],
    )?
    .and_then(|r| r.convoy_id);
    match convoy {
        Some(convoy) => settle_convoy(sql, &convoy, now_ms),
        None => Ok(()),
    }
}

/// As [`settle_convoy_of`], for the convoy `id`.
pub fn settle_convoy(sql: &SqlStorage, id: &str, now_ms: u64) -> Reply<()> {
    let Some(convoy) = bead(sql, id)?.filter(|b| b.bead_type == BeadType::Convoy) else {
        return Ok(());
    };
    let members = beads_where(sql, "convoy_id = ?", vec![id.into()])?;
    if members.is_empty() {
        return Ok(());
    }
    let failed = members.iter().find(|b| b.status == BeadStatus::Failed);
    let progress = progress_of(&members);
    let (status, reason) = if let Some(f) = failed {
        let why = f.failure_reason.as_deref().unwrap_or("no reason recorded");
        (
            BeadStatus::Failed,
            Some(format!("bead {} ({}) failed: {why}", f.id, f.title)),
        )
    } else if progress.closed == progress.total {
        (BeadStatus::Closed, None)
    } else if members.iter().any(|b| b.status != BeadStatus::Open) {
        (BeadStatus::InProgress, None)
    } else {
        (BeadStatus::Open, None)
    };
    if status == convoy.status && reason == convoy.failure_reason {
        return Ok(());
    }
    let now = rfc3339(now_ms);
    exec(
        sql,
        "UPDATE beads SET status = ?, closed_at = ?, failure_reason = ?, updated_at = ? WHERE id = ?",
        vec![
            status.as_str().into(),
            (status == BeadStatus::Closed).then_some(now.as_str()).into(),
            reason.as_deref().into(),
            now.as_str().into(),
            id.into(),
        ],
    )?;
    let (kind, message) = match status {
        BeadStatus::Closed => (
            BeadEventKind::Closed,
            format!("all {} of its beads closed", progress.total),
        ),
        BeadStatus::Failed => (BeadEventKind::Failed, reason.clone().unwrap_or_default()),
        _ if convoy.status == BeadStatus::Failed || convoy.status == BeadStatus::Closed => (
            BeadEventKind::Reopened,
            format!("{}/{} closed", progress.closed, progress.total),
        ),
        _ => (
            BeadEventKind::Updated,
            format!(
                "{}: {}/{} closed",
                status.as_str(),
                progress.closed,
                progress.total
            ),
        ),
    };
    event(sql, id, kind, &Actor::Town, Some(&message), now_ms)
}

// ------------------------------------------------------------------ the mayor

/// The mayor's session row.
#[derive(Deserialize)]
pub struct MayorSession {
    pub status: String,
    pub key_hash: Option<String>,
    pub model: Option<String>,
    pub acting_user_id: Option<String>,
    pub last_activity_ms: Option<f64>,
    pub start_failures: f64,
    pub next_start_ms: f64,
    pub dropped: f64,
}

impl MayorSession {
    pub fn status(&self) -> MayorStatus {
        MayorStatus::from_stored(&self.status)
    }
}

pub fn mayor_session(sql: &SqlStorage) -> Reply<MayorSession> {
    first(
        sql,
        "SELECT status, key_hash, model, acting_user_id, last_activity_ms, start_failures, next_start_ms, dropped FROM mayor_session WHERE id = 1",
        vec![],
    )?
    .ok_or_else(|| ApiError::internal("mayor_session row missing"))
}

/// A new session is being started with the key whose hash is `key_hash`.
pub fn begin_mayor_session(
    sql: &SqlStorage,
    key_hash: &str,
    model: Option<&str>,
    now_ms: u64,
) -> Reply<()> {
    exec(
        sql,
        "UPDATE mayor_session SET status = ?, key_hash = ?, model = ?, last_activity_ms = ? WHERE id = 1",
        vec![
            MayorStatus::Starting.as_str().into(),
            key_hash.into(),
            model.into(),
            int(now_ms),
        ],
    )
}

/// The session says what it does (or shows it lives).
pub fn set_mayor_status(sql: &SqlStorage, status: MayorStatus, now_ms: u64) -> Reply<()> {
    exec(
        sql,
        "UPDATE mayor_session SET status = ?, last_activity_ms = ? WHERE id = 1",
        vec![status.as_str().into(), int(now_ms)],
    )
}

/// No session runs any more: its key is worthless from now on.
pub fn end_mayor_session(sql: &SqlStorage) -> Reply<()> {
    exec(
        sql,
        "UPDATE mayor_session SET status = ?, key_hash = NULL WHERE id = 1",
        vec![MayorStatus::Idle.as_str().into()],
    )
}

/// A start failed: the next is tried no sooner than `next_ms`.
pub fn mayor_start_failed(sql: &SqlStorage, next_ms: u64) -> Reply<()> {
    exec(
        sql,
        "UPDATE mayor_session SET status = ?, key_hash = NULL, start_failures = start_failures + 1, next_start_ms = ? WHERE id = 1",
        vec![MayorStatus::Idle.as_str().into(), int(next_ms)],
    )
}

/// Messages up to `up_to_seq` were given to the session, whose work now runs as `acting`.
pub fn mayor_delivered(sql: &SqlStorage, up_to_seq: u64, acting: Option<&str>) -> Reply<()> {
    exec(
        sql,
        "UPDATE mayor_messages SET delivered = 1 WHERE delivered = 0 AND seq <= ?",
        vec![int(up_to_seq)],
    )?;
    exec(
        sql,
        "UPDATE mayor_session SET acting_user_id = COALESCE(?, acting_user_id), start_failures = 0, next_start_ms = 0 WHERE id = 1",
        vec![acting.into()],
    )
}

/// A message to store: who said it, and whether the session has it already.
pub struct NewMayorMessage<'a> {
    pub role: Speaker,
    pub text: &'a str,
    pub user_id: Option<&'a str>,
    pub delivered: bool,
}

const MAYOR_MESSAGE_JSON: &str = "json_object('seq', seq, 'role', role, 'text', text, 'user_id', user_id, 'created_at', created_at, 'delivered', json(CASE WHEN delivered = 1 THEN 'true' ELSE 'false' END))";

fn mayor_messages(
    sql: &SqlStorage,
    clause: &str,
    bindings: Vec<SqlStorageValue>,
) -> Reply<Vec<MayorMessage>> {
    let text = json_text(
        sql,
        &format!("SELECT COALESCE(json_group_array(json(j)), '[]') AS j FROM (SELECT {MAYOR_MESSAGE_JSON} AS j FROM mayor_messages {clause})"),
        bindings,
    )?
    .unwrap_or_else(|| "[]".to_owned());
    let mut list: Vec<MayorMessage> = serde_json::from_str(&text)
        .map_err(|e| ApiError::internal(format!("mayor message rows: {e}")))?;
    // The clause picks the rows; they are always answered oldest first.
    list.sort_by_key(|m| m.seq);
    Ok(list)
}

/// A new message; its row. The oldest messages beyond `cap` that the session has heard are
/// dropped (and counted).
pub fn insert_mayor_message(
    sql: &SqlStorage,
    new: NewMayorMessage<'_>,
    now_ms: u64,
    cap: u64,
) -> Reply<MayorMessage> {
    let NewMayorMessage {
        role,
        text,
        user_id,
        delivered,
    } = new;
    exec(
        sql,
        "INSERT INTO mayor_messages (role, text, user_id, created_at, delivered) VALUES (?, ?, ?, ?, ?)",
        vec![
            role.as_str().into(),
            text.into(),
            user_id.into(),
            rfc3339(now_ms).into(),
            int(u64::from(delivered)),
        ],
    )?;
    let row = mayor_messages(sql, "WHERE seq = last_insert_rowid()", vec![])?
        .pop()
        .ok_or_else(|| ApiError::internal("mayor message row missing"))?;
    let over = count(
        sql,
        "SELECT COUNT(*) AS n FROM mayor_messages WHERE delivered = 1 AND seq <= ?",
        vec![int(row.seq.saturating_sub(cap))],
    )?;
    if over > 0 {
        exec(
            sql,
            "DELETE FROM mayor_messages WHERE delivered = 1 AND seq <= ?",
            vec![int(row.seq.saturating_sub(cap))],
        )?;
        exec(
            sql,
            "UPDATE mayor_session SET dropped = dropped + ? WHERE id = 1",
            vec![int(over)],
        )?;
    }
    Ok(row)
}

/// An escalation for the mayor, once: `false` when it was given one already.
pub fn insert_escalation_message(
    sql: &SqlStorage,
    escalation_id: &str,
    text: &str,
    now_ms: u64,
) -> Reply<bool> {
    let before = exists(
        sql,
        "SELECT 1 FROM mayor_messages WHERE escalation_id = ?",
        vec![escalation_id.into()],
    )?;
    if before {
        return Ok(false);
    }
    exec(
        sql,
        "INSERT OR IGNORE INTO mayor_messages (role, text, created_at, delivered, escalation_id) VALUES (?, ?, ?, 0, ?)",
        vec![
            Speaker::Town.as_str().into(),
            text.into(),
            rfc3339(now_ms).into(),
            escalation_id.into(),
        ],
    )?;
    Ok(true)
}

/// What the session has not heard yet, oldest first.
pub fn mayor_pending(sql: &SqlStorage) -> Reply<Vec<MayorMessage>> {
    mayor_messages(sql, "WHERE delivered = 0 ORDER BY seq LIMIT 100", vec![])
}

pub fn mayor_pending_count(sql: &SqlStorage) -> Reply<u64> {
    count(
        sql,
        "SELECT COUNT(*) AS n FROM mayor_messages WHERE delivered = 0",
        vec![],
    )
}

/// The conversation a new session resumes: the newest 200 messages the mayor heard, oldest
/// first.
pub fn mayor_heard(sql: &SqlStorage) -> Reply<Vec<MayorMessage>> {
    mayor_messages(
        sql,
        "WHERE delivered = 1 ORDER BY seq DESC LIMIT 200",
        vec![],
    )
}

/// A page of the transcript after `after`, oldest first.
pub fn mayor_transcript(sql: &SqlStorage, after: u64, limit: u32) -> Reply<Vec<MayorMessage>> {
    mayor_messages(
        sql,
        "WHERE seq > ? ORDER BY seq LIMIT ?",
        vec![int(after), int(u64::from(limit))],
    )
}

/// The newest message's time, for the mayor's last activity.
pub fn mayor_last_message_at(sql: &SqlStorage) -> Reply<Option<String>> {
    #[derive(Deserialize)]
    struct At {
        created_at: String,
    }
    Ok(first::<At>(
        sql,
        "SELECT created_at FROM mayor_messages ORDER BY seq DESC LIMIT 1",
        vec![],
    )?
    .map(|a| a.created_at))
}

// ------------------------------------------------------------------ agent events

/// Stores a batch of `agent`'s events (those already stored are skipped), then drops the
/// agent's oldest beyond `cap`. Answers the events it stored, for the agent's sockets.
pub fn insert_agent_events(
    sql: &SqlStorage,
    agent: &str,
    batch: &EventBatch,
    cap: u64,
) -> Reply<(EventsStored, Vec<AgentEvent>)> {
    #[derive(Deserialize)]
    struct Row {
        id: f64,
    }
    let mut stored = Vec::new();
    for e in &batch.events {
        let row = first::<Row>(
            sql,
            "INSERT INTO agent_events (agent_id, run, seq, kind, text, truncated, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, run, seq) DO NOTHING RETURNING id",
            vec![
                agent.into(),
                int(batch.run),
                int(e.seq),
                e.kind.as_str().into(),
                e.text.as_str().into(),
                int(u64::from(e.truncated)),
                int(e.at_ms),
            ],
        )?;
        if let Some(row) = row {
            stored.push(AgentEvent {
                id: row.id as u64,
                run: batch.run,
                seq: e.seq,
                kind: e.kind.clone(),
                text: e.text.clone(),
                truncated: e.truncated,
                at: rfc3339(e.at_ms),
            });
        }
    }
    let total = count(
        sql,
        "SELECT COUNT(*) AS n FROM agent_events WHERE agent_id = ?",
        vec![agent.into()],
    )?;
    if total > cap {
        let over = total - cap;
        let last = count(
            sql,
            "SELECT MAX(id) AS n FROM (SELECT id FROM agent_events WHERE agent_id = ? ORDER BY id LIMIT ?)",
            vec![agent.into(), int(over)],
        )?;
        exec(
            sql,
            "DELETE FROM agent_events WHERE agent_id = ? AND id <= ?",
            vec![agent.into(), int(last)],
        )?;
        exec(
            sql,
            "INSERT INTO agent_event_drops (agent_id, dropped, last_dropped_id) VALUES (?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET dropped = dropped + excluded.dropped, last_dropped_id = excluded.last_dropped_id",
            vec![agent.into(), int(over), int(last)],
        )?;
    }
    let counts = EventsStored {
        stored: stored.len() as u64,
        duplicates: (batch.events.len() - stored.len()) as u64,
    };
    Ok((counts, stored))
}

/// How many of `agent`'s events the cap has dropped, if one of them came after `after`.
pub fn agent_dropped_after(sql: &SqlStorage, agent: &str, after: u64) -> Reply<Option<u64>> {
    #[derive(Deserialize)]
    struct Row {
        dropped: f64,
        last_dropped_id: f64,
    }
    Ok(first::<Row>(
        sql,
        "SELECT dropped, last_dropped_id FROM agent_event_drops WHERE agent_id = ?",
        vec![agent.into()],
    )?
    .filter(|r| r.last_dropped_id as u64 > after)
    .map(|r| r.dropped as u64))
}

// ------------------------------------------------------------------ the town's change log

/// The newest position of the town's change log (0 when empty).
pub fn town_events_latest(sql: &SqlStorage) -> Reply<u64> {
    count(
        sql,
        "SELECT COALESCE(MAX(seq), 0) AS n FROM town_events",
        vec![],
    )
}

/// The oldest and newest positions kept (0, 0 when empty).
pub fn town_events_bounds(sql: &SqlStorage) -> Reply<(u64, u64)> {
    #[derive(Deserialize)]
    struct Row {
        oldest: f64,
        latest: f64,
    }
    Ok(first::<Row>(
        sql,
        "SELECT COALESCE(MIN(seq), 0) AS oldest, COALESCE(MAX(seq), 0) AS latest FROM town_events",
        vec![],
    )?
    .map_or((0, 0), |r| (r.oldest as u64, r.latest as u64)))
}

/// At most `limit` changes after `after`, oldest first.
pub fn town_events_after(sql: &SqlStorage, after: u64, limit: usize) -> Reply<Vec<TownEvent>> {
    #[derive(Deserialize)]
    struct Row {
        seq: f64,
        kind: String,
        data: String,
        at_ms: f64,
    }
    rows::<Row>(
        sql,
        "SELECT seq, kind, data, at_ms FROM town_events WHERE seq > ? ORDER BY seq LIMIT ?",
        vec![int(after), int(limit as u64)],
    )?
    .into_iter()
    .map(|r| {
        Ok(TownEvent {
            seq: r.seq as u64,
            kind: r.kind,
            at: rfc3339(r.at_ms as u64),
            data: serde_json::from_str(&r.data).map_err(ApiError::internal)?,
        })
    })
    .collect()
}

/// Records a stream ticket's nonce as used; false if it was. Forgets nonces whose tickets
/// have expired.
pub fn use_ticket(sql: &SqlStorage, nonce: &str, expires_ms: u64, now_ms: u64) -> Reply<bool> {
    exec(
        sql,
        "DELETE FROM stream_tickets WHERE expires_ms < ?",
        vec![int(now_ms)],
    )?;
    #[derive(Deserialize)]
    struct Row {
        #[allow(dead_code)]
        nonce: String,
    }
    Ok(first::<Row>(
        sql,
        "INSERT INTO stream_tickets (nonce, expires_ms) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING RETURNING nonce",
        vec![nonce.into(), int(expires_ms)],
    )?
    .is_some())
}

/// A page of `agent`'s events after `after`, oldest first, and how many the cap dropped.
pub fn agent_events_page(sql: &SqlStorage, agent: &str, page: SeqPage) -> Reply<EventPage> {
    #[derive(Deserialize)]
    struct Row {
        id: f64,
        run: f64,
        seq: f64,
        kind: String,
        text: String,
        truncated: f64,
        at_ms: f64,
    }
    let events: Vec<AgentEvent> = rows::<Row>(
        sql,
        "SELECT id, run, seq, kind, text, truncated, at_ms FROM agent_events WHERE agent_id = ? AND id > ? ORDER BY id LIMIT ?",
        vec![agent.into(), int(page.after), int(u64::from(page.limit))],
    )?
    .into_iter()
    .map(|r| AgentEvent {
        id: r.id as u64,
        run: r.run as u64,
        seq: r.seq as u64,
        kind: r.kind,
        text: r.text,
        truncated: r.truncated != 0.0,
        at: rfc3339(r.at_ms as u64),
    })
    .collect();
    let next_after = (events.len() == page.limit as usize)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    let dropped = count(
        sql,
        "SELECT COALESCE(MAX(dropped), 0) AS n FROM agent_event_drops WHERE agent_id = ?",
        vec![agent.into()],
    )?;
    Ok(EventPage {
        events,
        next_after,
        dropped,
    })
}

// ---------------------------------------------------------------- the refinery

/// A pull request the town opened or follows (`pull_requests`).
#[derive(Debug, Clone, Deserialize)]
pub struct PullRow {
    pub bead_id: String,
    pub source_bead_id: String,
    pub rig_id: String,
    pub branch: String,
    pub base: String,
    /// `github`, `gitlab`, or `direct` for a direct merge; `None` until opened.
    pub platform: Option<String>,
    pub number: Option<f64>,
    pub url: Option<String>,
    pub state: String,
    pub rounds: f64,
    pub escalated: f64,
    pub feedback_bead_id: Option<String>,
    pub handled_review: Option<String>,
    pub handled_check: Option<String>,
    pub attempts: f64,
}

const PULL_COLUMNS: &str = "bead_id, source_bead_id, rig_id, branch, base, platform, number, url, state, rounds, escalated, feedback_bead_id, handled_review, handled_check, attempts";

/// The pull request the dashboard sees on a bead (its own, or its source's newest).
const PULL_JSON: &str = "json_object('bead_id', bead_id, 'source_bead_id', source_bead_id, 'platform', platform, 'number', number, 'url', url, 'state', state, 'branch', branch, 'base', base, 'head_sha', head_sha, 'checks', checks, 'failing_check', failing_check, 'review_decision', review_decision, 'author', author, 'feedback_rounds', rounds, 'feedback_bead_id', feedback_bead_id, 'error', error, 'last_synced_at', CASE WHEN last_synced_at IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', last_synced_at / 1000.0, 'unixepoch') END)";

/// A new pull request to open for `source`'s branch (or, with `platform` `direct`, a branch to
/// merge), due now.
#[allow(clippy::too_many_arguments)]
pub fn insert_pull(
    sql: &SqlStorage,
    bead: &str,
    source: &str,
    rig: &str,
    branch: &str,
    base: &str,
    platform: Option<&str>,
    now_ms: u64,
) -> Reply<()> {
    exec(
        sql,
        "INSERT INTO pull_requests (bead_id, source_bead_id, rig_id, branch, base, platform, state, next_sync_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 'opening', ?, ?)",
        vec![
            bead.into(),
            source.into(),
            rig.into(),
            branch.into(),
            base.into(),
            platform.into(),
            int(now_ms),
            int(now_ms),
        ],
    )
}

pub fn pull(sql: &SqlStorage, bead: &str) -> Reply<Option<PullRow>> {
    first(
        sql,
        &format!("SELECT {PULL_COLUMNS} FROM pull_requests WHERE bead_id = ?"),
        vec![bead.into()],
    )
}

/// The pull request whose feedback (or conflict) bead `bead` is, followed or not: such a bead's
/// work is never a review of its own.
pub fn pull_of_feedback(sql: &SqlStorage, bead: &str) -> Reply<Option<PullRow>> {
    first(
        sql,
        &format!("SELECT {PULL_COLUMNS} FROM pull_requests WHERE feedback_bead_id = ? ORDER BY created_at DESC LIMIT 1"),
        vec![bead.into()],
    )
}

/// Followed pull requests whose time has come, oldest due first.
pub fn due_pulls(sql: &SqlStorage, now_ms: u64, limit: u32) -> Reply<Vec<PullRow>> {
    rows(
        sql,
        &format!("SELECT {PULL_COLUMNS} FROM pull_requests WHERE state IN ('opening', 'open') AND next_sync_at <= ? ORDER BY next_sync_at LIMIT ?"),
        vec![int(now_ms), i64::from(limit).into()],
    )
}

/// When the next followed pull request is due, if the town follows any.
pub fn next_pull_due(sql: &SqlStorage) -> Reply<Option<u64>> {
    #[derive(Deserialize)]
    struct Due {
        due: Option<f64>,
    }
    Ok(first::<Due>(
        sql,
        "SELECT MIN(next_sync_at) AS due FROM pull_requests WHERE state IN ('opening', 'open')",
        vec![],
    )?
    .and_then(|d| d.due)
    .map(|d| d as u64))
}

/// The pull request is due again at `at_ms`.
pub fn pull_due_at(sql: &SqlStorage, bead: &str, at_ms: u64) -> Reply<()> {
    exec(
        sql,
        "UPDATE pull_requests SET next_sync_at = ? WHERE bead_id = ?",
        vec![int(at_ms), bead.into()],
    )
}

/// Opened (or adopted) on the provider: followed from now on.
#[allow(clippy::too_many_arguments)]
pub fn pull_opened(
    sql: &SqlStorage,
    bead: &str,
    platform: &str,
    number: u64,
    url: &str,
    author: &str,
    next_ms: u64,
    now_ms: u64,
) -> Reply<()> {
    exec(
        sql,
        "UPDATE pull_requests SET state = 'open', platform = ?, number = ?, url = ?, author = ?, error = NULL, attempts = 0, next_sync_at = ?, last_synced_at = ? WHERE bead_id = ?",
        vec![
            platform.into(),
            int(number),
            url.into(),
            author.into(),
            int(next_ms),
            int(now_ms),
            bead.into(),
        ],
    )
}

/// The provider failed: tried again at `next_ms`, the reason kept for the dashboard.
pub fn pull_retry(
    sql: &SqlStorage,
    bead: &str,
    attempts: u32,
    error: &str,
    next_ms: u64,
) -> Reply<()> {
    exec(
        sql,
        "UPDATE pull_requests SET attempts = ?, error = ?, next_sync_at = ? WHERE bead_id = ?",
        vec![
            i64::from(attempts).into(),
            error.into(),
            int(next_ms),
            bead.into(),
        ],
    )
}

/// No longer followed: `state` (merged, closed, failed, detached), with the reason if any.
pub fn pull_ended(
    sql: &SqlStorage,
    bead: &str,
    state: &str,
    error: Option<&str>,
    now_ms: u64,
) -> Reply<()> {
    exec(
        sql,
        "UPDATE pull_requests SET state = ?, error = COALESCE(?, error), last_synced_at = ? WHERE bead_id = ?",
        vec![state.into(), error.into(), int(now_ms), bead.into()],
    )
}

/// What a read found of a pull request still open.
#[allow(clippy::too_many_arguments)]
pub fn pull_synced(
    sql: &SqlStorage,
    bead: &str,
    head_sha: Option<&str>,
    checks: &str,
    failing_check: Option<&str>,
    review_decision: Option<&str>,
    next_ms: u64,
    now_ms: u64,
) -> Reply<()> {
    exec(
        sql,
        "UPDATE pull_requests SET head_sha = ?, checks = ?, failing_check = ?, review_decision = ?, error = NULL, attempts = 0, next_sync_at = ?, last_synced_at = ? WHERE bead_id = ?",
        vec![
            head_sha.into(),
            checks.into(),
            failing_check.into(),
            review_decision.into(),
            int(next_ms),
            int(now_ms),
            bead.into(),
        ],
    )
}

/// A feedback round began (`feedback`: its bead), answering a review (`review`) or a failing
/// head (`check`); or, with `escalated`, the rounds were spent and a human was asked.
pub fn pull_feedback(
    sql: &SqlStorage,
    bead: &str,
    feedback: Option<&str>,
    review: Option<&str>,
    check: Option<&str>,
    escalated: bool,
) -> Reply<()> {
    exec(
        sql,
        "UPDATE pull_requests SET rounds = rounds + ?, feedback_bead_id = COALESCE(?, feedback_bead_id), handled_review = COALESCE(?, handled_review), handled_check = COALESCE(?, handled_check), escalated = MAX(escalated, ?) WHERE bead_id = ?",
        vec![
            i64::from(feedback.is_some()).into(),
            feedback.into(),
            review.into(),
            check.into(),
            i64::from(escalated).into(),
            bead.into(),
        ],
    )
}

/// Followed pull requests of `bead` (their source bead, or their merge request bead), which a
/// user closed, reopened or deleted by hand: no longer the refinery's.
pub fn detach_pulls_of(sql: &SqlStorage, bead: &str, now_ms: u64) -> Reply<()> {
    exec(
        sql,
        "UPDATE pull_requests SET state = 'detached', last_synced_at = ? WHERE (source_bead_id = ? OR bead_id = ?) AND state IN ('opening', 'open')",
        vec![int(now_ms), bead.into(), bead.into()],
    )
}

/// The bead's pull request as JSON: its own (a merge request) or its source's newest.
pub fn pull_json_of(sql: &SqlStorage, bead: &str) -> Reply<Option<String>> {
    json_text(
        sql,
        &format!("SELECT {PULL_JSON} AS j FROM pull_requests WHERE bead_id = ? OR source_bead_id = ? ORDER BY bead_id = ? DESC, created_at DESC LIMIT 1"),
        vec![bead.into(), bead.into(), bead.into()],
    )
}

/// The branch the town chose for a bead's work, if it chose one.
pub fn set_work_branch(sql: &SqlStorage, bead: &str, branch: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET work_branch = ? WHERE id = ?",
        vec![branch.into(), bead.into()],
    )
}

/// The source bead records its pull request's URL.
pub fn set_pr_url(sql: &SqlStorage, bead: &str, url: &str, now: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE beads SET metadata = json_set(metadata, '$.pr_url', ?), updated_at = ? WHERE id = ?",
        vec![url.into(), now.into(), bead.into()],
    )
}

/// The newest bead and how many have closed: a change across a refinery run means it made work
/// (a feedback or conflict bead) or landed some (a merge may free a convoy's next bead).
pub fn work_marker(sql: &SqlStorage) -> Reply<(u64, u64)> {
    #[derive(Deserialize)]
    struct Marker {
        newest: Option<f64>,
        closed: Option<f64>,
    }
    Ok(first::<Marker>(
        sql,
        "SELECT MAX(seq) AS newest, SUM(status = 'closed') AS closed FROM beads",
        vec![],
    )?
    .map_or((0, 0), |m| {
        (
            m.newest.unwrap_or(0.0) as u64,
            m.closed.unwrap_or(0.0) as u64,
        )
    }))
}

/// The branch the town chose for a bead's work, if it chose one.
pub fn work_branch_of(sql: &SqlStorage, bead: &str) -> Reply<Option<String>> {
    #[derive(Deserialize)]
    struct Branch {
        work_branch: Option<String>,
    }
    Ok(first::<Branch>(
        sql,
        "SELECT work_branch FROM beads WHERE id = ?",
        vec![bead.into()],
    )?
    .and_then(|b| b.work_branch))
}

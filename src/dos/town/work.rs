//! The work loop of a town: beads and their event log, dispatch of open issues to polecats in
//! the container, the agents' callbacks, and patrol. The decisions (backoff, the breaker, crash
//! loops, idleness) are `gastown_core::policy`'s; this file applies them to storage.
//!
//! Dispatch runs only in the alarm, so there is one dispatcher. Everything it claims (the bead
//! in progress, the agent working) is written before the container is called, and what it
//! writes after the call is conditional on the rows still being as it left them: an agent may
//! call `done` before its start has even been answered, and a user may close the bead meanwhile.

use super::{Meta, TownDO};
use crate::config;
use crate::storage::{bump_meta, count, exec, first, json_text, meta, rows, set_meta, RIG_COLUMNS};
use gastown_core::agent_settings::{effective_model, Role};
use gastown_core::authz::ContainerCredential;
use gastown_core::beads::{
    Bead, BeadDetail, BeadFilter, BeadPatch, BeadStatus, BeadType, NewBead, UserStatus,
    BEAD_EVENT_JSON, BEAD_JSON,
};
use gastown_core::control::{
    AgentBead, AgentDoneCallback, AgentStartBody, ALLOW_LOCAL_GIT_ENV, MAX_CALLBACK_TEXT,
};
use gastown_core::error::ApiError;
use gastown_core::ids::{AgentId, BeadId, RigId};
use gastown_core::model::{Agent, Rig, Town, TownStatus};
use gastown_core::page::Page;
use gastown_core::policy::{self, Breaker, DispatchRetry};
use gastown_core::protocol::container::{self as c, AgentStarted};
use gastown_core::protocol::Json;
use gastown_core::time::rfc3339;
use gastown_core::town_config::{MergeStrategy, TownConfig};
use serde::Deserialize;
use worker::{console_error, SqlStorage, SqlStorageValue};

type Reply<T> = Result<T, ApiError>;

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

fn bead_not_found() -> ApiError {
    ApiError::NotFound("bead not found in this town".into())
}

fn now_text() -> String {
    rfc3339(config::now_ms())
}

/// One bead, decoded (the few places that need its fields).
fn bead(sql: &SqlStorage, id: &str) -> Reply<Option<Bead>> {
    crate::storage::json_record(sql, BEAD_JSON, "beads", id)
}

/// Appends to a bead's event log.
fn event(
    sql: &SqlStorage,
    bead_id: &str,
    kind: &str,
    actor: &Actor<'_>,
    message: Option<&str>,
) -> Reply<()> {
    let now = config::now_ms();
    exec(
        sql,
        "INSERT INTO bead_events (bead_id, kind, actor, message, created_at, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            bead_id.into(),
            kind.into(),
            actor.label().into(),
            message.into(),
            rfc3339(now).into(),
            crate::storage::int(now),
        ],
    )
}

/// An agent stops working: idle again, with no bead.
fn free_agent(sql: &SqlStorage, agent_id: &str) -> Reply<()> {
    exec(
        sql,
        "UPDATE agents SET status = 'idle', current_bead_id = NULL WHERE id = ?",
        vec![agent_id.into()],
    )
}

/// A callback's free text: at most [`MAX_CALLBACK_TEXT`] characters, printable but for
/// newlines and tabs.
fn callback_text(field: &str, text: &str) -> Reply<()> {
    if text.chars().count() > MAX_CALLBACK_TEXT {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_CALLBACK_TEXT} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// The branch an agent pushes its work to.
fn work_branch(agent_name: &str, bead_id: &str) -> String {
    let short: String = bead_id.chars().take(8).collect();
    format!("gastown/{agent_name}/{short}")
}

#[derive(Deserialize)]
struct Candidate {
    id: String,
    title: String,
    body: String,
    rig_id: String,
    dispatch_attempts: f64,
}

#[derive(Deserialize)]
struct AgentRow {
    id: String,
    name: String,
}

impl TownDO {
    fn breaker(&self) -> Reply<Breaker> {
        let sql = self.sql();
        Ok(Breaker {
            failures: u32::try_from(meta(&sql, Meta::BreakerFailures)?.unwrap_or(0))
                .unwrap_or(u32::MAX),
            open_until_ms: meta(&sql, Meta::BreakerOpenUntil)?.unwrap_or(0),
        })
    }

    fn set_breaker(&self, breaker: Breaker) -> Reply<()> {
        let sql = self.sql();
        set_meta(&sql, Meta::BreakerFailures, u64::from(breaker.failures))?;
        set_meta(&sql, Meta::BreakerOpenUntil, breaker.open_until_ms)
    }

    /// Open work (an issue waiting or in progress) or a working agent.
    pub(super) fn has_work(&self) -> Reply<bool> {
        let sql = self.sql();
        Ok(crate::storage::exists(
            &sql,
            "SELECT 1 FROM beads WHERE type = 'issue' AND status IN ('open', 'in_progress') LIMIT 1",
            vec![],
        )? || crate::storage::exists(
            &sql,
            "SELECT 1 FROM agents WHERE status = 'working' LIMIT 1",
            vec![],
        )?)
    }

    /// Work arrived: the alarm comes at once instead of at the idle cadence.
    async fn kick(&self) -> Reply<()> {
        let storage = self.state.storage();
        let pending = storage.get_alarm().await.map_err(ApiError::internal)?;
        let soon = i64::try_from(config::now_ms() + 50).unwrap_or(i64::MAX);
        if pending.is_none_or(|at| at > soon) {
            storage.set_alarm(50).await.map_err(ApiError::internal)?;
        }
        Ok(())
    }

    /// The agent a callback speaks for: registered, of the route's rig (the mayor belongs to
    /// none and may report from any of the town's), with the caller's token admitted.
    pub(super) fn callback_agent(
        &self,
        credential: ContainerCredential,
        rig_id: &RigId,
        agent_id: &AgentId,
    ) -> Reply<Agent> {
        let town = self.require_town()?;
        self.require_active(&town)?;
        self.admit(credential)?;
        let sql = self.sql();
        if !crate::storage::exists(
            &sql,
            "SELECT 1 FROM rigs WHERE id = ?",
            vec![rig_id.as_str().into()],
        )? {
            return Err(ApiError::NotFound("rig not found in this town".into()));
        }
        let known = super::ops::agent(&sql, agent_id.as_str())?
            .ok_or_else(|| ApiError::NotFound("agent not found in this town".into()))?;
        if known.rig_id.as_ref().is_some_and(|r| r != rig_id) {
            return Err(ApiError::NotFound("agent not found in this rig".into()));
        }
        Ok(known)
    }

    /// Any sign of life from an agent.
    pub(super) fn touch_agent(&self, agent_id: &AgentId) -> Reply<()> {
        let now = config::now_ms();
        exec(
            &self.sql(),
            "UPDATE agents SET last_activity_at = ?, last_activity_ms = ?, heartbeats = heartbeats + 1 WHERE id = ?",
            vec![
                rfc3339(now).into(),
                crate::storage::int(now),
                agent_id.as_str().into(),
            ],
        )
    }

    pub(super) async fn list_beads_page(
        &self,
        filter: &BeadFilter,
        page: &Page,
    ) -> Reply<Json<Vec<Bead>>> {
        self.require_town()?;
        let sql = self.sql();
        let after = match &page.after {
            None => 0,
            Some(id) => {
                #[derive(Deserialize)]
                struct Seq {
                    seq: f64,
                }
                first::<Seq>(
                    &sql,
                    "SELECT seq FROM beads WHERE id = ?",
                    vec![id.as_str().into()],
                )?
                .map(|s| s.seq as i64)
                .ok_or_else(|| ApiError::invalid("after", "does not name a bead of this town"))?
            }
        };
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
        let text = json_text(
            &sql,
            &format!(
                "SELECT COALESCE(json_group_array({BEAD_JSON} ORDER BY seq), '[]') AS j FROM (SELECT * FROM beads WHERE {clauses} ORDER BY seq LIMIT ?)"
            ),
            bindings,
        )?;
        Json::from_text(text.unwrap_or_else(|| "[]".to_owned()))
    }

    pub(super) async fn create_bead_row(&self, new: NewBead, created_by: &str) -> Reply<Bead> {
        self.require_town()?;
        let sql = self.sql();
        if let Some(rig) = &new.rig_id {
            if !crate::storage::exists(
                &sql,
                "SELECT 1 FROM rigs WHERE id = ?",
                vec![rig.as_str().into()],
            )? {
                return Err(ApiError::invalid("rig_id", "is not a rig of this town"));
            }
        }
        let id = self.insert_bead(&new, created_by)?;
        event(&sql, &id, "created", &Actor::User(created_by), None)?;
        if new.bead_type == BeadType::Issue {
            self.kick().await?;
        }
        bead(&sql, &id)?.ok_or_else(|| ApiError::internal("bead row missing"))
    }

    fn insert_bead(&self, new: &NewBead, created_by: &str) -> Reply<String> {
        let id = config::new_id()?;
        let now = now_text();
        let labels = serde_json::to_string(&new.labels).map_err(ApiError::internal)?;
        exec(
            &self.sql(),
            "INSERT INTO beads (id, type, status, title, body, rig_id, priority, labels, metadata, created_by, created_at, updated_at) VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                id.as_str().into(),
                new.bead_type.as_str().into(),
                new.title.as_str().into(),
                new.body.as_str().into(),
                new.rig_id.as_ref().map(RigId::as_str).into(),
                i64::from(new.priority).into(),
                labels.into(),
                new.metadata.as_str().into(),
                created_by.into(),
                now.as_str().into(),
                now.into(),
            ],
        )?;
        Ok(id)
    }

    pub(super) fn bead_detail(&self, bead_id: &BeadId) -> Reply<Json<BeadDetail>> {
        self.require_town()?;
        let sql = self.sql();
        let bead = json_text(
            &sql,
            &format!("SELECT {BEAD_JSON} AS j FROM beads WHERE id = ?"),
            vec![bead_id.as_str().into()],
        )?
        .ok_or_else(bead_not_found)?;
        let events = json_text(
            &sql,
            &format!("SELECT COALESCE(json_group_array({BEAD_EVENT_JSON} ORDER BY id), '[]') AS j FROM bead_events WHERE bead_id = ?"),
            vec![bead_id.as_str().into()],
        )?
        .unwrap_or_else(|| "[]".to_owned());
        // `{...bead}` + `"events": [...]`: the bead's object is SQLite's, never empty.
        let body = bead
            .trim_end()
            .strip_suffix('}')
            .ok_or_else(|| ApiError::internal("bead json"))?;
        Json::from_text(format!("{body},\"events\":{events}}}"))
    }

    pub(super) async fn patch_bead_row(
        &self,
        bead_id: &BeadId,
        patch: BeadPatch,
        user_id: &str,
    ) -> Reply<Bead> {
        let town = self.require_town()?;
        let sql = self.sql();
        let current = bead(&sql, bead_id.as_str())?.ok_or_else(bead_not_found)?;
        let actor = Actor::User(user_id);
        let now = now_text();
        let mut stop_agent = None;
        let labels = patch
            .labels
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(ApiError::internal)?;
        exec(
            &sql,
            "UPDATE beads SET title = COALESCE(?, title), body = COALESCE(?, body), priority = COALESCE(?, priority), labels = COALESCE(?, labels) WHERE id = ?",
            vec![
                patch.title.as_deref().into(),
                patch.body.as_deref().into(),
                patch.priority.map(i64::from).into(),
                labels.into(),
                bead_id.as_str().into(),
            ],
        )?;
        if patch.title.is_some()
            || patch.body.is_some()
            || patch.priority.is_some()
            || patch.labels.is_some()
        {
            event(&sql, bead_id.as_str(), "updated", &actor, None)?;
        }
        match patch.status {
            Some(UserStatus::Closed) if current.status != BeadStatus::Closed => {
                if current.status == BeadStatus::InProgress {
                    stop_agent = current.assignee_agent_id.clone();
                }
                exec(
                    &sql,
                    "UPDATE beads SET status = 'closed', closed_at = ? WHERE id = ?",
                    vec![now.as_str().into(), bead_id.as_str().into()],
                )?;
                event(&sql, bead_id.as_str(), "closed", &actor, None)?;
            }
            Some(UserStatus::Open) if current.status != BeadStatus::Open => {
                if current.status == BeadStatus::InProgress {
                    return Err(ApiError::Conflict(
                        "the bead is in progress; close it first".into(),
                    ));
                }
                exec(
                    &sql,
                    "UPDATE beads SET status = 'open', assignee_agent_id = NULL, closed_at = NULL, failure_reason = NULL, dispatch_attempts = 0, next_dispatch_at = 0 WHERE id = ?",
                    vec![bead_id.as_str().into()],
                )?;
                event(&sql, bead_id.as_str(), "reopened", &actor, None)?;
            }
            _ => {}
        }
        exec(
            &sql,
            "UPDATE beads SET updated_at = ? WHERE id = ?",
            vec![now.into(), bead_id.as_str().into()],
        )?;
        if let Some(agent) = &stop_agent {
            free_agent(&sql, agent.as_str())?;
            self.stop_agent_process(&town, agent.as_str()).await;
        }
        if patch.status == Some(UserStatus::Open) && current.bead_type == BeadType::Issue {
            self.kick().await?;
        }
        bead(&self.sql(), bead_id.as_str())?.ok_or_else(bead_not_found)
    }

    pub(super) async fn delete_bead_row(&self, bead_id: &BeadId) -> Reply<()> {
        let town = self.require_town()?;
        let sql = self.sql();
        let current = bead(&sql, bead_id.as_str())?.ok_or_else(bead_not_found)?;
        exec(
            &sql,
            "DELETE FROM bead_events WHERE bead_id = ?",
            vec![bead_id.as_str().into()],
        )?;
        exec(
            &sql,
            "DELETE FROM beads WHERE id = ?",
            vec![bead_id.as_str().into()],
        )?;
        if current.status == BeadStatus::InProgress {
            if let Some(agent) = current.assignee_agent_id {
                exec(
                    &sql,
                    "UPDATE agents SET status = 'idle', current_bead_id = NULL WHERE id = ? AND current_bead_id = ?",
                    vec![agent.as_str().into(), bead_id.as_str().into()],
                )?;
                self.stop_agent_process(&town, agent.as_str()).await;
            }
        }
        Ok(())
    }

    /// Best effort: the agent's process goes; a container that is down has none.
    async fn stop_agent_process(&self, town: &Town, agent_id: &str) {
        let stopped = match self.container(&town.id) {
            Ok(stub) => stub
                .call(c::StopAgent {
                    town_id: town.id.clone(),
                    agent_id: agent_id.to_owned(),
                })
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = stopped {
            console_error!("town {}: stopping agent {agent_id}: {e}", town.id);
        }
    }

    pub(super) fn record_status(&self, agent: &Agent, message: &str) -> Reply<()> {
        callback_text("message", message)?;
        self.touch_agent(&agent.id)?;
        if let Some(bead_id) = &agent.current_bead_id {
            event(
                &self.sql(),
                bead_id,
                "status",
                &Actor::Agent(&agent.id),
                Some(message),
            )?;
        }
        Ok(())
    }

    pub(super) fn finish(&self, agent: &Agent, done: &AgentDoneCallback) -> Reply<Bead> {
        callback_text("summary", &done.summary)?;
        if let Some(branch) = &done.branch {
            if branch.is_empty()
                || branch.len() > 255
                || branch.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(ApiError::invalid("branch", "must be a branch name"));
            }
        }
        if let Some(url) = &done.pr_url {
            if url.len() > 2000
                || !(url.starts_with("https://") || url.starts_with("http://"))
                || url.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(ApiError::invalid("pr_url", "must be an http(s) URL"));
            }
        }
        let sql = self.sql();
        let not_working = || ApiError::Conflict("this agent has no bead in progress".into());
        let bead_id = agent.current_bead_id.as_deref().ok_or_else(not_working)?;
        let current = bead(&sql, bead_id)?.ok_or_else(not_working)?;
        if current.status != BeadStatus::InProgress
            || current.assignee_agent_id.as_ref() != Some(&agent.id)
        {
            return Err(not_working());
        }
        let town = self.require_town()?;
        let config = self.config(&town.id)?;
        let strategy = current
            .rig_id
            .as_ref()
            .and_then(|r| config.rig_overrides.get(r.as_str()))
            .and_then(|o| o.merge_strategy)
            .or(config.merge_strategy);
        let in_review = done.pr_url.is_some() && strategy == Some(MergeStrategy::PullRequest);
        let now = now_text();
        exec(
            &sql,
            "UPDATE beads SET status = ?, closed_at = ?, updated_at = ?, metadata = json_set(metadata, '$.branch', ?, '$.pr_url', ?, '$.summary', ?) WHERE id = ?",
            vec![
                if in_review { "in_review" } else { "closed" }.into(),
                (!in_review).then(|| now.clone()).into(),
                now.into(),
                done.branch.as_deref().into(),
                done.pr_url.as_deref().into(),
                done.summary.as_str().into(),
                bead_id.into(),
            ],
        )?;
        event(
            &sql,
            bead_id,
            if in_review { "in_review" } else { "done" },
            &Actor::Agent(&agent.id),
            Some(&done.summary),
        )?;
        self.touch_agent(&agent.id)?;
        free_agent(&sql, agent.id.as_str())?;
        bead(&sql, bead_id)?.ok_or_else(bead_not_found)
    }

    /// Working agents without a heartbeat for `AGENT_STALL_MS` are stalled; their beads open
    /// again, or fail into an escalation when they keep failing (a crash loop).
    pub(super) async fn patrol(&self, town: &Town) -> Reply<()> {
        let settings = config::get(&self.env).work.clone();
        let now = config::now_ms();
        let sql = self.sql();
        #[derive(Deserialize)]
        struct Stale {
            id: String,
            current_bead_id: Option<String>,
        }
        let stale = rows::<Stale>(
            &sql,
            "SELECT id, current_bead_id FROM agents WHERE status = 'working' AND COALESCE(last_activity_ms, 0) < ?",
            vec![crate::storage::int(now.saturating_sub(settings.stall_ms))],
        )?;
        for agent in &stale {
            exec(
                &sql,
                "UPDATE agents SET status = 'stalled', current_bead_id = NULL WHERE id = ?",
                vec![agent.id.as_str().into()],
            )?;
            bump_meta(&sql, Meta::Stalls)?;
            let Some(bead_id) = &agent.current_bead_id else {
                continue;
            };
            let Some(current) = bead(&sql, bead_id)? else {
                continue;
            };
            if current.status != BeadStatus::InProgress
                || current.assignee_agent_id.as_ref().map(AgentId::as_str)
                    != Some(agent.id.as_str())
            {
                continue;
            }
            event(
                &sql,
                bead_id,
                "stalled",
                &Actor::Town,
                Some("no heartbeat from its agent"),
            )?;
            let failures = count(
                &sql,
                "SELECT COUNT(*) AS n FROM bead_events WHERE bead_id = ? AND kind = 'stalled' AND created_ms > ?",
                vec![
                    bead_id.as_str().into(),
                    crate::storage::int(now.saturating_sub(policy::CRASH_LOOP_WINDOW_MS)),
                ],
            )?;
            if policy::is_crash_loop(failures) {
                let reason = format!(
                    "crash loop: its agent failed {failures} times within {} minutes; escalated instead of restarted",
                    policy::CRASH_LOOP_WINDOW_MS / 60_000
                );
                self.fail_bead(bead_id, &reason)?;
                self.escalate(&current, &reason)?;
            } else if current.dispatch_attempts >= policy::MAX_DISPATCH_ATTEMPTS {
                self.fail_bead(bead_id, &format!(
                    "its agent stopped reporting on each of {} attempts. Reopen the bead to try again.",
                    current.dispatch_attempts
                ))?;
            } else {
                exec(
                    &sql,
                    "UPDATE beads SET status = 'open', assignee_agent_id = NULL, updated_at = ? WHERE id = ?",
                    vec![now_text().into(), bead_id.as_str().into()],
                )?;
                event(
                    &sql,
                    bead_id,
                    "reopened",
                    &Actor::Town,
                    Some("its agent stalled"),
                )?;
            }
        }
        for agent in stale {
            self.stop_agent_process(town, &agent.id).await;
        }
        self.still_here()
    }

    /// The town stops: its agents stop with the container, so their beads go back to open
    /// (no agent failed: this counts toward no crash loop) and the agents are idle.
    pub(super) fn release_work(&self, reason: &str) -> Reply<()> {
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        let sql = self.sql();
        let running = rows::<Id>(
            &sql,
            "SELECT id FROM beads WHERE status = 'in_progress'",
            vec![],
        )?;
        for bead in running {
            exec(
                &sql,
                "UPDATE beads SET status = 'open', assignee_agent_id = NULL, updated_at = ? WHERE id = ?",
                vec![now_text().into(), bead.id.as_str().into()],
            )?;
            event(&sql, &bead.id, "reopened", &Actor::Town, Some(reason))?;
        }
        exec(
            &sql,
            "UPDATE agents SET status = 'idle', current_bead_id = NULL WHERE status IN ('working', 'stalled')",
            vec![],
        )
    }

    /// The rig was removed: its open and in-progress beads fail.
    pub(super) fn fail_rig_work(&self, rig_id: &RigId) -> Reply<()> {
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        let waiting = rows::<Id>(
            &self.sql(),
            "SELECT id FROM beads WHERE rig_id = ? AND status IN ('open', 'in_progress')",
            vec![rig_id.as_str().into()],
        )?;
        for bead in waiting {
            self.fail_bead(&bead.id, "its rig was removed from the town")?;
        }
        Ok(())
    }

    fn fail_bead(&self, bead_id: &str, reason: &str) -> Reply<()> {
        let sql = self.sql();
        exec(
            &sql,
            "UPDATE beads SET status = 'failed', assignee_agent_id = NULL, failure_reason = ?, updated_at = ? WHERE id = ?",
            vec![reason.into(), now_text().into(), bead_id.into()],
        )?;
        event(&sql, bead_id, "failed", &Actor::Town, Some(reason))
    }

    /// An escalation bead for a human, pointing at the bead that failed.
    fn escalate(&self, failed: &Bead, reason: &str) -> Reply<()> {
        let metadata = serde_json::json!({ "bead_id": failed.id }).to_string();
        let title: String = format!("Escalation: {}", failed.title)
            .chars()
            .take(gastown_core::beads::MAX_TITLE)
            .collect();
        let new = NewBead {
            bead_type: BeadType::Escalation,
            title,
            body: format!("Bead {} failed: {reason}", failed.id),
            rig_id: failed.rig_id.clone(),
            priority: 0,
            labels: vec!["crash-loop".to_owned()],
            metadata,
        };
        let id = self.insert_bead(&new, "town")?;
        let sql = self.sql();
        event(
            &sql,
            &id,
            "created",
            &Actor::Town,
            Some(&format!("for bead {}", failed.id)),
        )?;
        event(
            &sql,
            &failed.id,
            "escalated",
            &Actor::Town,
            Some(&format!("escalation {id}")),
        )
    }

    /// Hands open issues to polecats: at most the rig's polecat limit working per rig, none
    /// while the breaker is open, one probe when it has been open.
    pub(super) async fn dispatch(&self, town: &Town) -> Reply<()> {
        let settings = config::get(&self.env).work.clone();
        let now = config::now_ms();
        let mut budget = match self.breaker()?.allowance(now) {
            Some(0) => return Ok(()),
            Some(n) => n,
            None => usize::MAX,
        };
        let config = self.config(&town.id)?;
        let candidates = rows::<Candidate>(
            &self.sql(),
            "SELECT id, title, body, rig_id, dispatch_attempts FROM beads WHERE status = 'open' AND type = 'issue' AND assignee_agent_id IS NULL AND next_dispatch_at <= ? ORDER BY priority, seq LIMIT 20",
            vec![crate::storage::int(now)],
        )?;
        for candidate in candidates {
            if budget == 0 {
                break;
            }
            let Some(rig) = first::<Rig>(
                &self.sql(),
                &format!("SELECT {RIG_COLUMNS} FROM rigs WHERE id = ?"),
                vec![candidate.rig_id.as_str().into()],
            )?
            else {
                self.fail_bead(&candidate.id, "its rig was removed from the town")?;
                continue;
            };
            let limit = config
                .rig_overrides
                .get(rig.id.as_str())
                .and_then(|o| o.max_polecats)
                .or(config.max_polecats_per_rig)
                .unwrap_or(settings.default_max_polecats);
            let working = count(
                &self.sql(),
                "SELECT COUNT(*) AS n FROM agents WHERE rig_id = ? AND status = 'working'",
                vec![rig.id.as_str().into()],
            )?;
            if working >= u64::from(limit) {
                continue;
            }
            let Some(agent) = self.polecat_for(&rig)? else {
                continue;
            };
            budget -= 1;
            let attempts = candidate.dispatch_attempts as u32 + 1;
            self.claim(&candidate.id, &agent, attempts)?;
            let started = self
                .start_agent(town, || {
                    self.agent_body(town, &config, &rig, &agent, &candidate)
                })
                .await;
            self.still_here()?;
            match started {
                Ok(()) => {
                    self.set_breaker(Breaker::default())?;
                    bump_meta(&self.sql(), Meta::Dispatches)?;
                }
                Err(error) => self.dispatch_failed(&candidate.id, &agent.id, attempts, &error)?,
            }
            // The town may have been stopped while the container was called: dispatch no more
            // (its start re-arms the loop, and patrol reopens what the stop cut short).
            if self.stored_status()? == TownStatus::Stopped {
                break;
            }
        }
        Ok(())
    }

    /// An idle (or stalled) polecat of the rig, or a new one within the town's agent quota.
    fn polecat_for(&self, rig: &Rig) -> Reply<Option<AgentRow>> {
        let sql = self.sql();
        if let Some(agent) = first::<AgentRow>(
            &sql,
            "SELECT id, name FROM agents WHERE rig_id = ? AND role = 'polecat' AND status IN ('idle', 'stalled') ORDER BY status, created_at LIMIT 1",
            vec![rig.id.as_str().into()],
        )? {
            return Ok(Some(agent));
        }
        let n = count(
            &sql,
            "SELECT COUNT(*) AS n FROM agents WHERE rig_id = ? AND role = 'polecat'",
            vec![rig.id.as_str().into()],
        )?;
        match self.insert_agent(Role::Polecat, Some(&rig.id), &format!("polecat-{}", n + 1)) {
            Ok(agent) => Ok(Some(AgentRow {
                id: agent.id.as_str().to_owned(),
                name: agent.name,
            })),
            // At the quota: this bead waits for an agent to come free.
            Err(ApiError::QuotaExceeded { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The bead in progress with the agent, the agent working on it: before the container is
    /// called, so the agent's first callback finds both.
    fn claim(&self, bead_id: &str, agent: &AgentRow, attempts: u32) -> Reply<()> {
        let sql = self.sql();
        let now = config::now_ms();
        exec(
            &sql,
            "UPDATE beads SET status = 'in_progress', assignee_agent_id = ?, dispatch_attempts = ?, updated_at = ? WHERE id = ?",
            vec![agent.id.as_str().into(), i64::from(attempts).into(), rfc3339(now).into(), bead_id.into()],
        )?;
        exec(
            &sql,
            "UPDATE agents SET status = 'working', current_bead_id = ?, dispatch_attempts = dispatch_attempts + 1, last_activity_at = ?, last_activity_ms = ? WHERE id = ?",
            vec![bead_id.into(), rfc3339(now).into(), crate::storage::int(now), agent.id.as_str().into()],
        )?;
        event(
            &sql,
            bead_id,
            "dispatched",
            &Actor::Town,
            Some(&format!("to {} (attempt {attempts})", agent.name)),
        )
    }

    /// A failed start: the bead opens again after its backoff, or fails at the attempt cap;
    /// the breaker counts it. Only if the rows are still as the claim left them.
    fn dispatch_failed(
        &self,
        bead_id: &str,
        agent_id: &str,
        attempts: u32,
        error: &str,
    ) -> Reply<()> {
        let settings = config::get(&self.env).work.clone();
        let now = config::now_ms();
        let sql = self.sql();
        self.set_breaker(self.breaker()?.failed(now, settings.breaker_ms))?;
        bump_meta(&sql, Meta::DispatchFailures)?;
        exec(
            &sql,
            "UPDATE agents SET status = 'idle', current_bead_id = NULL WHERE id = ? AND current_bead_id = ?",
            vec![agent_id.into(), bead_id.into()],
        )?;
        let Some(current) = bead(&sql, bead_id)? else {
            return Ok(());
        };
        if current.status != BeadStatus::InProgress
            || current.assignee_agent_id.as_ref().map(AgentId::as_str) != Some(agent_id)
        {
            return Ok(());
        }
        event(&sql, bead_id, "dispatch_failed", &Actor::Town, Some(error))?;
        match policy::after_dispatch_failure(attempts, now, settings.retry_base_ms, settings.retry_max_ms, error) {
            DispatchRetry::RetryAt(at) => exec(
                &sql,
                "UPDATE beads SET status = 'open', assignee_agent_id = NULL, next_dispatch_at = ?, updated_at = ? WHERE id = ?",
                vec![crate::storage::int(at), rfc3339(now).into(), bead_id.into()],
            ),
            DispatchRetry::Fail(reason) => self.fail_bead(bead_id, &reason),
        }
    }

    /// Starts the agent in the container, starting the container first (fresh tokens, current
    /// env) if it is not running, or no longer knows the town. `body` builds the start's body
    /// once the container runs, so it carries the tokens that start minted.
    async fn start_agent(
        &self,
        town: &Town,
        body: impl Fn() -> Reply<AgentStartBody>,
    ) -> Result<(), String> {
        let internal = |e: ApiError| {
            console_error!("town {}: dispatch: {e}", town.id);
            "the town could not prepare the agent".to_owned()
        };
        if !self.container_started().map_err(internal)? {
            self.start_for_dispatch(town).await?;
        }
        for attempt in 0..2 {
            let body = body().map_err(internal)?;
            let started = self
                .container(&town.id)
                .map_err(internal)?
                .call(c::StartAgent {
                    town_id: town.id.clone(),
                    agent: body,
                })
                .await
                .map_err(internal)?;
            self.still_here().map_err(internal)?;
            match started {
                AgentStarted::Started => return Ok(()),
                AgentStarted::Failed { error } => return Err(error),
                AgentStarted::TownUnknown if attempt == 0 => self.start_for_dispatch(town).await?,
                AgentStarted::TownUnknown => {}
            }
        }
        Err("the container does not know the town after a restart".into())
    }

    async fn start_for_dispatch(&self, town: &Town) -> Result<(), String> {
        match self.push_start(town).await {
            Ok(pushed) if pushed.accepted => {
                set_meta(&self.sql(), Meta::WorkSeenAt, config::now_ms()).ok();
                Ok(())
            }
            Ok(_) => Err("the container did not start".into()),
            Err(e) => {
                console_error!("town {}: container start for dispatch: {e}", town.id);
                Err("the container could not be started".into())
            }
        }
    }

    /// What the control server needs to run one polecat on one bead. The env is the town's
    /// (with the current gateway token), plus a fresh container token the agent may start
    /// with (it reads the current one from its file on every call).
    fn agent_body(
        &self,
        town: &Town,
        config: &TownConfig,
        rig: &Rig,
        agent: &AgentRow,
        bead: &Candidate,
    ) -> Reply<AgentStartBody> {
        let settings = config::get(&self.env);
        let (mut env, _) = self.container_payload(config)?;
        let (token, _) = self.mint(town)?;
        env.insert("GASTOWN_CONTAINER_TOKEN".to_owned(), token);
        env.insert(
            "GASTOWN_HEARTBEAT_MS".to_owned(),
            (settings.work.stall_ms / 4).max(250).to_string(),
        );
        if settings.work.allow_local_git {
            env.insert(ALLOW_LOCAL_GIT_ENV.to_owned(), "1".to_owned());
        }
        Ok(AgentStartBody {
            town_id: town.id.as_str().to_owned(),
            agent_id: agent.id.clone(),
            role: Role::Polecat,
            name: agent.name.clone(),
            rig_id: Some(rig.id.as_str().to_owned()),
            bead: Some(AgentBead {
                id: bead.id.clone(),
                title: bead.title.clone(),
                body: bead.body.clone(),
            }),
            git_url: Some(rig.git_url.clone()),
            default_branch: Some(rig.default_branch.clone()),
            branch: Some(work_branch(&agent.name, &bead.id)),
            model: effective_model(config, Role::Polecat, Some(rig.id.as_str())).map(str::to_owned),
            worker_url: Some(settings.work.callback_url.clone()),
            env,
        })
    }

    /// The idle timeout passed: the container stops and its tokens are rotated away; the next
    /// dispatch starts it again with fresh ones.
    pub(super) async fn stop_idle_container(&self, town: &Town) -> Reply<()> {
        set_meta(&self.sql(), Meta::ContainerStarted, 0)?;
        self.advance_generation()?;
        bump_meta(&self.sql(), Meta::IdleStops)?;
        self.container(&town.id)?
            .call(c::Stop {
                town_id: town.id.clone(),
            })
            .await
            .map_err(super::gone_is_not_found)?;
        self.still_here()
    }
}

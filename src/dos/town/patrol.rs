//! Patrol and the work a town gives up: silent agents stalled (their beads reopened, failed, or
//! escalated as a crash loop: `transitions::on_stall`), running work handed back when the town
//! stops (`transitions::on_stop`), a removed rig's work failed, and the idle container stopped.

use super::store::{self, Actor};
use super::{gone_is_not_found, Meta, TownDO};
use crate::config;
use crate::storage::{bump_meta, set_meta};
use gastown_core::beads::{Bead, BeadEventKind, BeadStatus, BeadType, NewBead};
use gastown_core::control::Drained;
use gastown_core::error::ApiError;
use gastown_core::ids::RigId;
use gastown_core::model::{Agent, AgentStatus, Town, TownStatus};
use gastown_core::policy::CRASH_LOOP_WINDOW_MS;
use gastown_core::protocol::container as c;
use gastown_core::time::rfc3339;
use gastown_core::transitions::{self, StallOutcome};

type Reply<T> = Result<T, ApiError>;

impl TownDO {
    /// Whether the town has work: an issue waiting or running, or an agent working.
    pub(super) fn has_work(&self) -> Reply<bool> {
        let (issue, working) = store::work(&self.sql())?;
        Ok(transitions::has_work(issue, working) || self.mayor_has_pending()?)
    }

    /// Working agents without a heartbeat for `AGENT_STALL_MS` are stalled; their beads open
    /// again, or fail into an escalation when they keep failing (a crash loop).
    pub(super) async fn patrol(&self, town: &Town) -> Reply<()> {
        let settings = config::get(&self.env).work.clone();
        let now = config::now_ms();
        let sql = self.sql();
        let silent = store::silent_agents(&sql, now.saturating_sub(settings.stall_ms))?;
        let mayor = store::mayor(&sql)?.map(|m| m.id);
        for agent in &silent {
            bump_meta(&sql, Meta::Stalls)?;
            if mayor.as_ref().is_some_and(|m| m.as_str() == agent.id) {
                self.mayor_session_lost()?;
            }
            self.agent_lost(
                &agent.id,
                agent.current_bead_id.as_deref(),
                "no heartbeat from its agent",
                "its agent stalled",
                now,
            )?;
        }
        for agent in silent {
            self.stop_agent_process(town, &agent.id).await;
        }
        self.still_here()
    }

    /// An agent stopped working on its bead without finishing it: the agent is released as
    /// stalled, and its bead (if it still holds it) gets a `stalled` event saying `what`, then
    /// reopens (with `reopened` saying `why`), fails, or fails and escalates as
    /// [`transitions::on_stall`] decides from its recent stalls and attempts.
    pub(super) fn agent_lost(
        &self,
        agent: &str,
        bead: Option<&str>,
        what: &str,
        why: &str,
        now: u64,
    ) -> Reply<()> {
        let sql = self.sql();
        store::release_agent(&sql, agent, AgentStatus::Stalled)?;
        let Some(bead_id) = bead else {
            return Ok(());
        };
        let Some(current) = store::bead_held_by(&sql, bead_id, agent)? else {
            return Ok(());
        };
        store::event(
            &sql,
            bead_id,
            BeadEventKind::Stalled,
            &Actor::Town,
            Some(what),
            now,
        )?;
        let stalls = store::events_since(
            &sql,
            bead_id,
            BeadEventKind::Stalled,
            now.saturating_sub(CRASH_LOOP_WINDOW_MS),
        )?;
        match transitions::on_stall(stalls, current.dispatch_attempts) {
            StallOutcome::Escalate(reason) => {
                self.fail_bead(bead_id, &reason)?;
                self.escalate(&current, &reason, "crash-loop")?;
            }
            StallOutcome::Fail(reason) => self.fail_bead(bead_id, &reason)?,
            StallOutcome::Reopen => {
                store::hand_back_bead(&sql, bead_id, BeadStatus::Open, &rfc3339(now))?;
                store::event(
                    &sql,
                    bead_id,
                    BeadEventKind::Reopened,
                    &Actor::Town,
                    Some(why),
                    now,
                )?;
                store::settle_convoy_of(&sql, bead_id, now)?;
            }
        }
        Ok(())
    }

    /// An eviction drain stopped `agent` and saved its work to `drained.branch`: the agent is
    /// idle (it did not fail: no stall, nothing toward a crash loop), and its bead opens again
    /// to be resumed on that branch, not started over. A branch other than the one the agent
    /// was given is refused (422) and changes nothing.
    pub(super) fn agent_drained(&self, agent: &Agent, drained: &Drained) -> Reply<()> {
        let sql = self.sql();
        let Some(bead_id) = agent.current_bead_id.as_deref() else {
            return Ok(());
        };
        let assigned = store::work_branch_of(&sql, bead_id)?
            .unwrap_or_else(|| transitions::work_branch(&agent.name, bead_id));
        if drained.branch != assigned {
            return Err(ApiError::invalid(
                "drained",
                "branch is not the branch the agent was given",
            ));
        }
        let now = config::now_ms();
        store::release_agent(&sql, agent.id.as_str(), AgentStatus::Idle)?;
        if store::bead_held_by(&sql, bead_id, agent.id.as_str())?.is_none() {
            return Ok(());
        }
        store::set_work_branch(&sql, bead_id, &drained.branch)?;
        store::hand_back_bead(&sql, bead_id, BeadStatus::Open, &rfc3339(now))?;
        let saved = match (&drained.head, drained.pushed, &drained.error) {
            (Some(head), true, _) => format!(
                "its work was pushed to {} at {}",
                drained.branch,
                &head[..head.len().min(12)]
            ),
            (None, true, _) => format!("its work was pushed to {}", drained.branch),
            (_, false, Some(error)) => format!("its work could not be pushed: {error}"),
            (_, false, None) => format!("{} had nothing new to push", drained.branch),
        };
        store::event(
            &sql,
            bead_id,
            BeadEventKind::Reopened,
            &Actor::Town,
            Some(&format!(
                "its container was evicted; {saved}; it resumes on that branch"
            )),
            now,
        )?;
        bump_meta(&sql, Meta::Drains)?;
        store::settle_convoy_of(&sql, bead_id, now)
    }

    /// Stops everything (its work handed back with `reason`, every container token rotated
    /// away, no alarm, the container stopped) and leaves the town in `status`.
    pub(super) async fn halt(
        &self,
        mut town: Town,
        status: TownStatus,
        reason: &str,
    ) -> Reply<Town> {
        // The status first, so nothing that runs meanwhile starts or pushes anything.
        self.set_status(status)?;
        town.status = status;
        self.release_work(reason)?;
        self.mayor_session_lost()?;
        self.advance_generation()?;
        set_meta(&self.sql(), Meta::ContainerStarted, 0)?;
        self.state
            .storage()
            .delete_alarm()
            .await
            .map_err(ApiError::internal)?;
        self.container(&town.id)?
            .call(c::Stop {
                town_id: town.id.clone(),
            })
            .await
            .map_err(super::gone_is_not_found)?;
        self.still_here()?;
        Ok(town)
    }

    /// The town stops: its agents stop with the container, so their beads go back to open
    /// (no agent failed: this counts toward no crash loop) and the agents are idle.
    pub(super) fn release_work(&self, reason: &str) -> Reply<()> {
        let sql = self.sql();
        let now = config::now_ms();
        let back = transitions::on_stop();
        for bead in store::bead_ids_with_status(&sql, back.running)? {
            store::hand_back_bead(&sql, &bead, back.to, &rfc3339(now))?;
            store::event(&sql, &bead, back.event, &Actor::Town, Some(reason), now)?;
            store::settle_convoy_of(&sql, &bead, now)?;
        }
        store::release_agents(&sql, back.agents, back.agents_to)
    }

    /// The rig was removed: its open and in-progress beads fail.
    pub(super) fn fail_rig_work(&self, rig_id: &RigId) -> Reply<()> {
        for bead in store::unfinished_beads_of_rig(&self.sql(), rig_id)? {
            self.fail_bead(&bead, "its rig was removed from the town")?;
        }
        Ok(())
    }

    pub(super) fn fail_bead(&self, bead_id: &str, reason: &str) -> Reply<()> {
        let sql = self.sql();
        let now = config::now_ms();
        store::fail_bead(&sql, bead_id, reason, &rfc3339(now))?;
        store::settle_convoy_of(&sql, bead_id, now)?;
        store::event(
            &sql,
            bead_id,
            BeadEventKind::Failed,
            &Actor::Town,
            Some(reason),
            now,
        )
    }

    /// An escalation bead for a human (and the mayor), pointing at the bead that failed;
    /// `label` says why (`crash-loop`, `dispatch-failed`).
    pub(super) fn escalate(&self, failed: &Bead, reason: &str, label: &str) -> Reply<()> {
        self.raise_escalation(
            failed,
            &format!("Bead {} failed: {reason}", failed.id),
            &format!("bead {} ({}) failed: {reason}", failed.id, failed.title),
            label,
        )
    }

    /// An escalation bead about `about` (`body`, labelled `label`), noted on `about`'s log and
    /// told to the mayor as `mayor_text`.
    pub(super) fn raise_escalation(
        &self,
        about: &Bead,
        body: &str,
        mayor_text: &str,
        label: &str,
    ) -> Reply<()> {
        let metadata = serde_json::json!({ "bead_id": about.id }).to_string();
        let title: String = format!("Escalation: {}", about.title)
            .chars()
            .take(gastown_core::beads::MAX_TITLE)
            .collect();
        let new = NewBead {
            bead_type: BeadType::Escalation,
            title,
            body: body.to_owned(),
            rig_id: about.rig_id.clone(),
            priority: 0,
            labels: vec![label.to_owned()],
            metadata,
        };
        let id = self.insert_town_bead(&new, "town", &format!("for bead {}", about.id))?;
        let sql = self.sql();
        let now = config::now_ms();
        store::event(
            &sql,
            &about.id,
            BeadEventKind::Escalated,
            &Actor::Town,
            Some(&format!("escalation {id}")),
            now,
        )?;
        self.escalate_to_mayor(&id, mayor_text)
    }

    /// The idle timeout passed: the container stops and its tokens are rotated away; the next
    /// dispatch starts it again with fresh ones.
    pub(super) async fn stop_idle_container(&self, town: &Town) -> Reply<()> {
        set_meta(&self.sql(), Meta::ContainerStarted, 0)?;
        self.mayor_session_lost()?;
        self.advance_generation()?;
        bump_meta(&self.sql(), Meta::IdleStops)?;
        self.container(&town.id)?
            .call(c::Stop {
                town_id: town.id.clone(),
            })
            .await
            .map_err(gone_is_not_found)?;
        self.still_here()
    }
}

//! The agents' callbacks: heartbeat, status and done, each for an agent the town registered,
//! of the route's rig (the mayor belongs to none), with the caller's container token admitted
//! by the generation. What `done` makes of the bead is `transitions::on_done`.

use super::store::{self, Actor};
use super::TownDO;
use crate::config;
use gastown_core::authz::ContainerCredential;
use gastown_core::beads::{Bead, BeadEventKind};
use gastown_core::control::AgentDoneCallback;
use gastown_core::error::ApiError;
use gastown_core::ids::{AgentId, RigId};
use gastown_core::model::{Agent, AgentStatus};
use gastown_core::time::rfc3339;
use gastown_core::town_config::MergeStrategy;
use gastown_core::transitions::{self, check_callback_text};

type Reply<T> = Result<T, ApiError>;

fn bead_not_found() -> ApiError {
    ApiError::NotFound("bead not found in this town".into())
}

impl TownDO {
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
        if !store::rig_exists(&sql, rig_id.as_str())? {
            return Err(ApiError::NotFound("rig not found in this town".into()));
        }
        let known = store::agent(&sql, agent_id.as_str())?
            .ok_or_else(|| ApiError::NotFound("agent not found in this town".into()))?;
        if known.rig_id.as_ref().is_some_and(|r| r != rig_id) {
            return Err(ApiError::NotFound("agent not found in this rig".into()));
        }
        Ok(known)
    }

    /// Any sign of life from an agent.
    pub(super) fn touch_agent(&self, agent_id: &AgentId) -> Reply<()> {
        store::touch_agent(&self.sql(), agent_id.as_str(), config::now_ms())
    }

    /// An agent's status message, on its bead's log.
    pub(super) fn record_status(&self, agent: &Agent, message: &str) -> Reply<()> {
        check_callback_text("message", message)?;
        self.touch_agent(&agent.id)?;
        if let Some(bead_id) = &agent.current_bead_id {
            store::event(
                &self.sql(),
                bead_id,
                BeadEventKind::Status,
                &Actor::Agent(&agent.id),
                Some(message),
                config::now_ms(),
            )?;
        }
        Ok(())
    }

    /// The agent finished its bead: closed, or in review under the `pull_request` strategy
    /// (the refinery opens and follows its pull request); the agent is free again. 409 for an agent with no bead in
    /// progress (a second `done`).
    pub(super) fn finish(&self, agent: &Agent, done: &AgentDoneCallback) -> Reply<Bead> {
        transitions::check_done(done)?;
        let sql = self.sql();
        let not_working = || ApiError::Conflict("this agent has no bead in progress".into());
        let bead_id = agent.current_bead_id.as_deref().ok_or_else(not_working)?;
        let current =
            store::bead_held_by(&sql, bead_id, agent.id.as_str())?.ok_or_else(not_working)?;
        let town = self.require_town()?;
        let config = self.config(&town.id)?;
        let strategy =
            transitions::merge_strategy(&config, current.rig_id.as_ref().map(RigId::as_str));
        // A feedback bead's work continues its pull request's branch: it closes, and the pull
        // request is read again. Any other finished branch may go to review.
        let feedback_of = store::pull_of_feedback(&sql, bead_id)?;
        let mut finished = if feedback_of.is_some() {
            transitions::on_done(None, false, false)
        } else {
            transitions::on_done(strategy, done.pr_url.is_some(), done.branch.is_some())
        };
        // A pull request the agent opened itself on a rig with no integration cannot be
        // followed: it stays in review as reported.
        if finished.refine && done.pr_url.is_some() && strategy == Some(MergeStrategy::PullRequest)
        {
            let integrated = match &current.rig_id {
                Some(rig) => store::rig(&sql, rig.as_str())?
                    .is_some_and(|r| r.platform_integration_id.is_some()),
                None => false,
            };
            finished.refine = integrated;
        }
        // The refinery takes only the branch the bead was dispatched on: an agent steered into
        // naming another (someone's unreviewed branch) gets it neither merged nor adopted.
        if finished.refine {
            let assigned = store::work_branch_of(&sql, bead_id)?
                .unwrap_or_else(|| transitions::work_branch(&agent.name, bead_id));
            if done.branch.as_deref() != Some(assigned.as_str()) {
                return Err(ApiError::invalid(
                    "branch",
                    format!("must be the branch this bead was dispatched on: {assigned}"),
                ));
            }
        }
        let now_ms = config::now_ms();
        let now = rfc3339(now_ms);
        store::finish_bead(&sql, bead_id, finished.status, finished.closes, done, &now)?;
        store::event(
            &sql,
            bead_id,
            finished.event,
            &Actor::Agent(&agent.id),
            Some(&done.summary),
            now_ms,
        )?;
        store::settle_convoy_of(&sql, bead_id, now_ms)?;
        self.touch_agent(&agent.id)?;
        store::release_agent(&sql, agent.id.as_str(), AgentStatus::Idle)?;
        if let Some(pull) = &feedback_of {
            self.feedback_done(pull)?;
        } else if let (true, Some(branch)) = (finished.refine, &done.branch) {
            self.start_review(&current, branch, &done.summary, strategy)?;
        }
        store::bead(&sql, bead_id)?.ok_or_else(bead_not_found)
    }
}

//! The town's beads as users see them: pages, create (and sling), detail with the event log,
//! patch (fields, close, reopen: `transitions::user_status_change`), delete. An issue that
//! becomes dispatchable wakes the loop at once.

use super::store::{self, Actor};
use super::TownDO;
use crate::config;
use gastown_core::beads::{
    Bead, BeadDetail, BeadEventKind, BeadFilter, BeadPatch, BeadStatus, BeadType, ConvoyDetail,
    NewBead, SlingBatch, DEFAULT_PRIORITY,
};
use gastown_core::error::ApiError;
use gastown_core::ids::BeadId;
use gastown_core::model::{AgentStatus, Town};
use gastown_core::page::Page;
use gastown_core::protocol::container as c;
use gastown_core::protocol::Json;
use gastown_core::time::rfc3339;
use gastown_core::transitions::{self, StatusChange};
use worker::console_error;

type Reply<T> = Result<T, ApiError>;

fn bead_not_found() -> ApiError {
    ApiError::NotFound("bead not found in this town".into())
}

impl TownDO {
    /// Work arrived: the alarm comes at once instead of at the idle cadence.
    pub(super) async fn kick(&self) -> Reply<()> {
        let storage = self.state.storage();
        let pending = storage.get_alarm().await.map_err(ApiError::internal)?;
        let soon = i64::try_from(config::now_ms() + 50).unwrap_or(i64::MAX);
        if pending.is_none_or(|at| at > soon) {
            storage.set_alarm(50).await.map_err(ApiError::internal)?;
        }
        Ok(())
    }

    pub(super) fn list_beads_page(
        &self,
        filter: &BeadFilter,
        page: &Page,
    ) -> Reply<Json<Vec<Bead>>> {
        store::beads_page(&self.sql(), filter, page)
    }

    /// A bead the town makes (in the name of `created_by`: a user, or `town`), with its `created`
    /// event by the town saying `why`.
    pub(super) fn insert_town_bead(
        &self,
        new: &NewBead,
        created_by: &str,
        why: &str,
    ) -> Reply<String> {
        let id = self.insert_bead(new, created_by)?;
        store::event(
            &self.sql(),
            &id,
            BeadEventKind::Created,
            &Actor::Town,
            Some(why),
            config::now_ms(),
        )?;
        Ok(id)
    }

    /// A new bead by `created_by` (a user's id, or `town`), with its `created` event.
    pub(super) fn insert_bead(&self, new: &NewBead, created_by: &str) -> Reply<String> {
        let id = config::new_id()?;
        let now_ms = config::now_ms();
        let sql = self.sql();
        store::insert_bead(&sql, &id, new, created_by, &rfc3339(now_ms))?;
        Ok(id)
    }

    pub(super) async fn create_bead_row(&self, new: NewBead, created_by: &str) -> Reply<Bead> {
        let sql = self.sql();
        if let Some(rig) = &new.rig_id {
            if !store::rig_exists(&sql, rig.as_str())? {
                return Err(ApiError::invalid("rig_id", "is not a rig of this town"));
            }
        }
        let id = self.insert_bead(&new, created_by)?;
        store::event(
            &sql,
            &id,
            BeadEventKind::Created,
            &Actor::User(created_by),
            None,
            config::now_ms(),
        )?;
        if new.bead_type == BeadType::Issue {
            self.kick().await?;
        }
        store::bead(&sql, &id)?.ok_or_else(|| ApiError::internal("bead row missing"))
    }

    /// A convoy bead and its issues, each waiting for the beads of the batch it depends on,
    /// all by `created_by`; the loop comes at once for those that wait for nothing.
    pub(super) async fn sling_batch_rows(
        &self,
        batch: SlingBatch,
        created_by: &str,
    ) -> Reply<ConvoyDetail> {
        let sql = self.sql();
        for (i, item) in batch.beads.iter().enumerate() {
            if let Some(rig) = &item.bead.rig_id {
                if !store::rig_exists(&sql, rig.as_str())? {
                    return Err(ApiError::invalid(
                        format!("beads[{i}].rig_id"),
                        "is not a rig of this town",
                    ));
                }
            }
        }
        let now_ms = config::now_ms();
        let actor = Actor::User(created_by);
        let convoy = NewBead {
            bead_type: BeadType::Convoy,
            title: batch.title,
            body: String::new(),
            rig_id: None,
            priority: DEFAULT_PRIORITY,
            labels: Vec::new(),
            metadata: "{}".to_owned(),
        };
        let convoy_id = self.insert_bead(&convoy, created_by)?;
        let slung = format!("a convoy of {} beads", batch.beads.len());
        store::event(
            &sql,
            &convoy_id,
            BeadEventKind::Created,
            &actor,
            Some(&slung),
            now_ms,
        )?;
        let within = format!("in convoy {convoy_id}");
        let mut ids: Vec<String> = Vec::with_capacity(batch.beads.len());
        for item in &batch.beads {
            let id = self.insert_bead(&item.bead, created_by)?;
            store::set_convoy(&sql, &id, &convoy_id)?;
            for &index in &item.depends_on {
                store::add_dependency(&sql, &id, &ids[index])?;
            }
            store::event(
                &sql,
                &id,
                BeadEventKind::Created,
                &actor,
                Some(&within),
                now_ms,
            )?;
            ids.push(id);
        }
        self.kick().await?;
        store::convoy_detail(&self.sql(), &convoy_id)?
            .ok_or_else(|| ApiError::internal("convoy row missing"))
    }

    pub(super) fn bead_detail(&self, bead_id: &BeadId) -> Reply<Json<BeadDetail>> {
        let text =
            store::bead_detail_json(&self.sql(), bead_id.as_str())?.ok_or_else(bead_not_found)?;
        Json::from_text(text)
    }

    pub(super) async fn patch_bead_row(
        &self,
        town: &Town,
        bead_id: &BeadId,
        patch: BeadPatch,
        user_id: &str,
    ) -> Reply<Bead> {
        let sql = self.sql();
        let id = bead_id.as_str();
        let current = store::bead(&sql, id)?.ok_or_else(bead_not_found)?;
        let change = transitions::user_status_change(current.status, patch.status)?;
        let actor = Actor::User(user_id);
        let now_ms = config::now_ms();
        let now = rfc3339(now_ms);
        store::patch_bead_fields(&sql, id, &patch, &now)?;
        if patch.title.is_some()
            || patch.body.is_some()
            || patch.priority.is_some()
            || patch.labels.is_some()
        {
            store::event(&sql, id, BeadEventKind::Updated, &actor, None, now_ms)?;
        }
        let mut stop_agent = None;
        match change {
            Some(StatusChange::Close { stop_agent: stop }) => {
                if stop {
                    stop_agent = current.assignee_agent_id.clone();
                }
                store::close_bead(&sql, id, &now)?;
                store::event(&sql, id, BeadEventKind::Closed, &actor, None, now_ms)?;
                store::settle_convoy_of(&sql, id, now_ms)?;
            }
            Some(StatusChange::Reopen) => {
                store::reopen_bead_afresh(&sql, id, &now)?;
                store::event(&sql, id, BeadEventKind::Reopened, &actor, None, now_ms)?;
                store::settle_convoy_of(&sql, id, now_ms)?;
            }
            None => {}
        }
        if change.is_some() {
            // A merge request bead closed by hand abandons the review: its source bead, still
            // waiting in review, fails (reopenable) instead of waiting forever.
            if current.bead_type == BeadType::MergeRequest {
                let waiting = store::pull(&sql, id)?
                    .filter(|r| r.state == "opening" || r.state == "open")
                    .map(|r| r.source_bead_id);
                if let Some(source) = waiting {
                    if store::bead(&sql, &source)?.is_some_and(|b| b.status == BeadStatus::InReview)
                    {
                        let line =
                            "its merge request was closed by hand; reopen the bead to try again";
                        store::fail_bead(&sql, &source, line, &now)?;
                        store::event(
                            &sql,
                            &source,
                            BeadEventKind::Failed,
                            &actor,
                            Some(line),
                            now_ms,
                        )?;
                        store::settle_convoy_of(&sql, &source, now_ms)?;
                    }
                }
            }
            store::detach_pulls_of(&sql, id, now_ms)?;
        }
        if let Some(agent) = &stop_agent {
            store::release_agent(&sql, agent.as_str(), AgentStatus::Idle)?;
            self.stop_agent_process(town, agent.as_str()).await;
        }
        if change == Some(StatusChange::Reopen) && current.bead_type == BeadType::Issue {
            self.kick().await?;
        }
        store::bead(&self.sql(), id)?.ok_or_else(bead_not_found)
    }

    pub(super) async fn delete_bead_row(&self, town: &Town, bead_id: &BeadId) -> Reply<()> {
        let sql = self.sql();
        let current = store::bead(&sql, bead_id.as_str())?.ok_or_else(bead_not_found)?;
        store::delete_bead(&sql, bead_id.as_str())?;
        store::detach_pulls_of(&sql, bead_id.as_str(), config::now_ms())?;
        if let Some(convoy) = &current.convoy_id {
            store::settle_convoy(&sql, convoy, config::now_ms())?;
        }
        if current.status == BeadStatus::InProgress {
            if let Some(agent) = current.assignee_agent_id {
                store::release_agent_of(&sql, agent.as_str(), bead_id.as_str())?;
                self.stop_agent_process(town, agent.as_str()).await;
            }
        }
        Ok(())
    }

    /// Best effort: the agent's process goes; a container that is down has none.
    pub(super) async fn stop_agent_process(&self, town: &Town, agent_id: &str) {
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
}

//! The mayor: a user's messages, the transcript, the one session that hears them, and the
//! mayor's tools.
//!
//! A message is stored at once (the route answers 202) and given to the session by the next
//! tick, which comes at once: the alarm is the one deliverer, so messages reach the session
//! in the order they were stored, each once, however many arrive together (those stored while
//! one delivery is under way go with the next). A running or waiting session gets them as a
//! further message; when none runs (or the container lost it: it idled out, restarted), a new
//! session starts with the conversation it heard so far to remember (`mayor::memory`) and the
//! new messages to answer, and a fresh key for its tools. Only the hash of that key is kept,
//! and a tool call must present the key of the current session, besides a container token of
//! the town: a polecat's (same container token, no key) is refused.
//!
//! The session's status drives the town's cadence: `starting` and `working` count as work
//! (the mayor agent is `working`: fast loop, token pushes, patrol stalls it when silent past
//! the stall time), `waiting` and `idle` do not, so a mayor waiting for its user keeps no
//! container awake.

use super::store::{self, Actor};
use super::TownDO;
use crate::config;
use gastown_core::agent_settings::effective_model;
use gastown_core::authz::ContainerCredential;
use gastown_core::beads::{BeadEventKind, BeadPatch, BeadType, UserStatus};
use gastown_core::control::AgentStartBody;
use gastown_core::error::ApiError;
use gastown_core::ids::AgentId;
use gastown_core::mayor::{
    self, key_hash, key_matches, MayorMessage, MayorStatus, MayorView, Speaker, Transcript,
    MAYOR_KEY_ENV, MAYOR_MEMORY_ENV, MAYOR_PROMPT_ENV,
};
use gastown_core::model::{Agent, AgentStatus, Town};
use gastown_core::page::SeqPage;
use gastown_core::protocol::container::{self as c, AgentMessaged};
use gastown_core::protocol::town::MayorTool;
use gastown_core::protocol::Json;
use gastown_core::time::rfc3339;
use gastown_core::town_config::TownConfig;
use gastown_core::vocab::Role;
use serde::Serialize;
use serde_json::Value;
use worker::console_error;

type Reply<T> = Result<T, ApiError>;

/// The longest wait between failed session starts.
const MAX_START_BACKOFF_MS: u64 = 60_000;

fn json_of<T: Serialize>(value: &T) -> Reply<Json<Value>> {
    Json::from_text(serde_json::to_string(value).map_err(ApiError::internal)?)
}

impl TownDO {
    /// The town's mayor agent, created on first need (409 past the agent quota).
    pub(super) fn mayor_agent(&self) -> Reply<Agent> {
        match store::mayor(&self.sql())? {
            Some(mayor) => Ok(mayor),
            None => self.insert_agent(Role::Mayor, None, "mayor"),
        }
    }

    /// A user's message: stored, then delivered by the tick that comes at once.
    pub(super) async fn say_to_mayor(&self, user: &str, text: &str) -> Reply<MayorMessage> {
        self.mayor_agent()?;
        let message = self.record_mayor_message(Speaker::User, text, Some(user), false)?;
        self.kick().await?;
        Ok(message)
    }

    /// A message in the transcript, within the town's cap.
    fn record_mayor_message(
        &self,
        role: Speaker,
        text: &str,
        user_id: Option<&str>,
        delivered: bool,
    ) -> Reply<MayorMessage> {
        let new = store::NewMayorMessage {
            role,
            text,
            user_id,
            delivered,
        };
        let cap = config::get(&self.env).quotas.mayor_transcript;
        store::insert_mayor_message(&self.sql(), new, config::now_ms(), cap)
    }

    pub(super) fn mayor_status_view(&self) -> Reply<MayorView> {
        let sql = self.sql();
        let session = store::mayor_session(&sql)?;
        let agent = store::mayor(&sql)?;
        let seen_at = session.last_activity_ms.map(|ms| rfc3339(ms as u64));
        let message_at = store::mayor_last_message_at(&sql)?;
        // RFC 3339 in UTC with the same precision: the later is the larger string.
        let activity_at = match (seen_at, message_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(MayorView {
            status: session.status(),
            agent_id: agent.map(|a| a.id.as_str().to_owned()),
            last_activity_at: activity_at,
            model: session.model,
            pending_messages: store::mayor_pending_count(&sql)?,
        })
    }

    pub(super) fn mayor_transcript_page(&self, page: SeqPage) -> Reply<Transcript> {
        let sql = self.sql();
        let messages = store::mayor_transcript(&sql, page.after, page.limit)?;
        let next_after = (messages.len() == page.limit as usize)
            .then(|| messages.last().map(|m| m.seq))
            .flatten();
        Ok(Transcript {
            messages,
            next_after,
            dropped: store::mayor_session(&sql)?.dropped as u64,
        })
    }

    /// Whether the mayor gives the town work: messages to deliver.
    pub(super) fn mayor_has_pending(&self) -> Reply<bool> {
        Ok(store::mayor_pending_count(&self.sql())? > 0)
    }

    /// From the tick: gives the session what it has not heard, starting one if none runs.
    pub(super) async fn deliver_to_mayor(&self, town: &Town) -> Reply<()> {
        let pending = store::mayor_pending(&self.sql())?;
        let Some(last) = pending.last().map(|m| m.seq) else {
            return Ok(());
        };
        let acting = pending.iter().rev().find_map(|m| m.user_id.clone());
        let session = store::mayor_session(&self.sql())?;
        let now = config::now_ms();
        let agent = self.mayor_agent()?;
        // A session that is starting gets them once it has had its first prompt (it says
        // `working`); if it never does, patrol stalls it and a new one gets them.
        if session.status() == MayorStatus::Starting && self.container_started()? {
            return Ok(());
        }
        if session.status().takes_messages() && self.container_started()? {
            let sent = self
                .container(&town.id)?
                .call(c::MessageAgent {
                    town_id: town.id.clone(),
                    agent_id: agent.id.as_str().to_owned(),
                    text: mayor::delivery_text(&pending),
                })
                .await?;
            self.still_here()?;
            match sent {
                AgentMessaged::Delivered => {
                    let sql = self.sql();
                    store::mayor_delivered(&sql, last, acting.as_deref())?;
                    store::set_mayor_status(&sql, MayorStatus::Working, config::now_ms())?;
                    self.mayor_working(&agent.id, true)?;
                    return Ok(());
                }
                // The session is gone (the container idled out or restarted), or did not take
                // the message (its CLI died with its session file left behind): the message
                // was not delivered, and a new session gets it.
                AgentMessaged::Failed { error } => {
                    console_error!("town {}: message to the mayor: {error}", town.id);
                    store::end_mayor_session(&self.sql())?;
                }
                AgentMessaged::NoSession => store::end_mayor_session(&self.sql())?,
            }
        } else if now < session.next_start_ms as u64 {
            return Ok(());
        }
        self.start_mayor(town, &agent, &pending, last, acting.as_deref())
            .await
    }

    /// A new session with a fresh key, resuming the conversation.
    async fn start_mayor(
        &self,
        town: &Town,
        agent: &Agent,
        pending: &[MayorMessage],
        last: u64,
        acting: Option<&str>,
    ) -> Reply<()> {
        let config = self.config(&town.id)?;
        let model = effective_model(&config, Role::Mayor, None).map(str::to_owned);
        let key = session_key()?;
        let memory = mayor::memory(&store::mayor_heard(&self.sql())?);
        let prompt = mayor::delivery_text(pending);
        store::begin_mayor_session(
            &self.sql(),
            &key_hash(&key),
            model.as_deref(),
            config::now_ms(),
        )?;
        self.mayor_working(&agent.id, true)?;
        let started = self
            .start_agent(town, || {
                let mut body = self.mayor_body(town, &config, agent, &key, model.clone())?;
                body.env.insert(MAYOR_PROMPT_ENV.to_owned(), prompt.clone());
                if let Some(memory) = &memory {
                    body.env.insert(MAYOR_MEMORY_ENV.to_owned(), memory.clone());
                }
                Ok(body)
            })
            .await;
        self.still_here()?;
        let sql = self.sql();
        match started {
            Ok(()) => store::mayor_delivered(&sql, last, acting),
            Err(error) => {
                console_error!(
                    "town {}: the mayor's session did not start: {error}",
                    town.id
                );
                let failures = store::mayor_session(&sql)?.start_failures as u32;
                let backoff = (2_000u64 << failures.min(5)).min(MAX_START_BACKOFF_MS);
                store::mayor_start_failed(&sql, config::now_ms() + backoff)?;
                self.mayor_working(&agent.id, false)
            }
        }
    }

    /// The mayor agent counts as work (`true`) or not; either way it showed life.
    fn mayor_working(&self, agent: &AgentId, working: bool) -> Reply<()> {
        let sql = self.sql();
        let status = if working {
            AgentStatus::Working
        } else {
            AgentStatus::Idle
        };
        store::release_agent(&sql, agent.as_str(), status)?;
        store::touch_agent(&sql, agent.as_str(), config::now_ms())
    }

    fn mayor_body(
        &self,
        town: &Town,
        config: &TownConfig,
        agent: &Agent,
        key: &str,
        model: Option<String>,
    ) -> Reply<AgentStartBody> {
        let settings = config::get(&self.env);
        let mut env = self.agent_env(town, config)?;
        env.insert(MAYOR_KEY_ENV.to_owned(), key.to_owned());
        Ok(AgentStartBody {
            town_id: town.id.clone(),
            agent_id: agent.id.clone(),
            role: Role::Mayor,
            name: agent.name.clone(),
            rig_id: None,
            bead: None,
            git_url: None,
            default_branch: None,
            branch: None,
            model,
            worker_url: Some(settings.work.callback_url.clone()),
            organization_id: town.owner.org().cloned(),
            env,
        })
    }

    /// The session is gone with the container (an idle stop, a town stop): the next message
    /// starts a new one.
    pub(super) fn mayor_session_lost(&self) -> Reply<()> {
        let sql = self.sql();
        store::end_mayor_session(&sql)?;
        if let Some(agent) = store::mayor(&sql)? {
            if agent.status == AgentStatus::Working {
                store::release_agent(&sql, agent.id.as_str(), AgentStatus::Idle)?;
            }
        }
        Ok(())
    }

    /// An escalation for a mayor that has a session (running or waiting), once.
    pub(super) fn escalate_to_mayor(&self, escalation_id: &str, text: &str) -> Reply<()> {
        let sql = self.sql();
        if !store::mayor_session(&sql)?.status().has_session() {
            return Ok(());
        }
        let message = format!(
            "Escalation {escalation_id}: {text}\nAcknowledge it with `gt ack {escalation_id}` once \
             it is handled (reopen or re-sling the failed bead, or tell the user)."
        );
        store::insert_escalation_message(&sql, escalation_id, &message, config::now_ms())?;
        Ok(())
    }

    /// A tool call: the town active, the container token admitted, the current session's key.
    pub(super) async fn mayor_tool_call(
        &self,
        credential: ContainerCredential,
        key: &str,
        tool: MayorTool,
    ) -> Reply<Json<Value>> {
        let town = self.require_town()?;
        self.require_active(&town)?;
        self.admit(credential)?;
        let sql = self.sql();
        let session = store::mayor_session(&sql)?;
        let is_mayor = session
            .key_hash
            .as_deref()
            .is_some_and(|hash| key_matches(hash, key));
        if !is_mayor {
            return Err(ApiError::Forbidden(
                "only the town's mayor may use its tools".into(),
            ));
        }
        let mayor = self.mayor_agent()?;
        store::touch_agent(&sql, mayor.id.as_str(), config::now_ms())?;
        // The work the mayor makes runs as the user whose message it acts on.
        let acting = session
            .acting_user_id
            .clone()
            .unwrap_or_else(|| "town".to_owned());
        match tool {
            MayorTool::Admit => json_of(&serde_json::json!({})),
            MayorTool::Rigs => Ok(Json::from_text(store::rigs(&sql)?.into_string())?),
            MayorTool::ListBeads { filter, page } => Ok(Json::from_text(
                self.list_beads_page(&filter, &page)?.into_string(),
            )?),
            MayorTool::GetBead { bead_id } => {
                Ok(Json::from_text(self.bead_detail(&bead_id)?.into_string())?)
            }
            MayorTool::CreateBead { bead } => json_of(&self.create_bead_row(bead, &acting).await?),
            MayorTool::PatchBead { bead_id, patch } => {
                json_of(&self.patch_bead_row(&town, &bead_id, patch, &acting).await?)
            }
            MayorTool::SlingBatch { batch } => {
                json_of(&self.sling_batch_rows(batch, &acting).await?)
            }
            MayorTool::ListAgents => Ok(Json::from_text(store::agents(&sql)?.into_string())?),
            MayorTool::ResetAgent { agent_id } => {
                let agent = store::agent(&sql, agent_id.as_str())?
                    .filter(|a| a.role != Role::Mayor)
                    .ok_or_else(|| ApiError::NotFound("agent not found in this town".into()))?;
                self.agent_lost(
                    agent.id.as_str(),
                    agent.current_bead_id.as_deref(),
                    "its agent was reset by the mayor",
                    "the mayor reset its agent",
                    config::now_ms(),
                )?;
                self.stop_agent_process(&town, agent.id.as_str()).await;
                self.still_here()?;
                json_of(&store::agent(&self.sql(), agent.id.as_str())?)
            }
            MayorTool::AckEscalation { bead_id } => {
                let bead = store::bead(&sql, bead_id.as_str())?
                    .filter(|b| b.bead_type == BeadType::Escalation)
                    .ok_or_else(|| {
                        ApiError::NotFound("escalation not found in this town".into())
                    })?;
                store::event(
                    &sql,
                    &bead.id,
                    BeadEventKind::Status,
                    &Actor::Agent(&mayor.id),
                    Some("acknowledged by the mayor"),
                    config::now_ms(),
                )?;
                let close = BeadPatch {
                    status: Some(UserStatus::Closed),
                    ..BeadPatch::default()
                };
                json_of(&self.patch_bead_row(&town, &bead_id, close, &acting).await?)
            }
            MayorTool::Events { batch } => json_of(&self.store_agent_events(&mayor.id, &batch)?),
            MayorTool::Reply { text } => {
                json_of(&self.record_mayor_message(Speaker::Mayor, &text, None, true)?)
            }
            MayorTool::State { status } => {
                let now = config::now_ms();
                match status {
                    MayorStatus::Idle => {
                        store::end_mayor_session(&sql)?;
                        self.mayor_working(&mayor.id, false)?;
                    }
                    MayorStatus::Waiting => {
                        store::set_mayor_status(&sql, status, now)?;
                        self.mayor_working(&mayor.id, false)?;
                    }
                    MayorStatus::Starting => {
                        store::set_mayor_status(&sql, status, now)?;
                        self.mayor_working(&mayor.id, true)?;
                    }
                    MayorStatus::Working => {
                        store::set_mayor_status(&sql, status, now)?;
                        self.mayor_working(&mayor.id, true)?;
                        // Messages that waited for the session's first prompt go now.
                        if self.mayor_has_pending()? {
                            self.kick().await?;
                        }
                    }
                }
                json_of(&self.mayor_status_view()?)
            }
        }
    }
}

/// A fresh session key: 32 random bytes, hex.
fn session_key() -> Reply<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(ApiError::internal)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

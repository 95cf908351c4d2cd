//! The operations of `TownDO` (`gastown_core::protocol::town`), one short function each: the
//! access check of a town route's caller, then the call into the concern that does the work
//! (`beads`, `dispatch`, `patrol`, `callbacks`, `tokens`) or a query of `store`.

use super::store;
use super::{Meta, TownDO};
use crate::config;
use crate::storage::{bump_meta, meta, set_meta};
use gastown_core::beads::{Bead, BeadDetail, BeadEventKind, ConvoyDetail, ConvoySummary};
use gastown_core::error::ApiError;
use gastown_core::events::{EventPage, EventsStored};
use gastown_core::mayor::{MayorMessage, MayorView, Transcript};
use gastown_core::model::{Agent, Rig, Town, TownStatus};
use gastown_core::protocol::container::{self as c, TokenPushed};
use gastown_core::protocol::town::*;
use gastown_core::protocol::{Ack, Json};
use gastown_core::stream::{StreamScope, CLOSE_TOWN_DELETED};
use gastown_core::time::rfc3339;
use gastown_core::town_config::{ConfigView, TownConfig};

type Reply<T> = Result<T, ApiError>;

fn not_running() -> ApiError {
    ApiError::Conflict("the town's container is not running; start it first".into())
}

impl TownDO {
    /// Every rig override must name a rig of this town.
    fn check_override_rigs(&self, config: &TownConfig) -> Reply<()> {
        let rigs = store::rig_ids(&self.sql())?;
        match config.rig_overrides.keys().find(|k| !rigs.contains(k)) {
            Some(unknown) => Err(ApiError::invalid(
                format!("rig_overrides.{unknown}"),
                "is not a rig of this town",
            )),
            None => Ok(()),
        }
    }
}

impl TownOps for TownDO {
    // No `prepare`: `town()` migrates a DO that has a schema and leaves a fresh one untouched,
    // so only `init` creates storage.

    async fn init(&self, Init { town }: Init) -> Reply<Town> {
        self.schema.ensure(&self.sql(), config::now_ms())?;
        if let Some(existing) = self.town()? {
            if existing.id == town.id {
                return Ok(existing);
            }
            return Err(ApiError::Conflict(
                "this town already has another identity".into(),
            ));
        }
        store::insert_town(&self.sql(), &town)?;
        self.mint_gateway(&town)?;
        self.arm().await?;
        Ok(town)
    }

    async fn get(&self, req: Get) -> Reply<Town> {
        self.admit_user(&req.caller).map(|(town, _)| town)
    }

    async fn list_rigs(&self, req: ListRigs) -> Reply<Json<Vec<Rig>>> {
        self.admit_user(&req.caller)?;
        super::store::rigs_page(&self.sql(), &req.page)
    }

    async fn container_status(&self, req: ContainerStatus) -> Reply<c::ContainerStatus> {
        let (town, _) = self.admit_user(&req.caller)?;
        let mut status = self
            .container(&town.id)?
            .call(c::Status {})
            .await
            .map_err(super::gone_is_not_found)?;
        self.still_here()?;
        status.breaker = self.breaker_view()?;
        Ok(status)
    }

    /// The town is marked gone before the first await, so nothing that starts meanwhile (a
    /// container start, a token push) can proceed; the container DO is destroyed and left with
    /// a tombstone, so a late start cannot bring it back.
    async fn destroy(&self, _: Destroy) -> Reply<Ack> {
        let town = self.stored_town()?;
        self.close_streams(CLOSE_TOWN_DELETED, "the town was deleted");
        self.destroyed.set(true);
        if town.is_some() {
            set_meta(&self.sql(), Meta::Destroying, 1)?;
        }
        if let Some(town) = town {
            let destroyed = self
                .container(&town.id)?
                .call(c::Destroy { town_id: town.id })
                .await;
            match destroyed {
                // Already a tombstone: an earlier destroy got that far.
                Ok(_) | Err(ApiError::Gone(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let storage = self.state.storage();
        storage.delete_alarm().await.map_err(ApiError::internal)?;
        storage.delete_all().await.map_err(ApiError::internal)?;
        self.schema.reset();
        Ok(Ack::OK)
    }

    async fn add_rig(&self, AddRig { rig }: AddRig) -> Reply<Ack> {
        let town = self.require_town()?;
        if rig.town_id != town.id {
            return Err(ApiError::internal("rig registered with the wrong town"));
        }
        store::put_rig(&self.sql(), &rig)?;
        // The new rig gets its settings file.
        let config = self.config(&town.id)?;
        self.sync_env(&town, &config).await;
        Ok(Ack::OK)
    }

    async fn remove_rig(&self, RemoveRig { rig_id }: RemoveRig) -> Reply<Ack> {
        let town = self.require_town()?;
        let mut config = self.config(&town.id)?;
        store::delete_rig(&self.sql(), &rig_id)?;
        // Its waiting and running work cannot go on: it fails (and says why), so nothing is
        // left in progress for an agent that no longer exists.
        self.fail_rig_work(&rig_id)?;
        if config.rig_overrides.remove(rig_id.as_str()).is_some() {
            self.store_config(&town.id, &config)?;
        }
        // Its override and its settings file go.
        self.sync_env(&town, &config).await;
        Ok(Ack::OK)
    }

    /// A stopped town has no alarm on purpose: its start arms it.
    async fn ensure_alarm(&self, _: EnsureAlarm) -> Reply<AlarmArmed> {
        if self.town()?.is_none_or(|t| t.status.is_stopped()) {
            return Ok(AlarmArmed { rearmed: false });
        }
        let pending = self
            .state
            .storage()
            .get_alarm()
            .await
            .map_err(ApiError::internal)?;
        if pending.is_none() {
            self.arm().await?;
            bump_meta(&self.sql(), Meta::WatchdogRearms)?;
        }
        Ok(AlarmArmed {
            rearmed: pending.is_none(),
        })
    }

    async fn health(&self, _: Health) -> Reply<TownHealth> {
        let town = self.require_town()?;
        let sql = self.sql();
        let rig_count = u32::try_from(store::rig_count(&sql)?).unwrap_or(u32::MAX);
        let alarm_at = self
            .state
            .storage()
            .get_alarm()
            .await
            .map_err(ApiError::internal)?
            .and_then(|ms| u64::try_from(ms).ok());
        Ok(TownHealth {
            town_id: town.id,
            status: town.status,
            rig_count,
            alarm_at,
            alarm_runs: meta(&sql, Meta::AlarmRuns)?.unwrap_or(0),
            watchdog_rearms: meta(&sql, Meta::WatchdogRearms)?.unwrap_or(0),
            token_refreshed_at: meta(&sql, Meta::TokenRefreshedAt)?.map(rfc3339),
            token_refreshes: meta(&sql, Meta::TokenRefreshes)?.unwrap_or(0),
            token_refresh_failures: meta(&sql, Meta::TokenRefreshFailures)?.unwrap_or(0),
            last_alarm_at: meta(&sql, Meta::LastAlarmAt)?.map(rfc3339),
            gateway_token_expires_at: meta(&sql, Meta::GatewayExpiresAt)?
                .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            gateway_refreshes: meta(&sql, Meta::GatewayRefreshes)?.unwrap_or(0),
            gateway_refresh_failures: meta(&sql, Meta::GatewayRefreshFailures)?.unwrap_or(0),
            busy: self.has_work()?,
            dispatches: meta(&sql, Meta::Dispatches)?.unwrap_or(0),
            dispatch_failures: meta(&sql, Meta::DispatchFailures)?.unwrap_or(0),
            breaker_failures: meta(&sql, Meta::BreakerFailures)?.unwrap_or(0),
            breaker_open_until: meta(&sql, Meta::BreakerOpenUntil)?.filter(|t| *t > 0),
            stalls: meta(&sql, Meta::Stalls)?.unwrap_or(0),
            idle_stops: meta(&sql, Meta::IdleStops)?.unwrap_or(0),
            drains: meta(&sql, Meta::Drains)?.unwrap_or(0),
            eviction_resets: meta(&sql, Meta::EvictionResets)?.unwrap_or(0),
            wedge_restarts: meta(&sql, Meta::WedgeRestarts)?.unwrap_or(0),
            breaker_reason: self.breaker_view()?.map(|b| b.reason),
        })
    }

    async fn get_config(&self, req: GetConfig) -> Reply<Json<ConfigView>> {
        let (town, _) = self.admit_user(&req.caller)?;
        Json::encode(&self.config(&town.id)?.view(&town))
    }

    async fn patch_config(&self, req: PatchConfig) -> Reply<Json<ConfigView>> {
        let town = self.admit_manager(&req.caller, "change its config")?;
        let next = self.config(&town.id)?.apply(&req.patch)?;
        self.check_override_rigs(&next)?;
        self.store_config(&town.id, &next)?;
        self.sync_env(&town, &next).await;
        Json::encode(&next.view(&town))
    }

    /// Anyone the town admits may start its container; the token carries the town owner's
    /// identity, never the caller's.
    async fn start_container(&self, req: StartContainer) -> Reply<c::ContainerStatus> {
        let (town, _) = self.admit_user(&req.caller)?;
        self.require_active(&town)?;
        let pushed = self.push_start(&town).await?;
        if !pushed.accepted {
            return Err(ApiError::Upstream("container start failed".into()));
        }
        self.container(&town.id)?
            .call(c::Status {})
            .await
            .map_err(super::gone_is_not_found)
    }

    async fn force_token_refresh(&self, req: ForceTokenRefresh) -> Reply<TokenPushed> {
        let town = self.admit_manager(&req.caller, "rotate its container token")?;
        if !self.container_started()? {
            return Err(not_running());
        }
        self.advance_generation()?;
        // A container that misses this push cannot mint the new generation with its old token:
        // the alarm pushes a freshly minted one on every tick until it is accepted.
        let pushed = self.refresh_token(&town).await?;
        if !pushed.accepted {
            return Err(ApiError::Upstream(
                "container did not accept the token".into(),
            ));
        }
        Ok(pushed)
    }

    async fn issue_container_token(&self, req: IssueContainerToken) -> Reply<IssuedToken> {
        let town = self.require_town()?;
        self.require_active(&town)?;
        if !self.container_started()? {
            return Err(not_running());
        }
        self.admit_minting(req.credential)?;
        let (token, expires_at) = self.mint(&town)?;
        Ok(IssuedToken { token, expires_at })
    }

    /// Only for an agent this town registered; a rig-bound agent only from its own rig (the
    /// mayor belongs to no rig and reports from any of the town's).
    async fn heartbeat(&self, req: Heartbeat) -> Reply<Ack> {
        let agent = self.callback_agent(req.credential, &req.rig_id, &req.agent_id)?;
        self.touch_agent(&agent.id)?;
        Ok(Ack::OK)
    }

    async fn agent_status(&self, req: AgentStatus) -> Reply<Ack> {
        let agent = self.callback_agent(req.credential, &req.rig_id, &req.agent_id)?;
        self.record_status(&agent, &req.status.message)?;
        Ok(Ack::OK)
    }

    async fn agent_done(&self, req: AgentDone) -> Reply<Bead> {
        let agent = self.callback_agent(req.credential, &req.rig_id, &req.agent_id)?;
        let bead = self.finish(&agent, &req.done)?;
        // A branch to review, or a feedback round done: the refinery runs at once.
        if let Err(e) = self.wake_for_next_pull().await {
            worker::console_error!("town: waking the refinery: {e}");
        }
        Ok(bead)
    }

    async fn agent_exited(&self, req: AgentExited) -> Reply<Ack> {
        let agent = self.callback_agent(req.credential, &req.rig_id, &req.agent_id)?;
        // An agent that finished (or never had) its work just ended its process.
        if agent.current_bead_id.is_none() {
            return Ok(Ack::OK);
        }
        if let Some(drained) = &req.exit.drained {
            self.agent_drained(&agent, drained)?;
            return Ok(Ack::OK);
        }
        let reason = req.exit.reason();
        self.agent_lost(
            agent.id.as_str(),
            agent.current_bead_id.as_deref(),
            &reason,
            &reason,
            config::now_ms(),
        )?;
        Ok(Ack::OK)
    }

    async fn list_beads(&self, req: ListBeads) -> Reply<Json<Vec<Bead>>> {
        self.admit_user(&req.caller)?;
        self.list_beads_page(&req.filter, &req.page)
    }

    async fn create_bead(&self, req: CreateBead) -> Reply<Bead> {
        self.admit_user(&req.caller)?;
        self.create_bead_row(req.bead, req.caller.user_id.as_str())
            .await
    }

    async fn get_bead(&self, req: GetBead) -> Reply<Json<BeadDetail>> {
        self.admit_user(&req.caller)?;
        self.bead_detail(&req.bead_id)
    }

    async fn sling_batch(&self, req: SlingBatchOp) -> Reply<ConvoyDetail> {
        self.admit_user(&req.caller)?;
        self.sling_batch_rows(req.batch, req.caller.user_id.as_str())
            .await
    }

    async fn list_convoys(&self, req: ListConvoys) -> Reply<Vec<ConvoySummary>> {
        self.admit_user(&req.caller)?;
        store::convoys(&self.sql())
    }

    async fn get_convoy(&self, req: GetConvoy) -> Reply<ConvoyDetail> {
        self.admit_user(&req.caller)?;
        store::convoy_detail(&self.sql(), req.convoy_id.as_str())?
            .ok_or_else(|| ApiError::NotFound("convoy not found in this town".into()))
    }

    async fn patch_bead(&self, req: PatchBead) -> Reply<Bead> {
        let (town, _) = self.admit_user(&req.caller)?;
        self.patch_bead_row(&town, &req.bead_id, req.patch, req.caller.user_id.as_str())
            .await
    }

    async fn delete_bead(&self, req: DeleteBead) -> Reply<Ack> {
        let (town, _) = self.admit_user(&req.caller)?;
        self.delete_bead_row(&town, &req.bead_id).await?;
        Ok(Ack::OK)
    }

    /// Only for an agent this town registered, from its own rig (as every callback).
    async fn agent_events(&self, req: AgentEventsOp) -> Reply<EventsStored> {
        let agent = self.callback_agent(req.credential, &req.rig_id, &req.agent_id)?;
        self.store_agent_events(&agent.id, &req.batch)
    }

    async fn admit_stream(&self, req: AdmitStream) -> Reply<Ack> {
        self.admit_user(&req.caller)?;
        self.admit_stream_scope(&StreamScope::parse(&req.scope)?)?;
        Ok(Ack::OK)
    }

    async fn list_agent_events(&self, req: ListAgentEvents) -> Reply<EventPage> {
        self.admit_user(&req.caller)?;
        let sql = self.sql();
        if store::agent(&sql, req.agent_id.as_str())?.is_none() {
            return Err(ApiError::NotFound("agent not found in this town".into()));
        }
        store::agent_events_page(&sql, req.agent_id.as_str(), req.page)
    }

    async fn mayor_say(&self, req: MayorSay) -> Reply<MayorMessage> {
        let (town, _) = self.admit_user(&req.caller)?;
        self.require_active(&town)?;
        self.say_to_mayor(req.caller.user_id.as_str(), &req.text)
            .await
    }

    async fn mayor_view(&self, req: MayorViewOp) -> Reply<MayorView> {
        self.admit_user(&req.caller)?;
        self.mayor_status_view()
    }

    async fn mayor_transcript(&self, req: MayorTranscript) -> Reply<Transcript> {
        self.admit_user(&req.caller)?;
        self.mayor_transcript_page(req.page)
    }

    async fn mayor_tool(&self, req: MayorToolOp) -> Reply<Json<serde_json::Value>> {
        self.mayor_tool_call(req.credential, &req.key, req.tool)
            .await
    }

    async fn stop_town(&self, req: StopTown) -> Reply<Town> {
        let town = self.admit_manager(&req.caller, "stop it")?;
        if town.status.is_stopped() {
            self.tell_owner_status(&town).await?;
            return Ok(town);
        }
        let _alone = self.begin_transition()?;
        let town = self
            .halt(town, TownStatus::Stopped, "the town was stopped")
            .await?;
        self.tell_owner_status(&town).await?;
        Ok(town)
    }

    /// The account of the user the town acts as was deleted: the town stops as a stop does,
    /// acts as no one (`creator_deleted`: nothing mints; its gateway token, minted for that
    /// user, goes) and waits for an org owner's claim. A town acting as someone else, or
    /// already `creator_deleted`, is left alone. The owner's DO, which asked, records the
    /// result. The user's id stays on the record as who created the town, until a claim.
    async fn forget_user(&self, ForgetUser { user_id }: ForgetUser) -> Reply<Town> {
        let town = self.require_town()?;
        if town.owner_user_id.as_ref() != Some(&user_id)
            || town.status == TownStatus::CreatorDeleted
        {
            return Ok(town);
        }
        let _alone = self.begin_transition()?;
        let town = if town.status.is_stopped() {
            self.set_status(TownStatus::CreatorDeleted)?;
            self.advance_generation()?;
            Town {
                status: TownStatus::CreatorDeleted,
                ..town
            }
        } else {
            self.halt(
                town,
                TownStatus::CreatorDeleted,
                "the account the town acted as was deleted",
            )
            .await?
        };
        let mut config = self.config(&town.id)?;
        if config.kilocode_token.take().is_some() {
            self.store_config(&town.id, &config)?;
        }
        Ok(town)
    }

    /// An org owner takes over a town whose creator was deleted: it acts as them from now on
    /// (tokens, billing) and stays stopped until someone starts it.
    async fn claim(&self, Claim { user_id }: Claim) -> Reply<Town> {
        let town = self.require_town()?;
        if town.status != TownStatus::CreatorDeleted {
            return Err(ApiError::Conflict(
                "only a town whose creator was deleted can be claimed".into(),
            ));
        }
        store::set_town_user(&self.sql(), &user_id)?;
        self.set_status(TownStatus::Stopped)?;
        Ok(Town {
            owner_user_id: Some(user_id.clone()),
            created_by_user_id: user_id,
            status: TownStatus::Stopped,
            ..town
        })
    }

    async fn start_town(&self, req: StartTown) -> Reply<TownStarted> {
        let mut town = self.admit_manager(&req.caller, "start it")?;
        if town.status == TownStatus::CreatorDeleted {
            return Err(ApiError::CreatorDeleted);
        }
        if town.status == TownStatus::Active {
            self.tell_owner_status(&town).await?;
            return Ok(TownStarted {
                container_started: self.container_started()?,
                town,
            });
        }
        let _alone = self.begin_transition()?;
        self.set_status(TownStatus::Active)?;
        town.status = TownStatus::Active;
        // Fresh tokens reach the container before the loop runs again.
        let pushed = self.push_start(&town).await?;
        self.arm().await?;
        self.tell_owner_status(&town).await?;
        Ok(TownStarted {
            town,
            container_started: pushed.accepted,
        })
    }

    async fn issue_sandbox_token(&self, req: IssueSandboxToken) -> Reply<IssuedToken> {
        let town = self.require_town()?;
        self.require_active(&town)?;
        if let Some(credential) = req.credential {
            self.admit_minting(credential)?;
        }
        let (token, expires_at) = self.mint_gateway(&town)?;
        if req.credential.is_some() {
            // The container asked for it, so it holds it now: the alarm need not push one, and
            // a restarted container is handed this one (not the older one its start pushed).
            set_meta(
                &self.sql(),
                Meta::GatewayExpiresAt,
                u64::try_from(expires_at).unwrap_or(0),
            )?;
            self.container(&town.id)?
                .call(c::KeepGatewayToken {
                    town_id: town.id.clone(),
                    token: token.clone(),
                })
                .await
                .map_err(super::gone_is_not_found)?;
            self.still_here()?;
        }
        Ok(IssuedToken { token, expires_at })
    }

    async fn list_agents(&self, req: ListAgents) -> Reply<Json<Vec<Agent>>> {
        self.admit_user(&req.caller)?;
        store::agents(&self.sql())
    }

    async fn ensure_mayor(&self, req: EnsureMayor) -> Reply<Agent> {
        self.admit_user(&req.caller)?;
        self.mayor_agent()
    }

    #[cfg(feature = "test-hooks")]
    async fn register_agent(&self, req: RegisterAgent) -> Reply<Agent> {
        self.require_town()?;
        if req.role == gastown_core::vocab::Role::Mayor {
            return Err(ApiError::invalid(
                "role",
                "a town's mayor is ensured, not registered",
            ));
        }
        let name = req.name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "name",
                "must be 1 to 64 printable characters",
            ));
        }
        if !store::rig_exists(&self.sql(), req.rig_id.as_str())? {
            return Err(ApiError::NotFound("rig not found in this town".into()));
        }
        let registered = self.insert_agent(req.role, Some(&req.rig_id), name)?;
        if !req.working {
            return Ok(registered);
        }
        store::set_agent_status(
            &self.sql(),
            registered.id.as_str(),
            gastown_core::model::AgentStatus::Working,
        )?;
        self.touch_agent(&registered.id)?;
        store::agent(&self.sql(), registered.id.as_str())?
            .ok_or_else(|| ApiError::internal("agent row missing"))
    }

    async fn rig_credentials(&self, req: RigCredentials) -> Reply<RigCredentialsReply> {
        let town = self.require_town()?;
        self.require_active(&town)?;
        if let Some(credential) = req.credential {
            self.admit(credential)?;
        }
        let rig = store::rig(&self.sql(), req.rig_id.as_str())?
            .ok_or_else(|| ApiError::NotFound("rig not found in this town".into()))?;
        let config = self.config(&town.id)?;
        let town_token = gastown_core::integrations::town_token_for(&config.git_auth, &rig.git_url)
            .map(str::to_owned);
        // An agent's work runs as the user who asked for it: its bead's creator.
        let sql = self.sql();
        let (worker, session_identity) = match &req.agent_id {
            Some(agent_id) => {
                let agent = store::agent(&sql, agent_id.as_str())?
                    .filter(|a| a.rig_id.as_ref() == Some(&rig.id))
                    .ok_or_else(|| ApiError::NotFound("no such agent of this rig".into()))?;
                let creator = match &agent.current_bead_id {
                    Some(bead) => store::bead(&sql, bead)?.map(|b| b.created_by),
                    None => None,
                };
                (creator, store::agent_git_identity(&sql, agent_id.as_str())?)
            }
            None => (None, None),
        };
        let as_user = match worker.filter(|u| gastown_core::ids::UserId::parse(u).is_ok()) {
            Some(user) => user,
            None => town.token_user_id()?.to_owned(),
        };
        Ok(RigCredentialsReply {
            town,
            rig,
            town_token,
            commit_as_user: config.commit_as_user,
            as_user,
            session_identity,
        })
    }

    async fn note_git_identity(&self, req: NoteGitIdentity) -> Reply<Ack> {
        self.require_town()?;
        let sql = self.sql();
        let agent = store::agent(&sql, req.agent_id.as_str())?
            .ok_or_else(|| ApiError::NotFound("no such agent".into()))?;
        store::set_agent_git_identity(&sql, agent.id.as_str(), &req.identity)?;
        if let Some(bead) = &agent.current_bead_id {
            store::event(
                &sql,
                bead,
                BeadEventKind::GitIdentity,
                &store::Actor::Agent(&agent.id),
                Some(&req.message),
                config::now_ms(),
            )?;
        }
        Ok(Ack::OK)
    }

    async fn refine_pull_request(&self, req: RefinePullRequest) -> Reply<PullRequestRefined> {
        let Some(town) = self.town()? else {
            return Ok(PullRequestRefined { state: None });
        };
        Ok(PullRequestRefined {
            state: self.refine_now(&town, &req.bead_id).await?,
        })
    }

    #[cfg(feature = "test-hooks")]
    async fn drop_alarm(&self, _: DropAlarm) -> Reply<Ack> {
        self.require_town()?;
        self.state
            .storage()
            .delete_alarm()
            .await
            .map_err(ApiError::internal)?;
        Ok(Ack::OK)
    }
}

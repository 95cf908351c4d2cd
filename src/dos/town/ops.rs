//! The operations of `TownDO`, one function each (`gastown_core::protocol::town`).

use super::{Meta, TownDO};
use crate::config;
use crate::storage::{
    bump_meta, count, exec, exists, json_text, meta, rig_values, rows, set_meta, town_values,
    RIG_COLUMNS, RIG_JSON, TOWN_COLUMNS,
};
use gastown_core::agent_settings::Role;
use gastown_core::beads::{Bead, BeadDetail};
use gastown_core::error::ApiError;
use gastown_core::ids::{AgentId, RigId};
use gastown_core::model::{Agent, Rig, Town, TownStatus, AGENT_COLUMNS, AGENT_JSON};
use gastown_core::protocol::container::{self as c, TokenPushed};
use gastown_core::protocol::town::*;
use gastown_core::protocol::{Ack, Json};
use gastown_core::time::rfc3339;
use gastown_core::town_config::TownConfig;
use serde::Deserialize;
use worker::SqlStorage;

type Reply<T> = Result<T, ApiError>;

fn not_running() -> ApiError {
    ApiError::Conflict("the town's container is not running; start it first".into())
}

/// One agent as its record, built by SQLite (`AGENT_JSON`) so the row's types need no mapping.
pub(super) fn agent(sql: &SqlStorage, id: &str) -> Reply<Option<Agent>> {
    crate::storage::json_record(sql, AGENT_JSON, "agents", id)
}

impl TownDO {
    /// Every rig override must name a rig of this town.
    fn check_override_rigs(&self, config: &TownConfig) -> Reply<()> {
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        let rigs: Vec<String> = rows::<Id>(&self.sql(), "SELECT id FROM rigs", vec![])?
            .into_iter()
            .map(|r| r.id)
            .collect();
        match config.rig_overrides.keys().find(|k| !rigs.contains(k)) {
            Some(unknown) => Err(ApiError::invalid(
                format!("rig_overrides.{unknown}"),
                "is not a rig of this town",
            )),
            None => Ok(()),
        }
    }
}

impl TownDO {
    /// Records a new idle agent, within `MAX_AGENTS_PER_TOWN`.
    pub(super) fn insert_agent(&self, role: Role, rig: Option<&RigId>, name: &str) -> Reply<Agent> {
        let sql = self.sql();
        let max = config::get(&self.env).quotas.agents_per_town;
        if count(&sql, "SELECT COUNT(*) AS n FROM agents", vec![])? >= max {
            return Err(ApiError::QuotaExceeded {
                limit: "MAX_AGENTS_PER_TOWN",
                max,
            });
        }
        let id = AgentId::parse(&config::new_id()?).map_err(ApiError::internal)?;
        exec(
            &sql,
            &format!(
                "INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?, ?, ?, ?, 'idle', NULL, 0, NULL, ?)"
            ),
            vec![
                id.as_str().into(),
                role.as_str().into(),
                name.into(),
                rig.map(RigId::as_str).into(),
                rfc3339(config::now_ms()).into(),
            ],
        )?;
        agent(&sql, id.as_str())?.ok_or_else(|| ApiError::internal("agent row missing"))
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
        exec(
            &self.sql(),
            &format!("INSERT INTO town ({TOWN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
            town_values(&town),
        )?;
        self.mint_gateway(&town)?;
        self.arm().await?;
        Ok(town)
    }

    async fn get(&self, _: Get) -> Reply<Town> {
        self.require_town()
    }

    /// The town is marked gone before the first await, so nothing that starts meanwhile (a
    /// container start, a token push) can proceed; the container DO is destroyed and left with
    /// a tombstone, so a late start cannot bring it back.
    async fn destroy(&self, _: Destroy) -> Reply<Ack> {
        let town = self.stored_town()?;
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
        exec(
            &self.sql(),
            &format!("INSERT OR REPLACE INTO rigs ({RIG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"),
            rig_values(&rig),
        )?;
        // The new rig gets its settings file.
        let config = self.config(&town.id)?;
        self.sync_env(&town, &config).await;
        Ok(Ack::OK)
    }

    async fn remove_rig(&self, RemoveRig { rig_id }: RemoveRig) -> Reply<Ack> {
        let town = self.require_town()?;
        let mut config = self.config(&town.id)?;
        let sql = self.sql();
        exec(
            &sql,
            "DELETE FROM rigs WHERE id = ?",
            vec![rig_id.as_str().into()],
        )?;
        exec(
            &sql,
            "DELETE FROM agents WHERE rig_id = ?",
            vec![rig_id.as_str().into()],
        )?;
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
        if self.town()?.is_none_or(|t| t.status == TownStatus::Stopped) {
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
        let rig_count = u32::try_from(count(&sql, "SELECT COUNT(*) AS n FROM rigs", vec![])?)
            .unwrap_or(u32::MAX);
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
        })
    }

    async fn get_config(&self, _: GetConfig) -> Reply<TownConfig> {
        let town = self.require_town()?;
        self.config(&town.id)
    }

    async fn patch_config(&self, PatchConfig { patch }: PatchConfig) -> Reply<TownConfig> {
        let town = self.require_town()?;
        let next = self.config(&town.id)?.apply(&patch)?;
        self.check_override_rigs(&next)?;
        self.store_config(&town.id, &next)?;
        self.sync_env(&town, &next).await;
        Ok(next)
    }

    async fn start_container(&self, _: StartContainer) -> Reply<TokenPushed> {
        let town = self.require_town()?;
        self.require_active(&town)?;
        let pushed = self.push_start(&town).await?;
        if !pushed.accepted {
            return Err(ApiError::Upstream("container start failed".into()));
        }
        Ok(pushed)
    }

    async fn force_token_refresh(&self, _: ForceTokenRefresh) -> Reply<TokenPushed> {
        let town = self.require_town()?;
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
        self.finish(&agent, &req.done)
    }

    async fn list_beads(&self, req: ListBeads) -> Reply<Json<Vec<Bead>>> {
        self.list_beads_page(&req.filter, &req.page).await
    }

    async fn create_bead(&self, req: CreateBead) -> Reply<Bead> {
        self.create_bead_row(req.bead, &req.created_by).await
    }

    async fn get_bead(&self, req: GetBead) -> Reply<Json<BeadDetail>> {
        self.bead_detail(&req.bead_id)
    }

    async fn patch_bead(&self, req: PatchBead) -> Reply<Bead> {
        self.patch_bead_row(&req.bead_id, req.patch, &req.user_id)
            .await
    }

    async fn delete_bead(&self, req: DeleteBead) -> Reply<Ack> {
        self.delete_bead_row(&req.bead_id).await?;
        Ok(Ack::OK)
    }

    async fn mayor_rigs(&self, req: MayorRigs) -> Reply<Json<Vec<Rig>>> {
        let town = self.require_town()?;
        self.require_active(&town)?;
        self.admit(req.credential)?;
        let text = json_text(
            &self.sql(),
            &format!(
                "SELECT COALESCE(json_group_array({RIG_JSON} ORDER BY created_at, id), '[]') AS j FROM rigs"
            ),
            vec![],
        )?;
        Json::from_text(text.unwrap_or_else(|| "[]".to_owned()))
    }

    async fn stop_town(&self, _: StopTown) -> Reply<Town> {
        let mut town = self.require_town()?;
        if town.status == TownStatus::Stopped {
            return Ok(town);
        }
        let _alone = self.begin_transition()?;
        // Stopped first, so nothing that runs meanwhile starts or pushes anything; then every
        // container token is rotated away and the loop ends.
        self.set_status(TownStatus::Stopped)?;
        town.status = TownStatus::Stopped;
        self.release_work("the town was stopped")?;
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

    async fn start_town(&self, _: StartTown) -> Reply<TownStarted> {
        let mut town = self.require_town()?;
        if town.status == TownStatus::Active {
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
            // The container asked for it, so it holds it now: the alarm need not push one.
            set_meta(
                &self.sql(),
                Meta::GatewayExpiresAt,
                u64::try_from(expires_at).unwrap_or(0),
            )?;
        }
        Ok(IssuedToken { token, expires_at })
    }

    async fn list_agents(&self, _: ListAgents) -> Reply<Json<Vec<Agent>>> {
        self.require_town()?;
        let text = json_text(
            &self.sql(),
            &format!(
                "SELECT COALESCE(json_group_array({AGENT_JSON} ORDER BY created_at, id), '[]') AS j FROM agents"
            ),
            vec![],
        )?;
        Json::from_text(text.unwrap_or_else(|| "[]".to_owned()))
    }

    async fn ensure_mayor(&self, _: EnsureMayor) -> Reply<Agent> {
        self.require_town()?;
        let sql = self.sql();
        let mayor = json_text(
            &sql,
            &format!("SELECT {AGENT_JSON} AS j FROM agents WHERE role = 'mayor'"),
            vec![],
        )?;
        if let Some(text) = mayor {
            return serde_json::from_str(&text)
                .map_err(|e| ApiError::internal(format!("agent row: {e}")));
        }
        self.insert_agent(Role::Mayor, None, "mayor")
    }

    async fn register_agent(&self, req: RegisterAgent) -> Reply<Agent> {
        self.require_town()?;
        if req.role == Role::Mayor {
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
        if !exists(
            &self.sql(),
            "SELECT 1 FROM rigs WHERE id = ?",
            vec![req.rig_id.as_str().into()],
        )? {
            return Err(ApiError::NotFound("rig not found in this town".into()));
        }
        let registered = self.insert_agent(req.role, Some(&req.rig_id), name)?;
        if !req.working {
            return Ok(registered);
        }
        exec(
            &self.sql(),
            "UPDATE agents SET status = 'working' WHERE id = ?",
            vec![registered.id.as_str().into()],
        )?;
        self.touch_agent(&registered.id)?;
        agent(&self.sql(), registered.id.as_str())?
            .ok_or_else(|| ApiError::internal("agent row missing"))
    }

    async fn rig_credentials(&self, req: RigCredentials) -> Reply<RigCredentialsReply> {
        let town = self.require_town()?;
        self.require_active(&town)?;
        if let Some(credential) = req.credential {
            self.admit(credential)?;
        }
        let rig: Rig = crate::storage::first(
            &self.sql(),
            &format!("SELECT {RIG_COLUMNS} FROM rigs WHERE id = ?"),
            vec![req.rig_id.as_str().into()],
        )?
        .ok_or_else(|| ApiError::NotFound("rig not found in this town".into()))?;
        let config = self.config(&town.id)?;
        let town_token = gastown_core::integrations::town_token_for(&config.git_auth, &rig.git_url)
            .map(str::to_owned);
        Ok(RigCredentialsReply {
            town,
            rig,
            town_token,
            commit_as_user: config.commit_as_user,
        })
    }

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

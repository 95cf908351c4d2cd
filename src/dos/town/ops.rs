//! The operations of `TownDO`, one function each (`gastown_core::protocol::town`).

use super::{Meta, TownDO};
use crate::config;
use crate::storage::{
    bump_meta, count, exec, exists, int, json_text, meta, rig_values, rows, set_meta, town_values,
    RIG_COLUMNS, RIG_JSON, TOWN_COLUMNS,
};
use gastown_core::error::ApiError;
use gastown_core::model::{Rig, Town};
use gastown_core::protocol::container::{self as c, TokenPushed};
use gastown_core::protocol::town::*;
use gastown_core::protocol::{Ack, Json};
use gastown_core::time::rfc3339;
use gastown_core::town_config::{container_env, TownConfig};
use serde::Deserialize;
use worker::console_error;

type Reply<T> = Result<T, ApiError>;

fn not_running() -> ApiError {
    ApiError::Conflict("the town's container is not running; start it first".into())
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

    /// Hands the env derived from `config` to the container DO. The config is already stored, so
    /// a failure here is logged, not returned: the next start pushes the stored env.
    async fn sync_env(&self, town: &Town, config: &TownConfig) {
        let sync = c::SyncEnv {
            town_id: town.id.clone(),
            env: container_env(config),
        };
        let result = match self.container(&town.id) {
            Ok(stub) => stub.call(sync).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            console_error!("town {}: env sync failed: {e}", town.id);
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
        exec(
            &self.sql(),
            &format!("INSERT INTO town ({TOWN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
            town_values(&town),
        )?;
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
        Ok(Ack::OK)
    }

    async fn remove_rig(&self, RemoveRig { rig_id }: RemoveRig) -> Reply<Ack> {
        let town = self.require_town()?;
        let mut config = self.config(&town.id)?;
        exec(
            &self.sql(),
            "DELETE FROM rigs WHERE id = ?",
            vec![rig_id.as_str().into()],
        )?;
        if config.rig_overrides.remove(rig_id.as_str()).is_some() {
            self.store_config(&town.id, &config)?;
            self.sync_env(&town, &config).await;
        }
        Ok(Ack::OK)
    }

    async fn ensure_alarm(&self, _: EnsureAlarm) -> Reply<AlarmArmed> {
        if self.town()?.is_none() {
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
        if self.generation()?.current == 0 {
            self.advance_generation()?;
        }
        let (token, expires_at) = self.mint(&town)?;
        let start = c::Start {
            town_id: town.id.clone(),
            token,
            expires_at,
            env: container_env(&self.config(&town.id)?),
        };
        let pushed = self
            .container(&town.id)?
            .call(start)
            .await
            .map_err(super::gone_is_not_found)?;
        self.still_here()?;
        self.record_push(pushed)?;
        if !pushed.accepted {
            return Err(ApiError::Upstream("container start failed".into()));
        }
        set_meta(&self.sql(), Meta::ContainerStarted, 1)?;
        Ok(pushed)
    }

    async fn force_token_refresh(&self, _: ForceTokenRefresh) -> Reply<TokenPushed> {
        let town = self.require_town()?;
        if !self.container_started()? {
            return Err(not_running());
        }
        self.advance_generation()?;
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
        if !self.container_started()? {
            return Err(not_running());
        }
        self.admit(req.credential)?;
        let (token, expires_at) = self.mint(&town)?;
        Ok(IssuedToken { token, expires_at })
    }

    async fn heartbeat(&self, req: Heartbeat) -> Reply<Ack> {
        let Heartbeat {
            credential,
            rig_id,
            agent_id,
        } = req;
        self.require_town()?;
        self.admit(credential)?;
        let sql = self.sql();
        if !exists(
            &sql,
            "SELECT 1 FROM rigs WHERE id = ?",
            vec![rig_id.as_str().into()],
        )? {
            return Err(ApiError::NotFound("rig not found in this town".into()));
        }
        let known = exists(
            &sql,
            "SELECT 1 FROM agents WHERE id = ?",
            vec![agent_id.as_str().into()],
        )?;
        let max = config::get(&self.env).quotas.agents_per_town;
        if !known && count(&sql, "SELECT COUNT(*) AS n FROM agents", vec![])? >= max {
            return Err(ApiError::QuotaExceeded {
                limit: "MAX_AGENTS_PER_TOWN",
                max,
            });
        }
        exec(
            &sql,
            "INSERT INTO agents (id, rig_id, last_heartbeat_at, heartbeats) VALUES (?, ?, ?, 1) ON CONFLICT (id) DO UPDATE SET rig_id = excluded.rig_id, last_heartbeat_at = excluded.last_heartbeat_at, heartbeats = heartbeats + 1",
            vec![agent_id.as_str().into(), rig_id.as_str().into(), int(config::now_ms())],
        )?;
        Ok(Ack::OK)
    }

    async fn mayor_rigs(&self, req: MayorRigs) -> Reply<Json<Vec<Rig>>> {
        self.require_town()?;
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

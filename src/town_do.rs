//! `TownDO`: one per town id. Holds the town's identity and ownership, its rigs registry (kept in
//! step with the owner DO by the router), and runs the town's main loop as an alarm.
//!
//! Lifecycle: `Init` records identity and arms the alarm; `Destroy` deletes the alarm and all
//! storage, after which the town answers 404 and an alarm that still fires deletes itself.

use crate::config;
use crate::container_do;
use crate::http::call;
use crate::http::{read_rpc, rpc_response};
use crate::storage::{
    exec, first, meta, rig_values, rows, set_meta, town_values, Schema, RIG_COLUMNS, TOWN_COLUMNS,
};
use gastown_core::auth::sign_container;
use gastown_core::body::json_error_summary;
use gastown_core::do_api::{
    token_refresh_due, Ack, AlarmArmed, ContainerRequest, EnvSynced, IssuedToken, TokenPushed,
    TownHealth, TownRequest,
};
use gastown_core::error::ApiError;
use gastown_core::ids::TownId;
use gastown_core::model::Rig;
use gastown_core::model::Town;
use gastown_core::schema;
use gastown_core::time::rfc3339;
use gastown_core::town_config::{container_env, TownConfig};
use serde::Deserialize;
use serde_json::Value;
use worker::{
    console_error, durable_object, DurableObject, Env, Request, Response, Result, State, Stub,
};

pub const BINDING: &str = "TOWN";

/// The DO of `town`.
///
/// # Errors
/// Internal, when the binding is missing.
pub fn stub(env: &Env, town: &TownId) -> std::result::Result<Stub, ApiError> {
    env.durable_object(BINDING)
        .and_then(|ns| ns.get_by_name(town.as_str()))
        .map_err(ApiError::internal)
}

type Outcome = std::result::Result<Value, ApiError>;

/// What a town's sealed config is bound to.
fn config_aad(town: &TownId) -> String {
    format!("town-config:{town}")
}

#[durable_object]
pub struct TownDO {
    state: State,
    env: Env,
    schema: Schema,
}

fn json<T: serde::Serialize>(value: T) -> Outcome {
    serde_json::to_value(value).map_err(ApiError::internal)
}

impl TownDO {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> std::result::Result<(), ApiError> {
        self.schema.ensure(&self.sql(), config::now_ms())
    }

    fn town(&self) -> std::result::Result<Option<Town>, ApiError> {
        first(
            &self.sql(),
            &format!("SELECT {TOWN_COLUMNS} FROM town LIMIT 1"),
            vec![],
        )
    }

    fn require_town(&self) -> std::result::Result<Town, ApiError> {
        self.town()?
            .ok_or_else(|| ApiError::NotFound("town not found".into()))
    }

    /// Every rig override must name a rig of this town.
    fn check_override_rigs(&self, config: &TownConfig) -> std::result::Result<(), ApiError> {
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

    /// Stores the config sealed (it holds secrets), bound to this town.
    fn store_config(
        &self,
        town: &TownId,
        config: &TownConfig,
    ) -> std::result::Result<(), ApiError> {
        let plain = serde_json::to_vec(config).map_err(ApiError::internal)?;
        let stored = config::get(&self.env)
            .sealer
            .seal(&plain, &config_aad(town), config::nonce()?)
            .map_err(ApiError::internal)?;
        exec(
            &self.sql(),
            "INSERT INTO config (id, json) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET json = excluded.json",
            vec![stored.into()],
        )
    }

    /// The stored config, or the default for a town that never set one.
    fn config(&self, town: &TownId) -> std::result::Result<TownConfig, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            json: String,
        }
        match first::<Row>(&self.sql(), "SELECT json FROM config WHERE id = 1", vec![])? {
            Some(row) => {
                let plain = config::get(&self.env)
                    .sealer
                    .open(&row.json, &config_aad(town))
                    .map_err(ApiError::internal)?;
                serde_json::from_slice(&plain).map_err(|e| {
                    ApiError::internal(format!("stored config: {}", json_error_summary(&e)))
                })
            }
            None => Ok(TownConfig::default()),
        }
    }

    /// A container token for `town`, carrying its owner's identity (the creator for org towns,
    /// the town id if none is recorded).
    fn mint(&self, town: &Town) -> std::result::Result<(String, i64), ApiError> {
        let now = i64::try_from(config::now_ms() / 1000).unwrap_or(i64::MAX);
        sign_container(
            &config::get(&self.env).keys,
            &town.id,
            town.token_user_id(),
            now,
        )
        .map_err(|e| ApiError::internal(format!("minting a container token: {}", e.message())))
    }

    /// Mints a token and pushes it to the running container. The throttle moves only when the
    /// container accepted it.
    async fn refresh_token(&self, town: &Town) -> std::result::Result<TokenPushed, ApiError> {
        let (token, expires_at) = self.mint(town)?;
        let push = ContainerRequest::PushToken {
            town_id: town.id.clone(),
            token,
            expires_at,
        };
        let pushed: TokenPushed = call(&container_do::stub(&self.env, &town.id)?, &push).await?;
        self.record_push(&pushed)?;
        Ok(pushed)
    }

    fn record_push(&self, pushed: &TokenPushed) -> std::result::Result<(), ApiError> {
        let sql = self.sql();
        if pushed.accepted {
            set_meta(&sql, "token_refreshed_at", config::now_ms())?;
            let n = meta(&sql, "token_refreshes")?.unwrap_or(0);
            set_meta(&sql, "token_refreshes", n + 1)
        } else {
            let n = meta(&sql, "token_refresh_failures")?.unwrap_or(0);
            set_meta(&sql, "token_refresh_failures", n + 1)
        }
    }

    /// Hands the env derived from `config` to the container DO. The config is already stored, so
    /// a failure here is logged, not returned: the next start pushes the stored env.
    async fn sync_env(&self, config: &TownConfig) {
        let Ok(Some(town)) = self.town() else {
            return;
        };
        let sync = ContainerRequest::SyncEnv {
            town_id: town.id.clone(),
            env: container_env(config),
        };
        let result = match container_do::stub(&self.env, &town.id) {
            Ok(stub) => call::<_, EnvSynced>(&stub, &sync).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            console_error!("town {}: env sync failed: {e}", town.id);
        }
    }

    async fn arm(&self) -> std::result::Result<(), ApiError> {
        let ms = config::get(&self.env).town_alarm_ms;
        self.state
            .storage()
            .set_alarm(i64::try_from(ms).unwrap_or(i64::MAX))
            .await
            .map_err(ApiError::internal)
    }

    async fn serve(&self, request: TownRequest) -> Outcome {
        self.ensure_schema()?;
        match request {
            TownRequest::Init { town } => self.init(town).await,
            TownRequest::Get => json(self.require_town()?),
            TownRequest::Destroy => {
                if let Some(town) = self.town()? {
                    let _: Ack = call(
                        &container_do::stub(&self.env, &town.id)?,
                        &ContainerRequest::Destroy,
                    )
                    .await?;
                }
                let storage = self.state.storage();
                storage.delete_alarm().await.map_err(ApiError::internal)?;
                storage.delete_all().await.map_err(ApiError::internal)?;
                self.schema.reset();
                json(Ack { ok: true })
            }
            TownRequest::AddRig { rig } => {
                let town = self.require_town()?;
                if rig.town_id != town.id {
                    return Err(ApiError::internal("rig registered with the wrong town"));
                }
                exec(
                    &self.sql(),
                    &format!(
                        "INSERT OR REPLACE INTO rigs ({RIG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    ),
                    rig_values(&rig),
                )?;
                json(Ack { ok: true })
            }
            TownRequest::RemoveRig { rig_id } => {
                let town = self.require_town()?;
                let mut config = self.config(&town.id)?;
                if config.rig_overrides.remove(rig_id.as_str()).is_some() {
                    self.store_config(&town.id, &config)?;
                    self.sync_env(&config).await;
                }
                exec(
                    &self.sql(),
                    "DELETE FROM rigs WHERE id = ?",
                    vec![rig_id.as_str().into()],
                )?;
                json(Ack { ok: true })
            }
            TownRequest::EnsureAlarm => {
                if self.town()?.is_none() {
                    return json(AlarmArmed { rearmed: false });
                }
                let pending = self
                    .state
                    .storage()
                    .get_alarm()
                    .await
                    .map_err(ApiError::internal)?;
                if pending.is_none() {
                    self.arm().await?;
                    let sql = self.sql();
                    let rearms = meta(&sql, "watchdog_rearms")?.unwrap_or(0);
                    set_meta(&sql, "watchdog_rearms", rearms + 1)?;
                }
                json(AlarmArmed {
                    rearmed: pending.is_none(),
                })
            }
            TownRequest::Health => self.health().await,
            TownRequest::GetConfig => {
                let town = self.require_town()?;
                json(self.config(&town.id)?)
            }
            TownRequest::PatchConfig { body } => {
                let town = self.require_town()?;
                let next = self.config(&town.id)?.patched(body.as_bytes())?;
                self.check_override_rigs(&next)?;
                self.store_config(&town.id, &next)?;
                self.sync_env(&next).await;
                json(next)
            }
            TownRequest::StartContainer => {
                let town = self.require_town()?;
                let (token, expires_at) = self.mint(&town)?;
                let env = container_env(&self.config(&town.id)?);
                let start = ContainerRequest::Start {
                    town_id: town.id.clone(),
                    token,
                    expires_at,
                    env,
                };
                let pushed: TokenPushed =
                    call(&container_do::stub(&self.env, &town.id)?, &start).await?;
                self.record_push(&pushed)?;
                if pushed.accepted {
                    set_meta(&self.sql(), "container_started", 1)?;
                    json(pushed)
                } else {
                    Err(ApiError::Upstream("container start failed".into()))
                }
            }
            TownRequest::ForceTokenRefresh => {
                let town = self.require_town()?;
                if meta(&self.sql(), "container_started")?.unwrap_or(0) != 1 {
                    return Err(ApiError::Conflict(
                        "the town's container is not running; start it first".into(),
                    ));
                }
                let pushed = self.refresh_token(&town).await?;
                if pushed.accepted {
                    json(pushed)
                } else {
                    Err(ApiError::Upstream(
                        "container did not accept the token".into(),
                    ))
                }
            }
            TownRequest::IssueContainerToken => {
                let town = self.require_town()?;
                let (token, expires_at) = self.mint(&town)?;
                json(IssuedToken { token, expires_at })
            }
            TownRequest::Heartbeat { rig_id, agent_id } => {
                self.require_town()?;
                let sql = self.sql();
                #[derive(Deserialize)]
                struct Found {
                    #[allow(dead_code)]
                    id: String,
                }
                if first::<Found>(
                    &sql,
                    "SELECT id FROM rigs WHERE id = ?",
                    vec![rig_id.as_str().into()],
                )?
                .is_none()
                {
                    return Err(ApiError::NotFound("rig not found in this town".into()));
                }
                exec(
                    &sql,
                    "INSERT INTO agents (id, rig_id, last_heartbeat_at, heartbeats) VALUES (?, ?, ?, 1) ON CONFLICT (id) DO UPDATE SET rig_id = excluded.rig_id, last_heartbeat_at = excluded.last_heartbeat_at, heartbeats = heartbeats + 1",
                    vec![agent_id.as_str().into(), rig_id.as_str().into(), crate::storage::int(config::now_ms())],
                )?;
                json(Ack { ok: true })
            }
            TownRequest::MayorRigs => {
                self.require_town()?;
                json(rows::<Rig>(
                    &self.sql(),
                    &format!("SELECT {RIG_COLUMNS} FROM rigs ORDER BY created_at, id"),
                    vec![],
                )?)
            }
            TownRequest::DropAlarm => {
                self.require_town()?;
                self.state
                    .storage()
                    .delete_alarm()
                    .await
                    .map_err(ApiError::internal)?;
                json(Ack { ok: true })
            }
        }
    }

    async fn init(&self, town: Town) -> Outcome {
        if let Some(existing) = self.town()? {
            if existing.id == town.id {
                return json(existing);
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
        json(town)
    }

    async fn health(&self) -> Outcome {
        let town = self.require_town()?;
        let sql = self.sql();
        #[derive(Deserialize)]
        struct Count {
            n: f64,
        }
        let rig_count = rows::<Count>(&sql, "SELECT COUNT(*) AS n FROM rigs", vec![])?
            .first()
            .map_or(0, |c| c.n as u32);
        let alarm_at = self
            .state
            .storage()
            .get_alarm()
            .await
            .map_err(ApiError::internal)?
            .and_then(|ms| u64::try_from(ms).ok());
        json(TownHealth {
            town_id: town.id,
            status: town.status.as_str().to_owned(),
            rig_count,
            alarm_at,
            alarm_runs: meta(&sql, "alarm_runs")?.unwrap_or(0),
            watchdog_rearms: meta(&sql, "watchdog_rearms")?.unwrap_or(0),
            token_refreshed_at: meta(&sql, "token_refreshed_at")?.map(rfc3339),
            token_refreshes: meta(&sql, "token_refreshes")?.unwrap_or(0),
            token_refresh_failures: meta(&sql, "token_refresh_failures")?.unwrap_or(0),
            last_alarm_at: meta(&sql, "last_alarm_at")?.map(rfc3339),
        })
    }

    async fn tick(&self) -> std::result::Result<(), ApiError> {
        self.ensure_schema()?;
        if self.town()?.is_none() {
            // Destroyed or never initialised: let the alarm die with it.
            self.state
                .storage()
                .delete_alarm()
                .await
                .map_err(ApiError::internal)?;
            return Ok(());
        }
        // Reschedule first, so a failure in the work below cannot stop the loop.
        self.arm().await?;
        let sql = self.sql();
        let runs = meta(&sql, "alarm_runs")?.unwrap_or(0);
        set_meta(&sql, "alarm_runs", runs + 1)?;
        set_meta(&sql, "last_alarm_at", config::now_ms())?;
        let started = meta(&sql, "container_started")?.unwrap_or(0) == 1;
        let throttle = config::get(&self.env).token_refresh_ms;
        if started
            && token_refresh_due(
                meta(&sql, "token_refreshed_at")?,
                config::now_ms(),
                throttle,
            )
        {
            if let Some(town) = self.town()? {
                match self.refresh_token(&town).await {
                    Ok(TokenPushed { accepted: true, .. }) => {}
                    Ok(_) => console_error!(
                        "town {}: container refused the refreshed token; retrying next tick",
                        town.id
                    ),
                    Err(e) => console_error!("town {}: token refresh failed: {e}", town.id),
                }
            }
        }
        Ok(())
    }
}

impl DurableObject for TownDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            schema: Schema::new(schema::TOWN_DO),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let result = match read_rpc::<TownRequest>(&mut req).await {
            Ok(request) => self.serve(request).await,
            Err(e) => Err(e),
        };
        rpc_response(result)
    }

    async fn alarm(&self) -> Result<Response> {
        if let Err(e) = self.tick().await {
            console_error!("town alarm failed: {e}");
        }
        Response::ok("ok")
    }
}

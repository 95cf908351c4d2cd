//! `TownDO`: one per town id. Holds the town's identity and ownership, its config (sealed), its
//! rigs registry, its agents and beads, and runs the town's main loop as an alarm whose
//! decisions come from `gastown_core::policy` and `gastown_core::transitions`. It is the one
//! writer of the town's status: a stop or start tells the owner's DO itself.
//!
//! The loop has two cadences: while the town has work (an open or running issue, a working
//! agent) it runs every `TOWN_ALARM_ACTIVE_MS`, patrols, refreshes the container's tokens and
//! dispatches; an idle town's loop runs every `TOWN_ALARM_INTERVAL_MS`, pushes and pings
//! nothing, and stops the container after `CONTAINER_IDLE_STOP_MS`.
//!
//! Lifecycle: `init` records identity and arms the alarm; `destroy` deletes the alarm and all
//! storage, after which the town answers 404 and an alarm that still fires deletes itself.
//!
//! Where things are: this file holds the struct, the access checks of town routes (inside the
//! operation, so a town route is one round trip), the config at rest and the alarm. Each
//! operation is a short function in `ops.rs` that calls into its concern: `beads.rs`,
//! `dispatch.rs`, `patrol.rs`, `callbacks.rs` and `tokens.rs`; every query is in `store.rs`.

mod beads;
mod callbacks;
mod dispatch;
mod health;
mod mayor;
mod ops;
mod patrol;
mod refinery;
mod store;
mod streams;
mod tokens;

use super::container::{self as container_do, ContainerStub};
use super::{rpc_entry, DoStub};
use crate::config;
use crate::http::error_response;
use crate::storage::{bump_meta, meta, set_meta, MetaKey, Schema};
use gastown_core::authz::{self, TownCaller, TownRole};
use gastown_core::body::json_error_summary;
use gastown_core::error::ApiError;
use gastown_core::ids::TownId;
use gastown_core::model::{Town, TownStatus};
use gastown_core::policy::{self, TickEffect, TickInput};
use gastown_core::protocol::container::TokenPushed;
use gastown_core::protocol::owner::SetTownStatus;
use gastown_core::protocol::town::TownOp;
use gastown_core::schema;
use gastown_core::town_config::TownConfig;
use std::cell::Cell;
use worker::{
    console_error, durable_object, DurableObject, Env, Request, Response, Result, SqlStorage,
    State, WebSocket, WebSocketIncomingMessage,
};

pub const BINDING: &str = "TOWN";

/// A stub of a town's DO.
pub type TownStub = DoStub<TownOp>;

/// The DO of `town`.
///
/// # Errors
/// Internal, when the binding is missing.
pub fn stub(env: &Env, town: &TownId) -> std::result::Result<TownStub, ApiError> {
    DoStub::get(env, BINDING, town.as_str())
}

/// The keys of this DO's `meta` table.
#[derive(Debug, Clone, Copy)]
enum Meta {
    AlarmRuns,
    LastAlarmAt,
    WatchdogRearms,
    /// 1 once the container accepted its first token.
    ContainerStarted,
    /// When the container last accepted a token (the refresh throttle).
    TokenRefreshedAt,
    TokenRefreshes,
    TokenRefreshFailures,
    /// The container-token generation (`policy::TokenGeneration`) and when it began.
    TokenGeneration,
    TokenGenerationSince,
    /// The generation of the token the container last accepted: behind the current one after
    /// a rotation whose push was refused, and then the next tick pushes at once.
    TokenAcceptedGeneration,
    /// Set when a destroy begins: from then on the town answers 404 and starts nothing, even
    /// if this instance is evicted before the destroy finishes (a retried destroy finishes it).
    Destroying,
    /// `exp` of the gateway token last minted (now the town's `kilocode_token`).
    GatewayMintedExpiresAt,
    /// `exp` of the gateway token the container holds: set only when it accepted one (or
    /// fetched one itself), so a refused push is retried by the next tick.
    GatewayExpiresAt,
    GatewayRefreshes,
    GatewayRefreshFailures,
    /// When the town last had work (or its container last started): the idle timeout counts
    /// from here.
    WorkSeenAt,
    Dispatches,
    DispatchFailures,
    /// The dispatch breaker (`policy::Breaker`).
    BreakerFailures,
    BreakerOpenUntil,
    Stalls,
    IdleStops,
    /// Agents an eviction drain stopped, their beads resumed on their branches.
    Drains,
    /// Working agents handed back because their container was evicted or restarted.
    EvictionResets,
    /// The last health check of the running container, and the last it answered.
    ContainerProbedAt,
    ContainerAnsweredAt,
    /// Restarts of a wedged container: all time, and in the current window
    /// (`policy::Restarts`).
    WedgeRestarts,
    RestartWindowStart,
    RestartsInWindow,
    /// The breaker a container past its restart cap opened: until when (ms), and for how long
    /// it had been silent (ms) when it opened (the reason is said from these).
    WedgeBreakerUntil,
}

impl MetaKey for Meta {
    fn key(self) -> &'static str {
        match self {
            Meta::AlarmRuns => "alarm_runs",
            Meta::LastAlarmAt => "last_alarm_at",
            Meta::WatchdogRearms => "watchdog_rearms",
            Meta::ContainerStarted => "container_started",
            Meta::TokenRefreshedAt => "token_refreshed_at",
            Meta::TokenRefreshes => "token_refreshes",
            Meta::TokenRefreshFailures => "token_refresh_failures",
            Meta::TokenGeneration => "token_generation",
            Meta::TokenGenerationSince => "token_generation_since",
            Meta::TokenAcceptedGeneration => "token_accepted_generation",
            Meta::Destroying => "destroying",
            Meta::GatewayMintedExpiresAt => "gateway_minted_expires_at",
            Meta::GatewayExpiresAt => "gateway_expires_at",
            Meta::GatewayRefreshes => "gateway_refreshes",
            Meta::GatewayRefreshFailures => "gateway_refresh_failures",
            Meta::WorkSeenAt => "work_seen_at",
            Meta::Dispatches => "dispatches",
            Meta::DispatchFailures => "dispatch_failures",
            Meta::BreakerFailures => "breaker_failures",
            Meta::BreakerOpenUntil => "breaker_open_until",
            Meta::Stalls => "stalls",
            Meta::IdleStops => "idle_stops",
            Meta::Drains => "drains",
            Meta::EvictionResets => "eviction_resets",
            Meta::ContainerProbedAt => "container_probed_at",
            Meta::ContainerAnsweredAt => "container_answered_at",
            Meta::WedgeRestarts => "wedge_restarts",
            Meta::RestartWindowStart => "restart_window_start",
            Meta::RestartsInWindow => "restarts_in_window",
            Meta::WedgeBreakerUntil => "wedge_breaker_until",
        }
    }
}

fn town_not_found() -> ApiError {
    ApiError::NotFound("town not found".into())
}

/// A container DO that answers 410 is a destroyed town's tombstone.
fn gone_is_not_found(e: ApiError) -> ApiError {
    match e {
        ApiError::Gone(_) => town_not_found(),
        other => other,
    }
}

/// What a town's sealed config is bound to.
fn config_aad(town: &TownId) -> String {
    format!("town-config:{town}")
}

#[durable_object]
pub struct TownDO {
    state: State,
    env: Env,
    schema: Schema,
    /// Set by `destroy` before its first await: an operation that resumes after an await finds
    /// the town gone instead of writing into wiped storage.
    destroyed: Cell<bool>,
    destroy_checked: Cell<bool>,
    /// Set while a stop or start is under way: the other waits its turn (409), so the two
    /// never interleave their container calls.
    transition: Cell<bool>,
    /// The town stream's position last sent to its sockets (`streams.rs`); `None` until read.
    stream_cursor: Cell<Option<u64>>,
}

impl TownDO {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// The town, if this DO holds one and it is not being destroyed. A DO that was never
    /// initialised has no tables, and is not given any by a read.
    fn town(&self) -> std::result::Result<Option<Town>, ApiError> {
        if self.destroyed.get() {
            return Ok(None);
        }
        let Some(town) = self.stored_town()? else {
            return Ok(None);
        };
        // Once per instance: did an earlier instance begin a destroy it could not finish?
        if !self.destroy_checked.get() {
            self.destroy_checked.set(true);
            if meta(&self.sql(), Meta::Destroying)?.is_some() {
                self.destroyed.set(true);
                return Ok(None);
            }
        }
        Ok(Some(town))
    }

    /// The stored town row, even while it is being destroyed.
    fn stored_town(&self) -> std::result::Result<Option<Town>, ApiError> {
        if !self.schema.ensure_existing(&self.sql(), config::now_ms())? {
            return Ok(None);
        }
        store::town(&self.sql())
    }

    fn require_town(&self) -> std::result::Result<Town, ApiError> {
        self.town()?.ok_or_else(town_not_found)
    }

    /// After an await: the town may have been destroyed meanwhile.
    fn still_here(&self) -> std::result::Result<(), ApiError> {
        if self.destroyed.get() {
            Err(town_not_found())
        } else {
            Ok(())
        }
    }

    /// The town and what a town route's caller is to it: 404 for an unknown or destroyed town,
    /// 403 for a caller its ownership does not admit. Decided here, from the town's own record,
    /// in the same call as the operation.
    fn admit_user(&self, caller: &TownCaller) -> std::result::Result<(Town, TownRole), ApiError> {
        let town = self.require_town()?;
        let role = caller.role_in(&town)?;
        Ok((town, role))
    }

    /// As [`TownDO::admit_user`], for what only those who manage the town may do (`what`).
    fn admit_manager(
        &self,
        caller: &TownCaller,
        what: &str,
    ) -> std::result::Result<Town, ApiError> {
        let (town, role) = self.admit_user(caller)?;
        authz::require_manager(role, what)?;
        Ok(town)
    }

    /// The owner's DO keeps a copy of the town's status for its lists; this DO is the one
    /// writer of that fact and tells it after every stop and start.
    async fn tell_owner_status(&self, town: &Town) -> std::result::Result<(), ApiError> {
        super::owner::stub(&self.env, &town.owner)?
            .call(SetTownStatus {
                town_id: town.id.clone(),
                status: town.status,
            })
            .await?;
        Ok(())
    }

    /// A stopped town does no work: only stop, start, reads and config changes reach it.
    fn require_active(&self, town: &Town) -> std::result::Result<(), ApiError> {
        match town.status {
            TownStatus::Active => Ok(()),
            TownStatus::Stopped => Err(ApiError::TownStopped),
            TownStatus::CreatorDeleted => Err(ApiError::CreatorDeleted),
        }
    }

    /// The status as stored now (after an await, another call may have changed it).
    fn stored_status(&self) -> std::result::Result<TownStatus, ApiError> {
        Ok(self
            .stored_town()?
            .map_or(TownStatus::Stopped, |t| t.status))
    }

    /// Runs a stop or start alone: a second one arriving meanwhile is told to retry (409).
    fn begin_transition(&self) -> std::result::Result<TransitionGuard<'_>, ApiError> {
        if self.transition.replace(true) {
            return Err(ApiError::Conflict(
                "the town is being stopped or started; try again".into(),
            ));
        }
        Ok(TransitionGuard(&self.transition))
    }

    /// The one writer of the town's status: a town that is no longer active closes its streams.
    fn set_status(&self, status: TownStatus) -> std::result::Result<(), ApiError> {
        store::set_town_status(&self.sql(), status)?;
        self.streams_follow_status(status);
        Ok(())
    }

    fn container(&self, town: &TownId) -> std::result::Result<ContainerStub, ApiError> {
        container_do::stub(&self.env, town)
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
        store::store_sealed_config(&self.sql(), stored)
    }

    /// The stored config, or the default for a town that never set one.
    fn config(&self, town: &TownId) -> std::result::Result<TownConfig, ApiError> {
        match store::sealed_config(&self.sql())? {
            Some(sealed) => {
                let plain = config::get(&self.env)
                    .sealer
                    .open(&sealed, &config_aad(town))
                    .map_err(ApiError::internal)?;
                serde_json::from_slice(&plain).map_err(|e| {
                    ApiError::internal(format!("stored config: {}", json_error_summary(&e)))
                })
            }
            None => Ok(TownConfig::default()),
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

    /// One run of the main loop: re-arm first, so that nothing below can end the loop; then
    /// gather the inputs, let the policy decide, and apply its effects.
    async fn tick(&self) -> std::result::Result<(), ApiError> {
        self.arm().await?;
        if let Some(problem) = &config::get(&self.env).refused {
            return Err(ApiError::internal(format!(
                "configuration refused: {problem}"
            )));
        }
        let town = self.town()?;
        let sql = self.sql();
        let settings = config::get(&self.env);
        let active = town
            .as_ref()
            .is_some_and(|t| t.status == TownStatus::Active);
        let has_work = active && self.has_work()?;
        if has_work {
            set_meta(&sql, Meta::WorkSeenAt, config::now_ms())?;
        }
        let current_generation = self.generation()?.current;
        let input = TickInput {
            town_exists: town.is_some(),
            town_active: active,
            container_started: town.is_some() && self.container_started()?,
            token_accepted_at_ms: meta(&sql, Meta::TokenRefreshedAt)?,
            token_generation_behind: meta(&sql, Meta::TokenAcceptedGeneration)?
                .is_some_and(|accepted| accepted < current_generation),
            now_ms: config::now_ms(),
            token_refresh_ms: settings.token_refresh_ms,
            gateway_expires_at_s: meta(&sql, Meta::GatewayExpiresAt)?
                .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            gateway_refresh_before_ms: settings.gateway_refresh_before_ms,
            has_work,
            work_seen_at_ms: meta(&sql, Meta::WorkSeenAt)?,
            idle_stop_ms: settings.work.idle_stop_ms,
            follows_pull_requests: active && store::next_pull_due(&sql)?.is_some(),
            container_probed_at_ms: meta(&sql, Meta::ContainerProbedAt)?,
            health_interval_ms: settings.work.health_interval_ms,
        };
        for effect in policy::tick(&input) {
            match (effect, &town) {
                (TickEffect::DeleteAlarm, _) => self
                    .state
                    .storage()
                    .delete_alarm()
                    .await
                    .map_err(ApiError::internal)?,
                (TickEffect::RecordRun, _) => {
                    bump_meta(&sql, Meta::AlarmRuns)?;
                    set_meta(&sql, Meta::LastAlarmAt, input.now_ms)?;
                }
                (TickEffect::RefreshContainerToken, Some(town)) => {
                    match self.refresh_token(town).await {
                        Ok(TokenPushed { accepted: true, .. }) => {}
                        Ok(_) => console_error!(
                            "town {}: container refused the refreshed token; retrying next tick",
                            town.id
                        ),
                        Err(e) => console_error!("town {}: token refresh failed: {e}", town.id),
                    }
                }
                (TickEffect::RefreshGatewayToken, Some(town)) => {
                    match self.refresh_gateway(town).await {
                        Ok(true) => {}
                        Ok(false) => console_error!(
                            "town {}: container refused the gateway token; retrying next tick",
                            town.id
                        ),
                        Err(e) => console_error!("town {}: gateway refresh failed: {e}", town.id),
                    }
                }
                (TickEffect::ArmFast, _) => self
                    .state
                    .storage()
                    .set_alarm(i64::try_from(settings.work.active_alarm_ms).unwrap_or(i64::MAX))
                    .await
                    .map_err(ApiError::internal)?,
                (TickEffect::Patrol, Some(town)) => {
                    if let Err(e) = self.patrol(town).await {
                        console_error!("town {}: patrol failed: {e}", town.id);
                    }
                }
                (TickEffect::Dispatch, Some(town)) => {
                    if let Err(e) = self.dispatch(town).await {
                        console_error!("town {}: dispatch failed: {e}", town.id);
                    }
                    if self.stored_status()? == TownStatus::Active {
                        if let Err(e) = self.deliver_to_mayor(town).await {
                            console_error!("town {}: mayor delivery failed: {e}", town.id);
                        }
                    }
                }
                (TickEffect::StopIdleContainer, Some(town)) => {
                    if let Err(e) = self.stop_idle_container(town).await {
                        console_error!("town {}: idle stop failed: {e}", town.id);
                    }
                }
                (TickEffect::ProbeContainer, Some(town)) => {
                    if let Err(e) = self.probe_container(town).await {
                        console_error!("town {}: health check failed: {e}", town.id);
                    }
                }
                (TickEffect::Refine, Some(town)) => {
                    if let Err(e) = self.refine(town).await {
                        console_error!("town {}: refinery failed: {e}", town.id);
                    }
                }
                (
                    TickEffect::Refine
                    | TickEffect::ProbeContainer
                    | TickEffect::RefreshContainerToken
                    | TickEffect::RefreshGatewayToken
                    | TickEffect::Patrol
                    | TickEffect::Dispatch
                    | TickEffect::StopIdleContainer,
                    None,
                ) => {}
            }
        }
        Ok(())
    }
}

/// Clears the transition flag however the stop or start ends.
struct TransitionGuard<'a>(&'a Cell<bool>);

impl Drop for TransitionGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

rpc_entry!(TownDO, TownOp, this => this, before => { this.prime_streams(); }, after => { this.flush_streams(); });

impl DurableObject for TownDO {
    fn new(state: State, env: Env) -> Self {
        // A stream client's keep-alive "ping" is answered by the runtime, without waking the DO.
        if let Ok(pong) = worker::worker_sys::WebSocketRequestResponsePair::new("ping", "pong") {
            state.set_websocket_auto_response(&pong);
        }
        Self {
            state,
            env,
            schema: Schema::new(schema::TOWN_DO),
            destroyed: Cell::new(false),
            destroy_checked: Cell::new(false),
            transition: Cell::new(false),
            stream_cursor: Cell::new(None),
        }
    }

    /// Only the town's sockets arrive here (see `streams.rs`); operations come over RPC.
    async fn fetch(&self, req: Request) -> Result<Response> {
        Ok(self
            .open_stream(&req)
            .unwrap_or_else(|e| error_response(&e)))
    }

    async fn alarm(&self) -> Result<Response> {
        self.prime_streams();
        if let Err(e) = self.tick().await {
            console_error!("town alarm failed: {e}");
        }
        self.flush_streams();
        Response::ok("ok")
    }

    /// Clients have nothing to say on a stream ("ping" is answered without waking the DO).
    async fn websocket_message(
        &self,
        _ws: WebSocket,
        _message: WebSocketIncomingMessage,
    ) -> Result<()> {
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        // Completes the closing handshake; 1005/1006 may not be sent back.
        let code = u16::try_from(code)
            .ok()
            .filter(|c| *c == 1000 || (3000..5000).contains(c))
            .unwrap_or(1000);
        let _ = ws.close(Some(code), Some("closed"));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        let _ = ws.close(Some(1011), Some("error"));
        Ok(())
    }
}

//! `TownDO`: one per town id. Holds the town's identity and ownership, its config (sealed), its
//! rigs registry (kept in step with the owner DO by the handlers), agents' heartbeats, and runs
//! the town's main loop as an alarm whose decisions come from `gastown_core::policy`.
//!
//! Lifecycle: `init` records identity and arms the alarm; `destroy` deletes the alarm and all
//! storage, after which the town answers 404 and an alarm that still fires deletes itself.
//! The operations themselves are in `ops.rs`.

mod ops;

use super::container::{self as container_do, ContainerStub};
use super::{no_fetch, rpc_entry, DoStub};
use crate::config;
use crate::storage::{bump_meta, first, meta, set_meta, MetaKey, Schema, TOWN_COLUMNS};
use gastown_core::auth::sign_container;
use gastown_core::authz::ContainerCredential;
use gastown_core::body::json_error_summary;
use gastown_core::error::ApiError;
use gastown_core::ids::TownId;
use gastown_core::model::Town;
use gastown_core::policy::{self, TickEffect, TickInput, TokenGeneration};
use gastown_core::protocol::container::{PushToken, TokenPushed};
use gastown_core::protocol::town::TownOp;
use gastown_core::schema;
use gastown_core::town_config::TownConfig;
use serde::Deserialize;
use std::cell::Cell;
use worker::{
    console_error, durable_object, DurableObject, Env, Request, Response, Result, SqlStorage, State,
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
    /// Set when a destroy begins: from then on the town answers 404 and starts nothing, even
    /// if this instance is evicted before the destroy finishes (a retried destroy finishes it).
    Destroying,
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
            Meta::Destroying => "destroying",
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
        first(
            &self.sql(),
            &format!("SELECT {TOWN_COLUMNS} FROM town LIMIT 1"),
            vec![],
        )
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

    fn generation(&self) -> std::result::Result<TokenGeneration, ApiError> {
        let sql = self.sql();
        Ok(TokenGeneration {
            current: meta(&sql, Meta::TokenGeneration)?.unwrap_or(0),
            since_ms: meta(&sql, Meta::TokenGenerationSince)?.unwrap_or(0),
        })
    }

    fn set_generation(&self, generation: TokenGeneration) -> std::result::Result<(), ApiError> {
        let sql = self.sql();
        set_meta(&sql, Meta::TokenGeneration, generation.current)?;
        set_meta(&sql, Meta::TokenGenerationSince, generation.since_ms)
    }

    /// Rotation: tokens of older generations stop working after the grace.
    fn advance_generation(&self) -> std::result::Result<(), ApiError> {
        self.set_generation(self.generation()?.advanced(config::now_ms()))
    }

    /// A container route's credential against the current generation.
    fn admit(&self, credential: ContainerCredential) -> std::result::Result<(), ApiError> {
        let grace = config::get(&self.env).token_grace_ms;
        if self
            .generation()?
            .admits(credential, config::now_ms(), grace)
        {
            Ok(())
        } else {
            Err(ApiError::TokenRevoked)
        }
    }

    fn container_started(&self) -> std::result::Result<bool, ApiError> {
        Ok(meta(&self.sql(), Meta::ContainerStarted)?.unwrap_or(0) == 1)
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
        crate::storage::exec(
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

    /// A container token for `town` of the current generation, carrying its owner's identity
    /// (the creator for org towns, the town id if none is recorded).
    fn mint(&self, town: &Town) -> std::result::Result<(String, i64), ApiError> {
        sign_container(
            &config::get(&self.env).keys,
            &town.id,
            town.token_user_id(),
            self.generation()?.current,
            config::now_s(),
        )
        .map_err(|e| ApiError::internal(format!("minting a container token: {}", e.message())))
    }

    /// Mints a token and pushes it to the running container. The throttle moves only when the
    /// container accepted it.
    async fn refresh_token(&self, town: &Town) -> std::result::Result<TokenPushed, ApiError> {
        let (token, expires_at) = self.mint(town)?;
        let pushed = self
            .container(&town.id)?
            .call(PushToken {
                town_id: town.id.clone(),
                token,
                expires_at,
            })
            .await
            .map_err(gone_is_not_found)?;
        self.still_here()?;
        self.record_push(pushed)?;
        Ok(pushed)
    }

    fn record_push(&self, pushed: TokenPushed) -> std::result::Result<(), ApiError> {
        let sql = self.sql();
        if pushed.accepted {
            set_meta(&sql, Meta::TokenRefreshedAt, config::now_ms())?;
            bump_meta(&sql, Meta::TokenRefreshes)
        } else {
            bump_meta(&sql, Meta::TokenRefreshFailures)
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
        let input = TickInput {
            town_exists: town.is_some(),
            container_started: self.container_started()?,
            token_accepted_at_ms: meta(&sql, Meta::TokenRefreshedAt)?,
            now_ms: config::now_ms(),
            token_refresh_ms: config::get(&self.env).token_refresh_ms,
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
                (TickEffect::RefreshContainerToken, None) => {}
            }
        }
        Ok(())
    }
}

rpc_entry!(TownDO, TownOp);

impl DurableObject for TownDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            schema: Schema::new(schema::TOWN_DO),
            destroyed: Cell::new(false),
            destroy_checked: Cell::new(false),
        }
    }

    async fn fetch(&self, _req: Request) -> Result<Response> {
        no_fetch()
    }

    async fn alarm(&self) -> Result<Response> {
        if let Err(e) = self.tick().await {
            console_error!("town alarm failed: {e}");
        }
        Response::ok("ok")
    }
}

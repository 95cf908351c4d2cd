//! `GastownUserDO`: one per user id. Holds the user's personal towns and their rigs
//! ([`crate::owner_store`]) and runs the watchdog alarm, which asks each town's DO to re-arm an
//! alarm that has gone missing. The watchdog only runs while the user has towns.

use crate::config;
use crate::http::{call, read_rpc, rpc_response};
use crate::owner_store;
use crate::storage::{meta, migrate, set_meta};
use crate::town_do;
use gastown_core::do_api::{AlarmArmed, OwnerRequest, TownRequest};
use gastown_core::error::ApiError;
use gastown_core::ids::UserId;
use gastown_core::schema;
use std::cell::Cell;
use worker::{
    console_error, durable_object, DurableObject, Env, Request, Response, Result, State, Stub,
};

pub const BINDING: &str = "GASTOWN_USER";

/// The DO of `user`.
///
/// # Errors
/// Internal, when the binding is missing.
pub fn stub(env: &Env, user: &UserId) -> std::result::Result<Stub, ApiError> {
    env.durable_object(BINDING)
        .and_then(|ns| ns.get_by_name(user.as_str()))
        .map_err(ApiError::internal)
}

#[durable_object]
pub struct GastownUserDO {
    state: State,
    env: Env,
    migrated: Cell<bool>,
}

impl GastownUserDO {
    fn ensure_schema(&self) -> std::result::Result<(), ApiError> {
        if !self.migrated.get() {
            migrate(
                &self.state.storage().sql(),
                schema::USER_DO,
                config::now_ms(),
            )?;
            self.migrated.set(true);
        }
        Ok(())
    }

    async fn serve(
        &self,
        request: OwnerRequest,
    ) -> std::result::Result<serde_json::Value, ApiError> {
        self.ensure_schema()?;
        let adds_town = matches!(request, OwnerRequest::AddTown { .. });
        let value = owner_store::handle(&self.state.storage().sql(), request)?;
        if adds_town {
            self.arm_watchdog().await?;
        }
        Ok(value)
    }

    async fn arm_watchdog(&self) -> std::result::Result<(), ApiError> {
        let storage = self.state.storage();
        if storage
            .get_alarm()
            .await
            .map_err(ApiError::internal)?
            .is_none()
        {
            let ms = config::get(&self.env).watchdog_ms;
            storage
                .set_alarm(i64::try_from(ms).unwrap_or(i64::MAX))
                .await
                .map_err(ApiError::internal)?;
        }
        Ok(())
    }

    async fn watchdog(&self) -> std::result::Result<(), ApiError> {
        self.ensure_schema()?;
        let sql = self.state.storage().sql();
        let towns = owner_store::list_towns(&sql)?;
        if towns.is_empty() {
            return Ok(());
        }
        // Reschedule first, so a failure below cannot stop the watchdog.
        self.arm_watchdog().await?;
        let runs = meta(&sql, "watchdog_runs")?.unwrap_or(0);
        set_meta(&sql, "watchdog_runs", runs + 1)?;
        for town in towns {
            let result = match town_do::stub(&self.env, &town.id) {
                Ok(stub) => call::<_, AlarmArmed>(&stub, &TownRequest::EnsureAlarm).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(AlarmArmed { rearmed: true }) => {
                    worker::console_log!("watchdog re-armed the alarm of town {}", town.id);
                }
                Ok(_) => {}
                Err(e) => console_error!("watchdog: town {}: {e}", town.id),
            }
        }
        Ok(())
    }
}

impl DurableObject for GastownUserDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            migrated: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let result = match read_rpc::<OwnerRequest>(&mut req).await {
            Ok(request) => self.serve(request).await,
            Err(e) => Err(e),
        };
        rpc_response(result)
    }

    async fn alarm(&self) -> Result<Response> {
        if let Err(e) = self.watchdog().await {
            console_error!("user watchdog failed: {e}");
        }
        Response::ok("ok")
    }
}

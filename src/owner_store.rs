//! What the two owner Durable Objects (`GastownUserDO`, `GastownOrgDO`) share: the storage of
//! an owner's towns and rigs, answering [`OwnerRequest`]s, and the watchdog alarm, which asks each
//! town's DO to re-arm an alarm that has gone missing. The watchdog runs only while the owner has
//! towns. Each DO struct is a thin shell around [`OwnerCore`].
//!
//! Invariants: a rig belongs to a town of this owner; rig names are unique within a town;
//! listings come back in creation order.

use crate::config;
use crate::http::{call, read_rpc, rpc_response};
use crate::storage::{
    exec, first, meta, rig_values, rows, set_meta, town_values, Schema, RIG_COLUMNS, TOWN_COLUMNS,
};
use crate::town_do;
use gastown_core::do_api::AlarmArmed;
use gastown_core::do_api::TownRequest;
use gastown_core::do_api::{OwnerRequest, RemovedTown};
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId};
use gastown_core::model::{Rig, Town};
use gastown_core::schema;
use serde::Deserialize;
use serde_json::Value;
use worker::SqlStorage;
use worker::{console_error, Env, Request, Response, State};

fn town_not_found() -> ApiError {
    ApiError::NotFound("town not found".into())
}

fn rig_not_found() -> ApiError {
    ApiError::NotFound("rig not found".into())
}

fn to_json<T: serde::Serialize>(value: T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// Serves one owner request against this DO's storage.
///
/// # Errors
/// 404 for towns and rigs this owner does not hold, 409 for a taken rig name or id.
pub fn handle(sql: &SqlStorage, request: OwnerRequest) -> Result<Value, ApiError> {
    match request {
        OwnerRequest::AddTown { town } => to_json(add_town(sql, town)?),
        OwnerRequest::ListTowns { page } => {
            let after = after_seq(sql, "towns", page.after.as_deref())?;
            to_json(rows::<Town>(
                sql,
                &format!("SELECT {TOWN_COLUMNS} FROM towns WHERE seq > ? ORDER BY seq LIMIT ?"),
                vec![after.into(), i64::from(page.limit).into()],
            )?)
        }
        OwnerRequest::GetTown { town_id } => to_json(get_town(sql, &town_id)?),
        OwnerRequest::RemoveTown { town_id } => to_json(remove_town(sql, &town_id)?),
        OwnerRequest::AddRig { rig } => to_json(add_rig(sql, rig)?),
        OwnerRequest::ListRigs { town_id, page } => {
            get_town(sql, &town_id)?;
            let after = after_seq(sql, "rigs", page.after.as_deref())?;
            to_json(rows::<Rig>(
                sql,
                &format!(
                    "SELECT {RIG_COLUMNS} FROM rigs WHERE town_id = ? AND seq > ? ORDER BY seq LIMIT ?"
                ),
                vec![town_id.as_str().into(), after.into(), i64::from(page.limit).into()],
            )?)
        }
        OwnerRequest::GetRig { rig_id } => to_json(get_rig(sql, &rig_id)?),
        OwnerRequest::RemoveRig { rig_id } => {
            let rig = get_rig(sql, &rig_id)?;
            exec(
                sql,
                "DELETE FROM rigs WHERE id = ?",
                vec![rig_id.as_str().into()],
            )?;
            to_json(rig)
        }
    }
}

fn next_seq(sql: &SqlStorage, table: &str) -> Result<i64, ApiError> {
    #[derive(Deserialize)]
    struct Seq {
        s: f64,
    }
    let row = first::<Seq>(
        sql,
        &format!("SELECT COALESCE(MAX(seq), 0) + 1 AS s FROM {table}"),
        vec![],
    )?;
    Ok(row.map_or(1, |r| r.s as i64))
}

/// The creation sequence number of the page cursor `after` (0 for the first page).
fn after_seq(sql: &SqlStorage, table: &str, after: Option<&str>) -> Result<i64, ApiError> {
    let Some(id) = after else {
        return Ok(0);
    };
    #[derive(Deserialize)]
    struct Seq {
        seq: f64,
    }
    first::<Seq>(
        sql,
        &format!("SELECT seq FROM {table} WHERE id = ?"),
        vec![id.into()],
    )?
    .map(|s| s.seq as i64)
    .ok_or_else(|| ApiError::invalid("after", "does not name a row of this list"))
}

fn add_town(sql: &SqlStorage, town: Town) -> Result<Town, ApiError> {
    if first::<Town>(
        sql,
        &format!("SELECT {TOWN_COLUMNS} FROM towns WHERE id = ?"),
        vec![town.id.as_str().into()],
    )?
    .is_some()
    {
        return Err(ApiError::Conflict("town already exists".into()));
    }
    let seq = next_seq(sql, "towns")?;
    exec(
        sql,
        &format!("INSERT INTO towns ({TOWN_COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        [town_values(&town), vec![seq.into()]].concat(),
    )?;
    Ok(town)
}

/// Ids of all towns, in creation order (for the watchdog).
///
/// # Errors
/// Internal only.
pub fn all_town_ids(sql: &SqlStorage) -> Result<Vec<TownId>, ApiError> {
    #[derive(Deserialize)]
    struct Id {
        id: TownId,
    }
    Ok(
        rows::<Id>(sql, "SELECT id FROM towns ORDER BY seq", vec![])?
            .into_iter()
            .map(|r| r.id)
            .collect(),
    )
}

fn get_town(sql: &SqlStorage, town_id: &TownId) -> Result<Town, ApiError> {
    first(
        sql,
        &format!("SELECT {TOWN_COLUMNS} FROM towns WHERE id = ?"),
        vec![town_id.as_str().into()],
    )?
    .ok_or_else(town_not_found)
}

fn remove_town(sql: &SqlStorage, town_id: &TownId) -> Result<RemovedTown, ApiError> {
    let town = get_town(sql, town_id)?;
    #[derive(Deserialize)]
    struct Id {
        id: RigId,
    }
    let rig_ids = rows::<Id>(
        sql,
        "SELECT id FROM rigs WHERE town_id = ? ORDER BY seq",
        vec![town_id.as_str().into()],
    )?
    .into_iter()
    .map(|r| r.id)
    .collect();
    exec(
        sql,
        "DELETE FROM rigs WHERE town_id = ?",
        vec![town_id.as_str().into()],
    )?;
    exec(
        sql,
        "DELETE FROM towns WHERE id = ?",
        vec![town_id.as_str().into()],
    )?;
    Ok(RemovedTown { town, rig_ids })
}

fn add_rig(sql: &SqlStorage, rig: Rig) -> Result<Rig, ApiError> {
    get_town(sql, &rig.town_id)?;
    #[derive(Deserialize)]
    struct Id {
        #[allow(dead_code)]
        id: String,
    }
    let taken = first::<Id>(
        sql,
        "SELECT id FROM rigs WHERE id = ? OR (town_id = ? AND name = ?)",
        vec![
            rig.id.as_str().into(),
            rig.town_id.as_str().into(),
            rig.name.as_str().into(),
        ],
    )?;
    if taken.is_some() {
        return Err(ApiError::Conflict(format!(
            "a rig named '{}' already exists in this town",
            rig.name
        )));
    }
    let seq = next_seq(sql, "rigs")?;
    exec(
        sql,
        &format!("INSERT INTO rigs ({RIG_COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
        [rig_values(&rig), vec![seq.into()]].concat(),
    )?;
    Ok(rig)
}

fn get_rig(sql: &SqlStorage, rig_id: &RigId) -> Result<Rig, ApiError> {
    first(
        sql,
        &format!("SELECT {RIG_COLUMNS} FROM rigs WHERE id = ?"),
        vec![rig_id.as_str().into()],
    )?
    .ok_or_else(rig_not_found)
}

/// The body of an owner DO.
pub struct OwnerCore {
    state: State,
    env: Env,
    schema: Schema,
}

impl OwnerCore {
    pub fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            schema: Schema::new(schema::OWNER_DO),
        }
    }

    fn ensure_schema(&self) -> Result<(), ApiError> {
        self.schema
            .ensure(&self.state.storage().sql(), config::now_ms())
    }

    /// Answers one worker request.
    pub async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let result = match read_rpc::<OwnerRequest>(&mut req).await {
            Ok(request) => self.serve(request).await,
            Err(e) => Err(e),
        };
        rpc_response(result)
    }

    async fn serve(&self, request: OwnerRequest) -> Result<Value, ApiError> {
        self.ensure_schema()?;
        let adds_town = matches!(request, OwnerRequest::AddTown { .. });
        let value = handle(&self.state.storage().sql(), request)?;
        if adds_town {
            self.arm_watchdog().await?;
        }
        Ok(value)
    }

    async fn arm_watchdog(&self) -> Result<(), ApiError> {
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

    /// The watchdog alarm. Failures are logged, never thrown, so the alarm is not retried in a loop.
    pub async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.watchdog().await {
            console_error!("owner watchdog failed: {e}");
        }
        Response::ok("ok")
    }

    async fn watchdog(&self) -> Result<(), ApiError> {
        self.ensure_schema()?;
        let sql = self.state.storage().sql();
        let towns = all_town_ids(&sql)?;
        if towns.is_empty() {
            return Ok(());
        }
        // Reschedule first, so a failure below cannot stop the watchdog.
        self.arm_watchdog().await?;
        let runs = meta(&sql, "watchdog_runs")?.unwrap_or(0);
        set_meta(&sql, "watchdog_runs", runs + 1)?;
        for town in towns {
            let result = match town_do::stub(&self.env, &town) {
                Ok(stub) => call::<_, AlarmArmed>(&stub, &TownRequest::EnsureAlarm).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(AlarmArmed { rearmed: true }) => {
                    worker::console_log!("watchdog re-armed the alarm of town {town}");
                }
                Ok(_) => {}
                Err(e) => console_error!("watchdog: town {town}: {e}"),
            }
        }
        Ok(())
    }
}

//! Storage of an owner's towns and rigs, shared by the owner Durable Objects. The owner DO
//! answers [`OwnerRequest`]s with these functions; it adds only its alarm.
//!
//! Invariants: a rig belongs to a town of this owner; rig names are unique within a town;
//! listings come back in creation order.

use crate::storage::{exec, first, rows};
use gastown_core::do_api::{OwnerRequest, RemovedTown};
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId};
use gastown_core::model::{Rig, Town};
use serde::Deserialize;
use serde_json::Value;
use worker::SqlStorage;

const TOWN_COLUMNS: &str =
    "id, name, owner_type, owner_user_id, organization_id, created_by_user_id, status, created_at";
const RIG_COLUMNS: &str =
    "id, town_id, name, git_url, default_branch, platform_integration_id, created_at";

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
        OwnerRequest::ListTowns => to_json(list_towns(sql)?),
        OwnerRequest::GetTown { town_id } => to_json(get_town(sql, &town_id)?),
        OwnerRequest::RemoveTown { town_id } => to_json(remove_town(sql, &town_id)?),
        OwnerRequest::AddRig { rig } => to_json(add_rig(sql, rig)?),
        OwnerRequest::ListRigs { town_id } => {
            get_town(sql, &town_id)?;
            to_json(rows::<Rig>(
                sql,
                &format!("SELECT {RIG_COLUMNS} FROM rigs WHERE town_id = ? ORDER BY seq"),
                vec![town_id.as_str().into()],
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
        vec![
            town.id.as_str().into(),
            town.name.as_str().into(),
            town.owner_type.as_str().into(),
            town.owner_user_id.as_str().into(),
            town.organization_id.as_ref().map(|o| o.as_str()).into(),
            town.created_by_user_id.as_str().into(),
            town.status.as_str().into(),
            town.created_at.as_str().into(),
            seq.into(),
        ],
    )?;
    Ok(town)
}

/// Towns in creation order.
///
/// # Errors
/// Internal only.
pub fn list_towns(sql: &SqlStorage) -> Result<Vec<Town>, ApiError> {
    rows(
        sql,
        &format!("SELECT {TOWN_COLUMNS} FROM towns ORDER BY seq"),
        vec![],
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
        vec![
            rig.id.as_str().into(),
            rig.town_id.as_str().into(),
            rig.name.as_str().into(),
            rig.git_url.as_str().into(),
            rig.default_branch.as_str().into(),
            rig.platform_integration_id.as_deref().into(),
            rig.created_at.as_str().into(),
            seq.into(),
        ],
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

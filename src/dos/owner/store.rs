//! An owner's towns and rigs in its DO's SQLite: plain functions over the connection.
//!
//! Invariants: a rig belongs to a town of this owner; rig names are unique within a town;
//! listings come back in creation order (`seq`).

use crate::storage::{
    count, exec, exists, first, json_text, rig_values, rows, town_values, RIG_COLUMNS, RIG_JSON,
    TOWN_COLUMNS, TOWN_JSON,
};
use gastown_core::error::ApiError;
use gastown_core::ids::{RigId, TownId};
use gastown_core::model::{Rig, Town, TownStatus};
use gastown_core::page::Page;
use gastown_core::protocol::owner::RemovedTown;
use gastown_core::protocol::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use worker::SqlStorage;

fn town_not_found() -> ApiError {
    ApiError::NotFound("town not found".into())
}

fn rig_not_found() -> ApiError {
    ApiError::NotFound("rig not found".into())
}

/// The tables that keep a creation sequence.
#[derive(Clone, Copy)]
enum Table {
    Towns,
    Rigs,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Towns => "towns",
            Table::Rigs => "rigs",
        }
    }

    fn columns(self) -> &'static str {
        match self {
            Table::Towns => TOWN_COLUMNS,
            Table::Rigs => RIG_COLUMNS,
        }
    }

    /// The SQLite expression that builds a row's JSON.
    fn json(self) -> &'static str {
        match self {
            Table::Towns => TOWN_JSON,
            Table::Rigs => RIG_JSON,
        }
    }

    fn not_found(self) -> ApiError {
        match self {
            Table::Towns => town_not_found(),
            Table::Rigs => rig_not_found(),
        }
    }
}

/// The row with this id.
fn by_id<T: DeserializeOwned>(sql: &SqlStorage, table: Table, id: &str) -> Result<T, ApiError> {
    first(
        sql,
        &format!(
            "SELECT {} FROM {} WHERE id = ?",
            table.columns(),
            table.name()
        ),
        vec![id.into()],
    )?
    .ok_or_else(|| table.not_found())
}

/// The JSON of the row with this id, built by SQLite.
fn json_by_id<T>(sql: &SqlStorage, table: Table, id: &str) -> Result<Json<T>, ApiError> {
    let text = json_text(
        sql,
        &format!(
            "SELECT {} AS j FROM {} WHERE id = ?",
            table.json(),
            table.name()
        ),
        vec![id.into()],
    )?
    .ok_or_else(|| table.not_found())?;
    Json::from_text(text)
}

fn next_seq(sql: &SqlStorage, table: Table) -> Result<i64, ApiError> {
    #[derive(Deserialize)]
    struct Seq {
        s: f64,
    }
    let row = first::<Seq>(
        sql,
        &format!(
            "SELECT COALESCE(MAX(seq), 0) + 1 AS s FROM {}",
            table.name()
        ),
        vec![],
    )?;
    Ok(row.map_or(1, |r| r.s as i64))
}

/// The creation sequence number of the page cursor `after` (0 for the first page).
fn after_seq(sql: &SqlStorage, table: Table, after: Option<&str>) -> Result<i64, ApiError> {
    let Some(id) = after else {
        return Ok(0);
    };
    #[derive(Deserialize)]
    struct Seq {
        seq: f64,
    }
    first::<Seq>(
        sql,
        &format!("SELECT seq FROM {} WHERE id = ?", table.name()),
        vec![id.into()],
    )?
    .map(|s| s.seq as i64)
    .ok_or_else(|| ApiError::invalid("after", "does not name a row of this list"))
}

/// # Errors
/// 409 when the id is taken or the owner has `max` towns.
pub fn add_town(sql: &SqlStorage, town: Town, max: u64) -> Result<Town, ApiError> {
    if count(sql, "SELECT COUNT(*) AS n FROM towns", vec![])? >= max {
        return Err(ApiError::QuotaExceeded {
            limit: "MAX_TOWNS_PER_OWNER",
            max,
        });
    }
    if exists(
        sql,
        "SELECT 1 FROM towns WHERE id = ?",
        vec![town.id.as_str().into()],
    )? {
        return Err(ApiError::Conflict("town already exists".into()));
    }
    let seq = next_seq(sql, Table::Towns)?;
    let mut values = town_values(&town);
    values.push(seq.into());
    exec(
        sql,
        &format!("INSERT INTO towns ({TOWN_COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        values,
    )?;
    Ok(town)
}

/// A page of rows as one JSON array, built by SQLite: `select` picks the rows (its first
/// bound parameter is the `seq` to start after), `json` builds each.
fn json_page<T>(
    sql: &SqlStorage,
    json: &str,
    select: &str,
    mut bindings: Vec<worker::SqlStorageValue>,
    limit: u32,
) -> Result<Json<Vec<T>>, ApiError> {
    bindings.push(i64::from(limit).into());
    let text = json_text(
        sql,
        &format!(
            "SELECT COALESCE(json_group_array({json} ORDER BY seq), '[]') AS j FROM ({select} ORDER BY seq LIMIT ?)"
        ),
        bindings,
    )?;
    Json::from_text(text.unwrap_or_else(|| "[]".to_owned()))
}

/// # Errors
/// 422 for a cursor that names no town of this owner.
pub fn list_towns(sql: &SqlStorage, page: &Page) -> Result<Json<Vec<Town>>, ApiError> {
    let after = after_seq(sql, Table::Towns, page.after.as_deref())?;
    json_page(
        sql,
        TOWN_JSON,
        "SELECT * FROM towns WHERE seq > ?",
        vec![after.into()],
        page.limit,
    )
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

/// The town's JSON, built by SQLite.
///
/// # Errors
/// 404 when this owner has no such town.
pub fn town_json(sql: &SqlStorage, town_id: &TownId) -> Result<Json<Town>, ApiError> {
    json_by_id(sql, Table::Towns, town_id.as_str())
}

/// # Errors
/// 404 when this owner has no such town.
pub fn get_town(sql: &SqlStorage, town_id: &TownId) -> Result<Town, ApiError> {
    by_id(sql, Table::Towns, town_id.as_str())
}

/// Forgets a town and its rigs (no await between the writes: they commit together).
///
/// # Errors
/// 404 when this owner has no such town.
pub fn remove_town(sql: &SqlStorage, town_id: &TownId) -> Result<RemovedTown, ApiError> {
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

/// Records the town as its TownDO now has it: its status and the user it acts as.
///
/// # Errors
/// 404 for a town this owner lacks.
pub fn record_town(sql: &SqlStorage, town: &Town) -> Result<(), ApiError> {
    get_town(sql, &town.id)?;
    exec(
        sql,
        "UPDATE towns SET status = ?, owner_user_id = ?, created_by_user_id = ? WHERE id = ?",
        vec![
            town.status.as_str().into(),
            town.owner_user_id.as_ref().map(|u| u.as_str()).into(),
            town.created_by_user_id.as_str().into(),
            town.id.as_str().into(),
        ],
    )
}

/// Every town, in creation order (for the watchdog's index reconciliation).
///
/// # Errors
/// Internal only.
pub fn all_towns(sql: &SqlStorage) -> Result<Vec<Town>, ApiError> {
    rows(
        sql,
        &format!("SELECT {TOWN_COLUMNS} FROM towns ORDER BY seq"),
        vec![],
    )
}

/// Records a town's status as its TownDO now has it.
///
/// # Errors
/// 404 for a town this owner lacks.
pub fn set_town_status(
    sql: &SqlStorage,
    town_id: &TownId,
    status: TownStatus,
) -> Result<(), ApiError> {
    get_town(sql, town_id)?;
    exec(
        sql,
        "UPDATE towns SET status = ? WHERE id = ?",
        vec![status.as_str().into(), town_id.as_str().into()],
    )
}

/// # Errors
/// 404 for a town this owner lacks; 409 for a rig id or name taken in that town, or a town
/// that has `max` rigs.
pub fn add_rig(sql: &SqlStorage, rig: Rig, max: u64) -> Result<Rig, ApiError> {
    get_town(sql, &rig.town_id)?;
    let rigs = count(
        sql,
        "SELECT COUNT(*) AS n FROM rigs WHERE town_id = ?",
        vec![rig.town_id.as_str().into()],
    )?;
    if rigs >= max {
        return Err(ApiError::QuotaExceeded {
            limit: "MAX_RIGS_PER_TOWN",
            max,
        });
    }
    if exists(
        sql,
        "SELECT 1 FROM rigs WHERE id = ? OR (town_id = ? AND name = ?)",
        vec![
            rig.id.as_str().into(),
            rig.town_id.as_str().into(),
            rig.name.as_str().into(),
        ],
    )? {
        return Err(ApiError::Conflict(format!(
            "a rig named '{}' already exists in this town",
            rig.name
        )));
    }
    let seq = next_seq(sql, Table::Rigs)?;
    let mut values = rig_values(&rig);
    values.push(seq.into());
    exec(
        sql,
        &format!("INSERT INTO rigs ({RIG_COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
        values,
    )?;
    Ok(rig)
}

/// Writes `rig` over the record of the same id (its town and creation stay).
///
/// # Errors
/// 404 for a rig this owner lacks; 409 for a name another rig of its town has.
pub fn replace_rig(sql: &SqlStorage, rig: &Rig) -> Result<(), ApiError> {
    get_rig(sql, &rig.id)?;
    if exists(
        sql,
        "SELECT 1 FROM rigs WHERE town_id = ? AND name = ? AND id <> ?",
        vec![
            rig.town_id.as_str().into(),
            rig.name.as_str().into(),
            rig.id.as_str().into(),
        ],
    )? {
        return Err(ApiError::Conflict(format!(
            "a rig named '{}' already exists in this town",
            rig.name
        )));
    }
    exec(
        sql,
        "UPDATE rigs SET name = ?, git_url = ?, default_branch = ?, platform_integration_id = ? WHERE id = ?",
        vec![
            rig.name.as_str().into(),
            rig.git_url.as_str().into(),
            rig.default_branch.as_str().into(),
            rig.platform_integration_id.as_deref().into(),
            rig.id.as_str().into(),
        ],
    )
}

/// # Errors
/// 404 for a town this owner lacks; 422 for a cursor that names no rig.
pub fn list_rigs(
    sql: &SqlStorage,
    town_id: &TownId,
    page: &Page,
) -> Result<Json<Vec<Rig>>, ApiError> {
    if !exists(
        sql,
        "SELECT 1 FROM towns WHERE id = ?",
        vec![town_id.as_str().into()],
    )? {
        return Err(town_not_found());
    }
    let after = after_seq(sql, Table::Rigs, page.after.as_deref())?;
    json_page(
        sql,
        RIG_JSON,
        "SELECT * FROM rigs WHERE seq > ? AND town_id = ?",
        vec![after.into(), town_id.as_str().into()],
        page.limit,
    )
}

/// The rig's JSON, built by SQLite.
///
/// # Errors
/// 404 when this owner has no such rig.
pub fn rig_json(sql: &SqlStorage, rig_id: &RigId) -> Result<Json<Rig>, ApiError> {
    json_by_id(sql, Table::Rigs, rig_id.as_str())
}

/// # Errors
/// 404 when this owner has no such rig.
pub fn get_rig(sql: &SqlStorage, rig_id: &RigId) -> Result<Rig, ApiError> {
    by_id(sql, Table::Rigs, rig_id.as_str())
}

/// # Errors
/// 404 when this owner has no such rig.
pub fn remove_rig(sql: &SqlStorage, rig_id: &RigId) -> Result<Rig, ApiError> {
    let rig = get_rig(sql, rig_id)?;
    exec(
        sql,
        "DELETE FROM rigs WHERE id = ?",
        vec![rig_id.as_str().into()],
    )?;
    Ok(rig)
}

/// Every rig, with its town (for the watchdog's index reconciliation).
///
/// # Errors
/// Internal only.
pub fn all_rigs(sql: &SqlStorage) -> Result<Vec<Rig>, ApiError> {
    rows(
        sql,
        &format!("SELECT {RIG_COLUMNS} FROM rigs ORDER BY seq"),
        vec![],
    )
}

/// Any one town (all of them share the DO's owner).
///
/// # Errors
/// Internal only.
pub fn any_town(sql: &SqlStorage) -> Result<Option<Town>, ApiError> {
    first(
        sql,
        &format!("SELECT {TOWN_COLUMNS} FROM towns LIMIT 1"),
        vec![],
    )
}

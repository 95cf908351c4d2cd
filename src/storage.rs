//! SQLite helpers for Durable Objects: the versioned migration runner, typed queries that map
//! storage failures to internal errors, and typed `meta` counters.
//!
//! `SqlStorage::exec` is synchronous. Writes with no `await` between them commit together; a
//! handler that awaits (a call to another DO, a fetch) between two writes is not atomic across
//! that await, and says so where it matters.

use gastown_core::body::json_error_summary;
use gastown_core::error::ApiError;
use gastown_core::ids::{OrgId, UserId};
use gastown_core::model::{Rig, Town};
use gastown_core::schema::Migration;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use std::cell::Cell;
use worker::{SqlStorage, SqlStorageValue};

/// Applies, in order, every migration newer than the stored version.
///
/// # Errors
/// Internal, when a statement fails; the failed step is not recorded and is retried next time.
pub fn migrate(sql: &SqlStorage, migrations: &[Migration], now_ms: u64) -> Result<(), ApiError> {
    exec(
        sql,
        "CREATE TABLE IF NOT EXISTS _schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        vec![],
    )?;
    #[derive(Deserialize)]
    struct Version {
        v: Option<i64>,
    }
    let current = first::<Version>(
        sql,
        "SELECT MAX(version) AS v FROM _schema_migrations",
        vec![],
    )?
    .and_then(|r| r.v)
    .unwrap_or(0);
    for m in migrations.iter().filter(|m| i64::from(m.version) > current) {
        exec(sql, m.sql, vec![]).map_err(|e| {
            ApiError::internal(format!("migration {} ({}): {e}", m.version, m.name))
        })?;
        exec(
            sql,
            "INSERT INTO _schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            vec![i64::from(m.version).into(), m.name.into(), int(now_ms)],
        )?;
    }
    Ok(())
}

/// An integer binding (timestamps and counters stay far below 2^53).
pub fn int(v: u64) -> SqlStorageValue {
    SqlStorageValue::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Runs a statement to completion.
///
/// # Errors
/// Internal, with SQLite's message for the log.
pub fn exec(sql: &SqlStorage, query: &str, bindings: Vec<SqlStorageValue>) -> Result<(), ApiError> {
    sql.exec(query, bindings)
        .and_then(|cursor| cursor.to_array::<IgnoredAny>())
        .map(|_| ())
        .map_err(|e| ApiError::internal(format!("sql: {e}")))
}

/// All rows of a query.
///
/// # Errors
/// Internal, when the query fails or a row does not fit `T`.
pub fn rows<T: DeserializeOwned>(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> Result<Vec<T>, ApiError> {
    sql.exec(query, bindings)
        .and_then(|cursor| cursor.to_array::<T>())
        .map_err(|e| ApiError::internal(format!("sql: {e}")))
}

/// The first row, if any (`one()` would throw on zero rows).
///
/// # Errors
/// As [`rows`].
pub fn first<T: DeserializeOwned>(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> Result<Option<T>, ApiError> {
    Ok(rows(sql, query, bindings)?.into_iter().next())
}

/// A key of a DO's `meta (key, value)` table: each DO names its keys as an enum.
pub trait MetaKey: Copy {
    fn key(self) -> &'static str;
}

/// A counter or timestamp from a `meta (key, value)` table.
///
/// # Errors
/// As [`rows`].
pub fn meta(sql: &SqlStorage, key: impl MetaKey) -> Result<Option<u64>, ApiError> {
    #[derive(Deserialize)]
    struct Row {
        value: f64,
    }
    Ok(first::<Row>(
        sql,
        "SELECT value FROM meta WHERE key = ?",
        vec![key.key().into()],
    )?
    .map(|r| r.value as u64))
}

/// Sets a `meta` value.
///
/// # Errors
/// As [`exec`].
pub fn set_meta(sql: &SqlStorage, key: impl MetaKey, value: u64) -> Result<(), ApiError> {
    exec(
        sql,
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        vec![key.key().into(), int(value)],
    )
}

/// Adds one to a `meta` counter.
///
/// # Errors
/// As [`exec`].
pub fn bump_meta(sql: &SqlStorage, key: impl MetaKey) -> Result<(), ApiError> {
    exec(
        sql,
        "INSERT INTO meta (key, value) VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET value = value + 1",
        vec![key.key().into()],
    )
}

/// The `n` of a `SELECT COUNT(*) AS n ...` query.
///
/// # Errors
/// As [`rows`].
pub fn count(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> Result<u64, ApiError> {
    #[derive(Deserialize)]
    struct N {
        n: f64,
    }
    Ok(first::<N>(sql, query, bindings)?.map_or(0, |r| r.n as u64))
}

/// Whether a query finds any row.
///
/// # Errors
/// As [`rows`].
pub fn exists(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> Result<bool, ApiError> {
    Ok(first::<IgnoredAny>(sql, query, bindings)?.is_some())
}

pub use gastown_core::model::{RIG_COLUMNS, RIG_JSON, TOWN_COLUMNS, TOWN_JSON};

/// The one JSON text a query builds (a `SELECT <json expression> AS j ...`), if it has a row.
///
/// # Errors
/// As [`rows`].
pub fn json_text(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> Result<Option<String>, ApiError> {
    #[derive(Deserialize)]
    struct J {
        j: String,
    }
    Ok(first::<J>(sql, query, bindings)?.map(|r| r.j))
}

/// The row of `table` with this `id`, as the record `json` (a SQLite `json_object` of the
/// record's fields, pinned to its type by a test) builds it.
///
/// # Errors
/// As [`rows`]; internal when the JSON does not decode.
pub fn json_record<T: DeserializeOwned>(
    sql: &SqlStorage,
    json: &str,
    table: &str,
    id: &str,
) -> Result<Option<T>, ApiError> {
    json_text(
        sql,
        &format!("SELECT {json} AS j FROM {table} WHERE id = ?"),
        vec![id.into()],
    )?
    .map(|text| {
        serde_json::from_str(&text)
            .map_err(|e| ApiError::internal(format!("{table} row: {}", json_error_summary(&e))))
    })
    .transpose()
}

/// The bindings for [`TOWN_COLUMNS`].
pub fn town_values(town: &Town) -> Vec<SqlStorageValue> {
    vec![
        town.id.as_str().into(),
        town.name.as_str().into(),
        town.owner.kind().as_str().into(),
        town.owner_user_id.as_ref().map(UserId::as_str).into(),
        town.owner.org().map(OrgId::as_str).into(),
        town.created_by_user_id.as_str().into(),
        town.status.as_str().into(),
        town.created_at.as_str().into(),
    ]
}

/// The bindings for [`RIG_COLUMNS`].
pub fn rig_values(rig: &Rig) -> Vec<SqlStorageValue> {
    vec![
        rig.id.as_str().into(),
        rig.town_id.as_str().into(),
        rig.name.as_str().into(),
        rig.git_url.as_str().into(),
        rig.default_branch.as_str().into(),
        rig.platform_integration_id.as_deref().into(),
        rig.created_at.as_str().into(),
    ]
}

/// Applies a DO's migrations once per instance, and again after its storage was wiped.
pub struct Schema {
    migrations: &'static [Migration],
    applied: Cell<bool>,
}

impl Schema {
    pub const fn new(migrations: &'static [Migration]) -> Self {
        Self {
            migrations,
            applied: Cell::new(false),
        }
    }

    /// # Errors
    /// As [`migrate`].
    pub fn ensure(&self, sql: &SqlStorage, now_ms: u64) -> Result<(), ApiError> {
        if !self.applied.get() {
            migrate(sql, self.migrations, now_ms)?;
            self.applied.set(true);
        }
        Ok(())
    }

    /// Migrates only a DO that already has a schema, and answers whether it has one. A fresh
    /// DO is left without a single write: reading an id nobody created must not create it.
    ///
    /// # Errors
    /// As [`migrate`].
    pub fn ensure_existing(&self, sql: &SqlStorage, now_ms: u64) -> Result<bool, ApiError> {
        if self.applied.get() {
            return Ok(true);
        }
        if !exists(
            sql,
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_schema_migrations'",
            vec![],
        )? {
            return Ok(false);
        }
        self.ensure(sql, now_ms)?;
        Ok(true)
    }

    /// After `delete_all()`: the next request migrates again.
    pub fn reset(&self) {
        self.applied.set(false);
    }
}

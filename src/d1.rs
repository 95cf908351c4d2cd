//! The account-level D1 database (binding `DB`): one way to prepare, read and write, for every
//! table the worker keeps there (the rig index, the org-town index, integrations, user tokens).

use gastown_core::error::ApiError;
use serde::de::DeserializeOwned;
use worker::wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, Env};

pub const BINDING: &str = "DB";

/// The database.
///
/// # Errors
/// Internal, when the binding is missing.
pub fn db(env: &Env) -> Result<D1Database, ApiError> {
    env.d1(BINDING).map_err(ApiError::internal)
}

/// A text parameter.
pub fn s(v: &str) -> JsValue {
    JsValue::from_str(v)
}

/// An integer parameter.
pub fn n(v: i64) -> JsValue {
    JsValue::from_f64(v as f64)
}

/// A text parameter that may be `NULL`.
pub fn opt(v: Option<&str>) -> JsValue {
    v.map_or(JsValue::NULL, JsValue::from_str)
}

/// `sql` with `args` bound.
///
/// # Errors
/// Internal, when D1 refuses it.
pub fn stmt(env: &Env, sql: &str, args: &[JsValue]) -> Result<D1PreparedStatement, ApiError> {
    db(env)?.prepare(sql).bind(args).map_err(ApiError::internal)
}

/// The first row, if any.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn first<T: DeserializeOwned>(
    env: &Env,
    sql: &str,
    args: &[JsValue],
) -> Result<Option<T>, ApiError> {
    stmt(env, sql, args)?
        .first::<T>(None)
        .await
        .map_err(ApiError::internal)
}

/// Every row.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn all<T: DeserializeOwned>(
    env: &Env,
    sql: &str,
    args: &[JsValue],
) -> Result<Vec<T>, ApiError> {
    stmt(env, sql, args)?
        .all()
        .await
        .map_err(ApiError::internal)?
        .results::<T>()
        .map_err(ApiError::internal)
}

/// Runs a write; answers how many rows it changed.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn run(env: &Env, sql: &str, args: &[JsValue]) -> Result<usize, ApiError> {
    let result = stmt(env, sql, args)?
        .run()
        .await
        .map_err(ApiError::internal)?;
    Ok(result
        .meta()
        .map_err(ApiError::internal)?
        .and_then(|m| m.changes)
        .unwrap_or(0))
}

//! Secrets in D1 columns: each value sealed under the deployment's key with associated data
//! `<row>:<field>`, so a sealed value copied into another row or another field does not open.
//!
//! The associated data is part of every stored value: the `<row>` strings the tables use
//! (`integration:<id>`, `user-github-token:<user>:<app type>`) may never change, or nothing
//! sealed before opens.

use crate::config;
use gastown_core::error::ApiError;
use worker::wasm_bindgen::JsValue;
use worker::Env;

/// The fields of one row, sealed and opened under that row's associated data.
pub struct SealedRow(String);

impl SealedRow {
    /// `row` is the row's part of the associated data (its table's prefix and its key).
    pub fn new(row: String) -> Self {
        SealedRow(row)
    }

    fn aad(&self, field: &str) -> String {
        format!("{}:{field}", self.0)
    }

    /// `value` sealed for this row's `field`.
    ///
    /// # Errors
    /// Internal, without a key or randomness.
    pub fn seal(&self, env: &Env, field: &str, value: &str) -> Result<String, ApiError> {
        config::get(env)
            .sealer
            .seal(value.as_bytes(), &self.aad(field), config::nonce()?)
            .map_err(ApiError::internal)
    }

    /// `value` sealed for this row's `field`, as the column and value an update sets.
    ///
    /// # Errors
    /// As [`SealedRow::seal`].
    pub fn column(
        &self,
        env: &Env,
        field: &'static str,
        value: &str,
    ) -> Result<(&'static str, JsValue), ApiError> {
        Ok((field, JsValue::from_str(&self.seal(env, field, value)?)))
    }

    /// This row's `field`, opened.
    ///
    /// # Errors
    /// Internal, when it does not open here (another row's or field's value, another key, or
    /// tampered with) or is not UTF-8.
    pub fn open(&self, env: &Env, field: &str, sealed: &str) -> Result<String, ApiError> {
        let plain = config::get(env)
            .sealer
            .open(sealed, &self.aad(field))
            .map_err(ApiError::internal)?;
        String::from_utf8(plain).map_err(|_| ApiError::internal("sealed value is not UTF-8"))
    }
}

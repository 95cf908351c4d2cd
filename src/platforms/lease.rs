//! The refresh lease on a D1 row whose refresh token the provider rotates (GitLab integrations,
//! GitHub user tokens): of concurrent refreshes exactly one may spend the token, or the losers'
//! refreshes would revoke the winner's.
//!
//! The row's `credential_version` is even at rest and odd while a refresh is claimed. A caller
//! claims by moving the version it read to the next odd one, and only if it is still that
//! version: the version at rest (even), or a claim whose claimer has been silent
//! ([`CLAIM_TIMEOUT_SECS`] since `refresh_claimed_at`), which is taken over by moving it two
//! on. So a live claim is never taken. The claimer then either commits what the refresh
//! returned or releases the claim; both move the version odd → next even, and only if it is
//! still the claimed one, so a claimer whose claim was taken over writes nothing. The losers
//! wait ([`wait`], at most [`WAITS`] times) and re-read the row.

use super::store::{n, run, s};
use crate::config;
use gastown_core::error::ApiError;
use gastown_core::time::rfc3339;
use std::time::Duration;
use worker::wasm_bindgen::JsValue;
use worker::{Delay, Env};

/// A claim whose claimer is silent this long may be taken over.
pub const CLAIM_TIMEOUT_SECS: i64 = 30;
/// How many times a caller that lost the claim waits for the claimer's result.
pub const WAITS: u32 = 40;
const WAIT: Duration = Duration::from_millis(150);

/// One wait for a claimer's result, before the row is read again.
pub async fn wait() {
    Delay::from(WAIT).await;
}

/// The version a claim of `version` moves to: the next odd one from rest, two on from a stale
/// claim (so the stale claimer's commit or release no longer matches).
fn claimed_from(version: i64) -> i64 {
    if version % 2 == 0 {
        version + 1
    } else {
        version + 2
    }
}

/// The lease of one row: its table, and the columns and values that name it.
pub struct Lease<'a> {
    table: &'static str,
    key: Vec<(&'static str, &'a str)>,
}

impl<'a> Lease<'a> {
    pub fn new(table: &'static str, key: Vec<(&'static str, &'a str)>) -> Self {
        Lease { table, key }
    }

    /// `col = ?first AND …`, numbering the key's placeholders from `first`.
    fn key_clause(&self, first: usize) -> String {
        self.key
            .iter()
            .enumerate()
            .map(|(i, (col, _))| format!("{col} = ?{}", first + i))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// `?1` the claimed version, `?2` now, then the key, then the version read and the cutoff
    /// before which a claim is stale.
    fn claim_sql(&self) -> String {
        let v = 3 + self.key.len();
        format!(
            "UPDATE {} SET credential_version = ?1, refresh_claimed_at = ?2 WHERE {} AND credential_version = ?{v} AND (?{v} % 2 = 0 OR COALESCE(refresh_claimed_at, 0) < ?{})",
            self.table,
            self.key_clause(3),
            v + 1
        )
    }

    /// `?1` the version at rest, then the key, then the claimed version.
    fn release_sql(&self) -> String {
        format!(
            "UPDATE {} SET credential_version = ?1, refresh_claimed_at = NULL WHERE {} AND credential_version = ?{}",
            self.table,
            self.key_clause(2),
            2 + self.key.len()
        )
    }

    /// `columns`' values, the version at rest, `updated_at`, then the key, then the claimed
    /// version.
    fn commit_sql(&self, columns: &[&str]) -> String {
        let m = columns.len();
        let assignments: String = columns
            .iter()
            .enumerate()
            .map(|(i, col)| format!("{col} = ?{}, ", i + 1))
            .collect();
        format!(
            "UPDATE {} SET {assignments}credential_version = ?{}, refresh_claimed_at = NULL, updated_at = ?{} WHERE {} AND credential_version = ?{}",
            self.table,
            m + 1,
            m + 2,
            self.key_clause(m + 3),
            m + 3 + self.key.len()
        )
    }

    fn key_args(&self) -> impl Iterator<Item = JsValue> + '_ {
        self.key.iter().map(|(_, v)| s(v))
    }

    /// Takes the right to spend the refresh token, if the row is still at `version` (read by
    /// the caller) and that version is at rest or a stale claim. Answers the claimed (odd)
    /// version, or `None`.
    ///
    /// # Errors
    /// Internal, when D1 fails.
    pub async fn claim(&self, env: &Env, version: i64) -> Result<Option<i64>, ApiError> {
        let now = config::now_s();
        let claimed = claimed_from(version);
        let mut args = vec![n(claimed), n(now)];
        args.extend(self.key_args());
        args.extend([n(version), n(now - CLAIM_TIMEOUT_SECS)]);
        Ok((run(env, &self.claim_sql(), &args).await? == 1).then_some(claimed))
    }

    /// Gives a claim back without new credentials (the refresh failed).
    ///
    /// # Errors
    /// Internal, when D1 fails.
    pub async fn release(&self, env: &Env, claimed: i64) -> Result<(), ApiError> {
        let mut args = vec![n(claimed + 1)];
        args.extend(self.key_args());
        args.push(n(claimed));
        run(env, &self.release_sql(), &args).await?;
        Ok(())
    }

    /// Stores what the claimed refresh returned (`set`: column and value, the secrets already
    /// sealed) with `updated_at`, and puts the version back at rest.
    ///
    /// # Errors
    /// Internal, when D1 fails.
    pub async fn commit(
        &self,
        env: &Env,
        claimed: i64,
        set: Vec<(&'static str, JsValue)>,
    ) -> Result<(), ApiError> {
        let columns: Vec<&str> = set.iter().map(|(col, _)| *col).collect();
        let sql = self.commit_sql(&columns);
        let mut args: Vec<JsValue> = set.into_iter().map(|(_, v)| v).collect();
        args.extend([n(claimed + 1), s(&rfc3339(config::now_ms()))]);
        args.extend(self.key_args());
        args.push(n(claimed));
        run(env, &sql, &args).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_odd_and_takes_over_past_a_stale_one() {
        assert_eq!(claimed_from(0), 1);
        assert_eq!(claimed_from(4), 5);
        assert_eq!(claimed_from(5), 7);
    }

    /// The statements each table ran before the lease was shared, verbatim.
    #[test]
    fn the_statements_are_the_ones_each_table_ran() {
        let integration = Lease::new("platform_integrations", vec![("id", "i")]);
        assert_eq!(
            integration.claim_sql(),
            "UPDATE platform_integrations SET credential_version = ?1, refresh_claimed_at = ?2 WHERE id = ?3 AND credential_version = ?4 AND (?4 % 2 = 0 OR COALESCE(refresh_claimed_at, 0) < ?5)"
        );
        assert_eq!(
            integration.release_sql(),
            "UPDATE platform_integrations SET credential_version = ?1, refresh_claimed_at = NULL WHERE id = ?2 AND credential_version = ?3"
        );
        // `last_error_code` was a literal NULL; it is now bound as one.
        assert_eq!(
            integration.commit_sql(&["access_token", "access_expires_at", "refresh_token", "last_error_code"]),
            "UPDATE platform_integrations SET access_token = ?1, access_expires_at = ?2, refresh_token = ?3, last_error_code = ?4, credential_version = ?5, refresh_claimed_at = NULL, updated_at = ?6 WHERE id = ?7 AND credential_version = ?8"
        );
        let user = Lease::new(
            "user_github_tokens",
            vec![("user_id", "u"), ("app_type", "standard")],
        );
        assert_eq!(
            user.claim_sql(),
            "UPDATE user_github_tokens SET credential_version = ?1, refresh_claimed_at = ?2 WHERE user_id = ?3 AND app_type = ?4 AND credential_version = ?5 AND (?5 % 2 = 0 OR COALESCE(refresh_claimed_at, 0) < ?6)"
        );
        assert_eq!(
            user.release_sql(),
            "UPDATE user_github_tokens SET credential_version = ?1, refresh_claimed_at = NULL WHERE user_id = ?2 AND app_type = ?3 AND credential_version = ?4"
        );
        assert_eq!(
            user.commit_sql(&["access_token", "access_expires_at", "refresh_token", "refresh_expires_at"]),
            "UPDATE user_github_tokens SET access_token = ?1, access_expires_at = ?2, refresh_token = ?3, refresh_expires_at = ?4, credential_version = ?5, refresh_claimed_at = NULL, updated_at = ?6 WHERE user_id = ?7 AND app_type = ?8 AND credential_version = ?9"
        );
    }
}

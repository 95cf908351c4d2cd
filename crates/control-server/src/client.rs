//! Calls out of the container: the HTTP client every caller of the worker (or the gateway)
//! uses, the origin such a call is built from, and the one call with a town's container
//! token that answers a token (the gateway token's self-refresh and the git credential helper
//! both make it; the demo agent of `gastown-standins` uses the client and [`origin`] too).
//!
//! Rules:
//!
//! * one deadline per call, from connecting to the end of the answer; a status is an answer,
//!   not an error; no redirect is followed, so a token only ever goes where it was meant to;
//! * an origin is `http://` or `https://`, a host and no trailing `/`, nothing a header or a
//!   request line would choke on;
//! * a failure names a status or a kind of failure, never a token.

use crate::workdir;
use gastown_core::control::CONTENT_TYPE_JSON;
use std::time::Duration;

/// Deadline of one call to the worker, from connecting to the end of its answer.
const WORKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the worker (an `IssuedToken` or a `GitTokenReply` is well under
/// 2 KiB).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// `url` as calls are built from it: `http://` or `https://`, a host, no trailing `/`.
///
/// # Errors
/// Why it is no such origin, naming `url`.
pub fn origin(url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{url:?} names no host"));
    }
    if trimmed
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
    {
        return Err(format!("{url:?} is not a plain origin"));
    }
    Ok(trimmed.to_owned())
}

/// The client for calls to the worker.
#[must_use]
pub fn agent() -> ureq::Agent {
    agent_with(WORKER_TIMEOUT)
}

/// The client with the deadline `timeout`.
#[must_use]
pub fn agent_with(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// How one call to the worker with the container token failed; never holds a token.
#[derive(Debug)]
pub(crate) enum CallFailure {
    Unreachable(String),
    Status(u16),
    /// Not the JSON expected, or a token with characters a file line or header cannot hold.
    BadAnswer,
}

/// `POST {url}` with `authorization: Bearer <container token>` and the JSON `body`; a 200
/// answer is read (at most [`MAX_ANSWER_BYTES`]) as `T`, whose token `token_of` names must be
/// plain.
pub(crate) fn post_to_worker<T: serde::de::DeserializeOwned>(
    agent: &ureq::Agent,
    url: &str,
    container_token: &str,
    body: &str,
    token_of: impl Fn(&T) -> &str,
) -> Result<T, CallFailure> {
    let mut response = agent
        .post(url)
        .header("authorization", &format!("Bearer {container_token}"))
        .header("content-type", CONTENT_TYPE_JSON)
        .send(body)
        // ureq's message names the URL and the failure, never a header.
        .map_err(|e| CallFailure::Unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(CallFailure::Status(status));
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|_| CallFailure::BadAnswer)?;
    let answer: T = serde_json::from_str(&body).map_err(|_| CallFailure::BadAnswer)?;
    if workdir::is_plain_token(token_of(&answer)) {
        Ok(answer)
    } else {
        Err(CallFailure::BadAnswer)
    }
}

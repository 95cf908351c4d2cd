//! The one error type of the API and its JSON body.
//!
//! Client mistakes and internal failures are different variants. `Internal` never carries text to
//! the client: its detail is for the log line only. The same body travels from a Durable Object
//! back to the router, so [`ApiError::from_wire`] rebuilds the variant from status and code.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every failure the API reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The body is not JSON, or not the JSON object the route needs (400).
    InvalidJson(String),
    /// A well-formed request that still cannot be served as asked (400).
    BadRequest(String),
    /// No credentials, or credentials that do not verify for this route (401).
    Unauthorized(&'static str),
    /// The caller is known but not allowed (403).
    Forbidden(String),
    /// No such resource for this caller (404).
    NotFound(String),
    /// The path exists but not with this method (405).
    MethodNotAllowed,
    /// A container token of a generation the town has rotated away from, or a legacy agent
    /// token issued before the rotation (401). A DO may answer it: it is the DO that knows the
    /// town's current generation.
    TokenRevoked,
    /// The request conflicts with stored state (409).
    Conflict(String),
    /// The town is stopped; start it first (409 `town_stopped`).
    TownStopped,
    /// The org town's creator was deleted: it mints nothing and starts nothing until an org
    /// owner claims it (409 `creator_deleted`).
    CreatorDeleted,
    /// A rig's integration cannot serve it (409); the code says why: `integration_suspended`,
    /// `integration_revoked` or `integration_missing`. Never a stale token, never a fallback.
    IntegrationUnavailable(&'static str),
    /// Neither the rig's integration nor the town's `git_auth` has a token for the repository
    /// (404 `no_git_credentials`).
    NoGitCredentials,
    /// A per-owner or per-town limit is reached (409); `limit` names the setting.
    QuotaExceeded { limit: &'static str, max: u64 },
    /// The resource existed and is gone for good (410).
    Gone(String),
    /// The body is larger than the route accepts (413).
    PayloadTooLarge,
    /// The body is not `application/json` (415).
    UnsupportedMediaType,
    /// A field has the wrong type, shape or length (422); `field` names it.
    Invalid { field: String, message: String },
    /// The town's container did not answer or refused (502). The detail is logged, never sent.
    Upstream(String),
    /// Something failed on our side. The detail is logged, never sent.
    Internal(String),
}

impl ApiError {
    /// Shorthand for a 422 naming the field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for an internal failure with a detail for the log.
    pub fn internal(detail: impl fmt::Display) -> Self {
        ApiError::Internal(detail.to_string())
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidJson(_) | ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized(_) | ApiError::TokenRevoked => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) | ApiError::NoGitCredentials => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::Conflict(_)
            | ApiError::TownStopped
            | ApiError::CreatorDeleted
            | ApiError::IntegrationUnavailable(_)
            | ApiError::QuotaExceeded { .. } => 409,
            ApiError::Gone(_) => 410,
            ApiError::PayloadTooLarge => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::Invalid { .. } => 422,
            ApiError::Upstream(_) => 502,
            ApiError::Internal(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::TokenRevoked => "token_revoked",
            ApiError::TownStopped => "town_stopped",
            ApiError::CreatorDeleted => "creator_deleted",
            ApiError::IntegrationUnavailable(code) => code,
            ApiError::NoGitCredentials => "no_git_credentials",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::Gone(_) => "gone",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Invalid { .. } => "invalid_field",
            ApiError::Upstream(_) => "container_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The text a client may read.
    pub fn message(&self) -> String {
        match self {
            ApiError::InvalidJson(m)
            | ApiError::BadRequest(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Gone(m) => m.clone(),
            ApiError::Unauthorized(m) => (*m).to_owned(),
            ApiError::TokenRevoked => {
                "this token was revoked by a rotation; the container gets a fresh one".to_owned()
            }
            ApiError::QuotaExceeded { limit, max } => {
                format!("the limit {limit} ({max}) is reached")
            }
            ApiError::TownStopped => "the town is stopped; start it first".to_owned(),
            ApiError::CreatorDeleted => {
                "the town's creator was deleted; an owner of its org may claim it".to_owned()
            }
            ApiError::IntegrationUnavailable(code) => format!(
                "the rig's integration cannot give a token ({code}); reconnect it or change the rig"
            ),
            ApiError::NoGitCredentials => {
                "no integration or town git_auth token covers this repository".to_owned()
            }
            ApiError::MethodNotAllowed => "method not allowed on this path".to_owned(),
            ApiError::PayloadTooLarge => "request body is too large".to_owned(),
            ApiError::UnsupportedMediaType => "request body must be application/json".to_owned(),
            ApiError::Invalid { field, message } => format!("{field}: {message}"),
            ApiError::Upstream(_) => "the town's container is not available".to_owned(),
            ApiError::Internal(_) => "internal error".to_owned(),
        }
    }

    /// The JSON body: `{"error":{"code","message"[,"field"]}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.message(),
                field: match self {
                    ApiError::Invalid { field, .. } => Some(field.clone()),
                    ApiError::QuotaExceeded { limit, .. } => Some((*limit).to_owned()),
                    _ => None,
                },
            },
        }
    }

    /// Rebuilds an error sent by a Durable Object. Anything unexpected is internal: a DO never
    /// gets to invent a client-facing status the router does not know.
    pub fn from_wire(status: u16, body: &str) -> Self {
        let Ok(parsed) = serde_json::from_str::<ErrorBody>(body) else {
            return ApiError::internal(format!(
                "durable object answered {status} without an error body"
            ));
        };
        let ErrorDetail {
            code,
            message,
            field,
        } = parsed.error;
        match (status, code.as_str()) {
            (401, "token_revoked") => ApiError::TokenRevoked,
            (409, "town_stopped") => ApiError::TownStopped,
            (409, "creator_deleted") => ApiError::CreatorDeleted,
            (409, "quota_exceeded") => match field.as_deref().and_then(quota_limit) {
                Some(limit) => ApiError::QuotaExceeded {
                    limit,
                    max: message
                        .split(['(', ')'])
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                },
                None => ApiError::internal("durable object answered an unknown quota"),
            },
            (400, "invalid_json") => ApiError::InvalidJson(message),
            (400, _) => ApiError::BadRequest(message),
            (403, _) => ApiError::Forbidden(message),
            (404, _) => ApiError::NotFound(message),
            (409, _) => ApiError::Conflict(message),
            (410, _) => ApiError::Gone(message),
            (502, _) => ApiError::Upstream(message),
            (422, _) => {
                let field = field.unwrap_or_default();
                let message = message
                    .strip_prefix(&format!("{field}: "))
                    .map(str::to_owned)
                    .unwrap_or(message);
                ApiError::Invalid { field, message }
            }
            _ => ApiError::internal(format!("durable object answered {status} {code}")),
        }
    }
}

/// The quota settings a DO may name (`QuotaExceeded::limit` is `'static`).
pub const QUOTA_LIMITS: &[&str] = &[
    "MAX_TOWNS_PER_OWNER",
    "MAX_RIGS_PER_TOWN",
    "MAX_AGENTS_PER_TOWN",
];

fn quota_limit(name: &str) -> Option<&'static str> {
    QUOTA_LIMITS.iter().copied().find(|l| *l == name)
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Internal(detail) => write!(f, "internal error: {detail}"),
            ApiError::Upstream(detail) => write!(f, "container unavailable: {detail}"),
            other => write!(
                f,
                "{} {}: {}",
                other.status(),
                other.code(),
                other.message()
            ),
        }
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape_is_pinned() {
        let json = serde_json::to_string(&ApiError::invalid("name", "too long").body()).unwrap();
        assert_eq!(
            json,
            r#"{"error":{"code":"invalid_field","message":"name: too long","field":"name"}}"#
        );
        let json =
            serde_json::to_string(&ApiError::NotFound("town not found".into()).body()).unwrap();
        assert_eq!(
            json,
            r#"{"error":{"code":"not_found","message":"town not found"}}"#
        );
    }

    #[test]
    fn internal_detail_never_reaches_the_body() {
        let err = ApiError::internal("sql: no such table towns; secret=abc");
        let json = serde_json::to_string(&err.body()).unwrap();
        assert!(!json.contains("secret"));
        assert!(!json.contains("sql"));
        assert_eq!(err.status(), 500);
    }

    #[test]
    fn wire_round_trip_keeps_client_errors() {
        for err in [
            ApiError::NotFound("town not found".into()),
            ApiError::Conflict("rig name taken".into()),
            ApiError::invalid("git_url", "must be https"),
            ApiError::Forbidden("owner only".into()),
            ApiError::Gone("town destroyed".into()),
            ApiError::TokenRevoked,
            ApiError::TownStopped,
            ApiError::CreatorDeleted,
            ApiError::QuotaExceeded {
                limit: "MAX_RIGS_PER_TOWN",
                max: 3,
            },
        ] {
            let body = serde_json::to_string(&err.body()).unwrap();
            assert_eq!(ApiError::from_wire(err.status(), &body), err);
        }
    }

    #[test]
    fn wire_never_forges_auth_or_server_statuses() {
        let body = serde_json::to_string(&ApiError::Unauthorized("x").body()).unwrap();
        assert!(matches!(
            ApiError::from_wire(401, &body),
            ApiError::Internal(_)
        ));
        assert!(matches!(
            ApiError::from_wire(404, "not json"),
            ApiError::Internal(_)
        ));
    }
}

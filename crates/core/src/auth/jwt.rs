//! HS256 verification and signing, strict per RFC 8725.
//!
//! Verification: the header must say `HS256` (so `none`, RS*/ES*, other HS sizes and unknown
//! algorithms fail before any key is used), the signature must verify, `exp` must be present and
//! not past, `nbf` and `iat` (when present) must not be in the future, and `exp` may not lie
//! further ahead than the kind's lifetime; each check allows [`CLOCK_SKEW_SECS`]. Then and before
//! any time check the claims must describe exactly the kind the route accepts.

use super::claims::{
    AgentClaims, ContainerClaims, OrgMembership, OrgRole, SandboxClaims, TokenKind, UserClaims,
};
use crate::ids::{AgentId, OrgId, RigId, TownId, UserId};
use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, Header, UntrustedToken, ValidationError};
use serde::{Deserialize, Serialize};

/// Clock skew allowed on every time check.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// Lifetime of the container tokens this worker mints.
pub const CONTAINER_TOKEN_TTL_SECS: i64 = 8 * 60 * 60;
/// Lifetime of the sandbox (gateway) tokens this worker mints.
pub const SANDBOX_TOKEN_TTL_SECS: i64 = 24 * 60 * 60;
/// Longer strings are not tokens we issue or accept.
const MAX_TOKEN_LEN: usize = 8 * 1024;
const SANDBOX_TYPE: &str = "gastown_sandbox";
const CONTAINER_SCOPE: &str = "container";
const USER_AUDIENCE: &str = "gastown";

/// Why a token was refused. The message is safe to show: it never repeats the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    BadAlgorithm,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    LifetimeTooLong,
    /// A valid token of another kind (or claims that fit no kind, or two at once).
    WrongKind,
    BadAudience,
    /// The secret for this kind is not configured: an operator's mistake, not the caller's.
    NotConfigured,
}

impl AuthError {
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "missing bearer token",
            AuthError::Malformed => "malformed token",
            AuthError::BadAlgorithm => "token algorithm not accepted",
            AuthError::BadSignature => "invalid token signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::IssuedInFuture => "token issued in the future",
            AuthError::LifetimeTooLong => "token lifetime too long",
            AuthError::WrongKind => "token kind not accepted on this route",
            AuthError::BadAudience => "token audience not accepted",
            AuthError::NotConfigured => "token verification not configured",
        }
    }
}

/// The HMAC keys, built once per isolate from the secrets.
#[derive(Clone)]
pub struct Keys {
    nextauth: Option<Hs256Key>,
    gastown: Option<Hs256Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(****)")
    }
}

/// `aud` may be a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawMembership {
    #[serde(rename = "orgId")]
    org_id: String,
    role: OrgRole,
}

/// Every claim any kind uses, read in one pass; the kind is decided afterwards.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(rename = "kiloUserId")]
    kilo_user_id: Option<String>,
    #[serde(rename = "orgMemberships", default)]
    org_memberships: Option<Vec<RawMembership>>,
    #[serde(rename = "gastownAccess")]
    gastown_access: Option<bool>,
    #[serde(rename = "isAdmin")]
    is_admin: Option<bool>,
    aud: Option<Audience>,
    #[serde(rename = "townId")]
    town_id: Option<String>,
    #[serde(rename = "userId")]
    user_id: Option<String>,
    #[serde(rename = "agentId")]
    agent_id: Option<String>,
    #[serde(rename = "rigId")]
    rig_id: Option<String>,
    scope: Option<String>,
    #[serde(rename = "type")]
    token_type: Option<String>,
    sub: Option<String>,
    #[serde(rename = "town_id")]
    sandbox_town_id: Option<String>,
    /// `Some(None)` is an explicit `null`.
    #[serde(default, deserialize_with = "present")]
    organization_id: Option<Option<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl RawClaims {
    /// The single kind these claims describe, or `None` when they fit none or several.
    fn kind(&self) -> Option<TokenKind> {
        let user = self.kilo_user_id.is_some();
        let sandbox = self.token_type.is_some();
        let container = self.scope.is_some();
        let agent = self.agent_id.is_some() && self.scope.is_none();
        match (user, sandbox, container, agent) {
            (true, false, false, false) => Some(TokenKind::User),
            (false, true, false, false) if self.token_type.as_deref() == Some(SANDBOX_TYPE) => {
                Some(TokenKind::Sandbox)
            }
            (false, false, true, false) if self.scope.as_deref() == Some(CONTAINER_SCOPE) => {
                Some(TokenKind::Container)
            }
            (false, false, false, true) => Some(TokenKind::Agent),
            _ => None,
        }
    }
}

fn required<T>(
    value: Option<String>,
    parse: impl Fn(&str) -> Result<T, crate::ids::IdError>,
) -> Result<T, AuthError> {
    value
        .as_deref()
        .ok_or(AuthError::WrongKind)
        .and_then(|s| parse(s).map_err(|_| AuthError::Malformed))
}

fn non_empty(value: Option<String>) -> Result<String, AuthError> {
    match value {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(AuthError::Malformed),
        None => Err(AuthError::WrongKind),
    }
}

impl Keys {
    /// Empty secrets count as missing: tokens of those kinds then never verify.
    pub fn new(nextauth_secret: Option<&str>, gastown_secret: Option<&str>) -> Self {
        let key = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(Hs256Key::new);
        Self {
            nextauth: key(nextauth_secret),
            gastown: key(gastown_secret),
        }
    }

    fn verify(
        &self,
        token: &str,
        kind: TokenKind,
        now: i64,
    ) -> Result<(RawClaims, i64), AuthError> {
        let key = match kind {
            TokenKind::User | TokenKind::Sandbox => self.nextauth.as_ref(),
            TokenKind::Container | TokenKind::Agent => self.gastown.as_ref(),
        }
        .ok_or(AuthError::NotConfigured)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let untrusted = UntrustedToken::new(token).map_err(|_| AuthError::Malformed)?;
        if untrusted.algorithm() != "HS256" {
            return Err(AuthError::BadAlgorithm);
        }
        let token = Hs256
            .validator::<RawClaims>(key)
            .validate(&untrusted)
            .map_err(|e| match e {
                ValidationError::AlgorithmMismatch { .. } => AuthError::BadAlgorithm,
                ValidationError::InvalidSignature | ValidationError::InvalidSignatureLen { .. } => {
                    AuthError::BadSignature
                }
                _ => AuthError::Malformed,
            })?;
        if token.claims().custom.kind() != Some(kind) {
            return Err(AuthError::WrongKind);
        }
        let claims = token.claims();
        let exp = claims
            .expiration
            .map(|t| t.timestamp())
            .ok_or(AuthError::Malformed)?;
        if now > exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.not_before.map(|t| t.timestamp()) {
            if now.saturating_add(CLOCK_SKEW_SECS) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        if let Some(iat) = claims.issued_at.map(|t| t.timestamp()) {
            if iat > now.saturating_add(CLOCK_SKEW_SECS) {
                return Err(AuthError::IssuedInFuture);
            }
        }
        if exp.saturating_sub(now) > kind.max_lifetime_secs() + CLOCK_SKEW_SECS {
            return Err(AuthError::LifetimeTooLong);
        }
        let (_, claims) = token.into_parts();
        Ok((claims.custom, exp))
    }

    /// Verifies a dashboard user token. `now` is seconds since the epoch.
    ///
    /// # Errors
    /// Any [`AuthError`]; `WrongKind` for a valid sandbox token.
    pub fn verify_user(&self, token: &str, now: i64) -> Result<UserClaims, AuthError> {
        let (raw, exp) = self.verify(token, TokenKind::User, now)?;
        match &raw.aud {
            None => {}
            Some(Audience::One(a)) if a == USER_AUDIENCE => {}
            Some(Audience::Many(all)) if all.iter().any(|a| a == USER_AUDIENCE) => {}
            Some(_) => return Err(AuthError::BadAudience),
        }
        let org_memberships = raw
            .org_memberships
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                Ok(OrgMembership {
                    org_id: OrgId::parse(&m.org_id).map_err(|_| AuthError::Malformed)?,
                    role: m.role,
                })
            })
            .collect::<Result<Vec<_>, AuthError>>()?;
        Ok(UserClaims {
            user_id: required(raw.kilo_user_id, UserId::parse)?,
            org_memberships,
            gastown_access: raw.gastown_access,
            is_admin: raw.is_admin.unwrap_or(false),
            expires_at: exp,
        })
    }

    /// Verifies a per-town container token (`scope: "container"`).
    ///
    /// # Errors
    /// Any [`AuthError`]; `WrongKind` for a valid legacy agent token.
    pub fn verify_container(&self, token: &str, now: i64) -> Result<ContainerClaims, AuthError> {
        let (raw, exp) = self.verify(token, TokenKind::Container, now)?;
        Ok(ContainerClaims {
            town_id: required(raw.town_id, TownId::parse)?,
            user_id: non_empty(raw.user_id)?,
            expires_at: exp,
        })
    }

    /// Verifies a legacy per-agent token (no `scope`).
    ///
    /// # Errors
    /// Any [`AuthError`]; `WrongKind` for a valid container token.
    pub fn verify_agent(&self, token: &str, now: i64) -> Result<AgentClaims, AuthError> {
        let (raw, exp) = self.verify(token, TokenKind::Agent, now)?;
        Ok(AgentClaims {
            agent_id: required(raw.agent_id, AgentId::parse)?,
            rig_id: required(raw.rig_id, RigId::parse)?,
            town_id: required(raw.town_id, TownId::parse)?,
            user_id: non_empty(raw.user_id)?,
            expires_at: exp,
        })
    }

    /// Verifies a sandbox (gateway) token.
    ///
    /// # Errors
    /// Any [`AuthError`]; `WrongKind` for a valid user token.
    pub fn verify_sandbox(&self, token: &str, now: i64) -> Result<SandboxClaims, AuthError> {
        let (raw, exp) = self.verify(token, TokenKind::Sandbox, now)?;
        let organization_id = raw.organization_id.ok_or(AuthError::WrongKind)?;
        Ok(SandboxClaims {
            user_id: non_empty(raw.sub)?,
            town_id: required(raw.sandbox_town_id, TownId::parse)?,
            organization_id,
            expires_at: exp,
        })
    }

    fn sign<T: Serialize>(
        &self,
        key: Option<&Hs256Key>,
        custom: T,
        now: i64,
        ttl: i64,
    ) -> Result<(String, i64), AuthError> {
        let key = key.ok_or(AuthError::NotConfigured)?;
        let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).ok_or(AuthError::Malformed);
        let mut claims = Claims::new(custom);
        claims.issued_at = Some(at(now)?);
        claims.expiration = Some(at(now + ttl)?);
        let header = Header::empty().with_token_type("JWT");
        let token = Hs256
            .token(&header, &claims, key)
            .map_err(|_| AuthError::Malformed)?;
        Ok((token, now + ttl))
    }
}

#[derive(Serialize)]
struct ContainerOut<'a> {
    #[serde(rename = "townId")]
    town_id: &'a str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    scope: &'static str,
}

#[derive(Serialize)]
struct SandboxOut<'a> {
    sub: &'a str,
    #[serde(rename = "type")]
    token_type: &'static str,
    town_id: &'a str,
    organization_id: Option<&'a str>,
}

/// Mints a container token for `town`, valid [`CONTAINER_TOKEN_TTL_SECS`]. Returns the token
/// and its `exp`. `user_id` must be the town's owner (creator for org towns) or the town id.
///
/// # Errors
/// `NotConfigured` without `GASTOWN_JWT_SECRET`; `Malformed` for an empty user id.
pub fn sign_container(
    keys: &Keys,
    town: &TownId,
    user_id: &str,
    now: i64,
) -> Result<(String, i64), AuthError> {
    if user_id.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    let custom = ContainerOut {
        town_id: town.as_str(),
        user_id,
        scope: CONTAINER_SCOPE,
    };
    keys.sign(keys.gastown.as_ref(), custom, now, CONTAINER_TOKEN_TTL_SECS)
}

/// Mints a sandbox (gateway) token, valid [`SANDBOX_TOKEN_TTL_SECS`].
///
/// # Errors
/// `NotConfigured` without `NEXTAUTH_SECRET`; `Malformed` for an empty user id.
pub fn sign_sandbox(
    keys: &Keys,
    user_id: &str,
    town: &TownId,
    org: Option<&OrgId>,
    now: i64,
) -> Result<(String, i64), AuthError> {
    if user_id.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    let custom = SandboxOut {
        sub: user_id,
        token_type: SANDBOX_TYPE,
        town_id: town.as_str(),
        organization_id: org.map(OrgId::as_str),
    };
    keys.sign(keys.nextauth.as_ref(), custom, now, SANDBOX_TOKEN_TTL_SECS)
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;

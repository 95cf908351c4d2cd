//! HS256 verification and signing, strict per RFC 8725.
//!
//! Verification: the header must say `HS256` (so `none`, RS*/ES*, other HS sizes and unknown
//! algorithms fail before any key is used), carry no `crit`, and carry no `typ` other than `JWT`
//! (see [`JoseHeader`]); the signature must verify (constant-time). Then, before any time check,
//! the claims must describe exactly the kind the route accepts. Then the times:
//!
//! - `exp` and `iat` are required (a token without either is malformed);
//! - `exp` must not be past, `nbf` (when present) and `iat` must not be in the future, each
//!   allowing [`CLOCK_SKEW_SECS`];
//! - the lifetime is measured from `iat`: `exp - iat` may not exceed the kind's
//!   [`TokenKind::max_lifetime_secs`] by more than [`LIFETIME_LEEWAY_SECS`], so a token issued
//!   10 h ago with 50 min left is refused as a user token. `exp - now` is capped too (with the
//!   clock skew), which matters only for an `iat` slightly ahead of our clock.

use super::claims::{
    AgentClaims, ContainerClaims, OrgMembership, OrgRole, SandboxClaims, TokenKind, UserClaims,
};
use crate::ids::{AgentId, OrgId, RigId, TownId, UserId};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, Header};
use serde::{Deserialize, Serialize};
use serde_json::Number;
use std::borrow::Cow;

/// Clock skew allowed on every time check against our clock.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// How far `exp - iat` may exceed a kind's lifetime. Both instants come from the issuer's clock,
/// so skew does not apply; this covers issuers that read their clock twice, or round `exp` up,
/// when they compute the two.
pub const LIFETIME_LEEWAY_SECS: i64 = 5;
/// Default lifetime of the container tokens this worker mints (`CONTAINER_TOKEN_TTL_S`).
pub const CONTAINER_TOKEN_TTL_SECS: i64 = 8 * 60 * 60;
/// Default lifetime of the sandbox (gateway) tokens this worker mints (`GATEWAY_TOKEN_TTL_S`).
pub const SANDBOX_TOKEN_TTL_SECS: i64 = 24 * 60 * 60;
/// Longer strings are not tokens we issue or accept.
const MAX_TOKEN_LEN: usize = 8 * 1024;
const SANDBOX_TYPE: &str = "gastown_sandbox";
const CONTAINER_SCOPE: &str = "container";
const USER_AUDIENCE: &str = "gastown";

// The tokens we mint must pass our own lifetime rule.
const _: () = assert!(CONTAINER_TOKEN_TTL_SECS <= super::claims::CONTAINER_TOKEN_MAX_LIFETIME_SECS);
const _: () = assert!(SANDBOX_TOKEN_TTL_SECS <= super::claims::SANDBOX_TOKEN_MAX_LIFETIME_SECS);

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
    /// No `iat`: the lifetime cannot be measured, so the token is not accepted.
    MissingIssuedAt,
    LifetimeTooLong,
    /// A `typ` header other than `JWT` (an access token, a logout token, …).
    BadType,
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
            AuthError::MissingIssuedAt => "token has no issue time",
            AuthError::BadType => "token type not accepted",
            AuthError::LifetimeTooLong => "token lifetime too long",
            AuthError::WrongKind => "token kind not accepted on this route",
            AuthError::BadAudience => "token audience not accepted",
            AuthError::NotConfigured => "token verification not configured",
        }
    }
}

/// One secret: the HMAC state with the key already absorbed (cloned per verification, which
/// saves hashing the key's two pad blocks on every request), and the signing key.
#[derive(Clone)]
struct Key {
    mac: Hmac<sha2::Sha256>,
    signing: Hs256Key,
}

impl Key {
    fn new(secret: &str) -> Option<Key> {
        Some(Key {
            mac: Hmac::new_from_slice(secret.as_bytes()).ok()?,
            signing: Hs256Key::new(secret),
        })
    }
}

/// The HMAC keys, built once per isolate from the secrets.
#[derive(Clone)]
pub struct Keys {
    nextauth: Option<Key>,
    gastown: Option<Key>,
}

/// The JOSE header. `alg` must be `HS256`; a `crit` header (an extension we would have to
/// understand) is refused; `typ` may be absent, and when present must name a plain JWT.
///
/// `typ` is a media type (RFC 7515 §4.1.9), so it is compared case-insensitively, and a value
/// without `/` means the same as with `application/` in front: `JWT`, `jwt` and
/// `application/jwt` are accepted; `at+jwt`, `logout+jwt`, `JOSE` and anything else are not
/// (RFC 8725 §3.11: explicit typing keeps one kind of JWT from being used as another).
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    typ: Option<Cow<'a, str>>,
}

impl JoseHeader<'_> {
    fn typ_is_jwt(&self) -> bool {
        const PREFIX: &str = "application/";
        let Some(typ) = self.typ.as_deref() else {
            return true;
        };
        let subtype = match typ.get(..PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(PREFIX) => &typ[PREFIX.len()..],
            _ => typ,
        };
        subtype.eq_ignore_ascii_case("JWT")
    }
}

/// A NumericDate: seconds since the epoch, integer or not.
fn seconds(n: &Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && f.abs() < 1e15)
            .map(|f| f.floor() as i64)
    })
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(****)")
    }
}

/// `aud` may be a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

#[derive(Deserialize)]
struct RawMembership<'a> {
    #[serde(rename = "orgId", borrow)]
    org_id: Cow<'a, str>,
    role: OrgRole,
}

/// Every claim any kind uses, read in one pass; the kind is decided afterwards.
#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(rename = "kiloUserId", borrow)]
    kilo_user_id: Option<Cow<'a, str>>,
    #[serde(rename = "orgMemberships", default, borrow)]
    org_memberships: Option<Vec<RawMembership<'a>>>,
    #[serde(rename = "gastownAccess")]
    gastown_access: Option<bool>,
    #[serde(rename = "isAdmin")]
    is_admin: Option<bool>,
    #[serde(borrow)]
    aud: Option<Audience<'a>>,
    #[serde(rename = "townId", borrow)]
    town_id: Option<Cow<'a, str>>,
    #[serde(rename = "userId", borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(rename = "agentId", borrow)]
    agent_id: Option<Cow<'a, str>>,
    #[serde(rename = "rigId", borrow)]
    rig_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    scope: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    token_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sub: Option<Cow<'a, str>>,
    #[serde(rename = "town_id", borrow)]
    sandbox_town_id: Option<Cow<'a, str>>,
    /// `Some(None)` is an explicit `null`.
    #[serde(default, deserialize_with = "present")]
    organization_id: Option<Option<String>>,
    /// The container token's generation (see `policy::token_generation`).
    gen: Option<u64>,
    exp: Option<Number>,
    nbf: Option<Number>,
    iat: Option<Number>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl RawClaims<'_> {
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
    value: Option<Cow<'_, str>>,
    parse: impl Fn(&str) -> Result<T, crate::ids::IdError>,
) -> Result<T, AuthError> {
    value
        .as_deref()
        .ok_or(AuthError::WrongKind)
        .and_then(|s| parse(s).map_err(|_| AuthError::Malformed))
}

fn non_empty(value: Option<Cow<'_, str>>) -> Result<String, AuthError> {
    match value {
        Some(s) if !s.trim().is_empty() => Ok(s.into_owned()),
        Some(_) => Err(AuthError::Malformed),
        None => Err(AuthError::WrongKind),
    }
}

impl Keys {
    /// Empty secrets count as missing: tokens of those kinds then never verify.
    pub fn new(nextauth_secret: Option<&str>, gastown_secret: Option<&str>) -> Self {
        let key = |s: Option<&str>| s.filter(|s| !s.is_empty()).and_then(Key::new);
        Self {
            nextauth: key(nextauth_secret),
            gastown: key(gastown_secret),
        }
    }

    /// Checks everything but the kind-specific claims, then hands the claims (borrowing from the
    /// decoded token, so nothing is copied that is not kept) and `exp` to `build`.
    fn verify<T>(
        &self,
        token: &str,
        kind: TokenKind,
        now: i64,
        build: impl FnOnce(RawClaims<'_>, i64, i64) -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        let key = match kind {
            TokenKind::User | TokenKind::Sandbox => self.nextauth.as_ref(),
            TokenKind::Container | TokenKind::Agent => self.gastown.as_ref(),
        }
        .ok_or(AuthError::NotConfigured)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        // The algorithm is read before any key is used: only HS256 goes further.
        let header_json = B64.decode(header_b64).map_err(|_| AuthError::Malformed)?;
        let header: JoseHeader<'_> =
            serde_json::from_slice(&header_json).map_err(|_| AuthError::Malformed)?;
        if header.alg != "HS256" {
            return Err(AuthError::BadAlgorithm);
        }
        if header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        if !header.typ_is_jwt() {
            return Err(AuthError::BadType);
        }
        let signature = B64
            .decode(signature_b64)
            .map_err(|_| AuthError::BadSignature)?;
        let mut mac = key.mac.clone();
        mac.update(&token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()]);
        // Constant-time comparison, and a signature of any other length fails.
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims_json = B64.decode(claims_b64).map_err(|_| AuthError::Malformed)?;
        let raw: RawClaims =
            serde_json::from_slice(&claims_json).map_err(|_| AuthError::Malformed)?;
        if raw.kind() != Some(kind) {
            return Err(AuthError::WrongKind);
        }
        let time = |n: &Option<Number>| -> Result<Option<i64>, AuthError> {
            n.as_ref()
                .map(|n| seconds(n).ok_or(AuthError::Malformed))
                .transpose()
        };
        let exp = time(&raw.exp)?.ok_or(AuthError::Malformed)?;
        if now > exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = time(&raw.nbf)? {
            if now.saturating_add(CLOCK_SKEW_SECS) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        let iat = time(&raw.iat)?.ok_or(AuthError::MissingIssuedAt)?;
        if iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(AuthError::IssuedInFuture);
        }
        let max = kind.max_lifetime_secs();
        if exp.saturating_sub(iat) > max + LIFETIME_LEEWAY_SECS
            || exp.saturating_sub(now) > max + CLOCK_SKEW_SECS
        {
            return Err(AuthError::LifetimeTooLong);
        }
        build(raw, exp, iat)
    }

    /// Verifies a dashboard user token. `now` is seconds since the epoch.
    ///
    /// # Errors
    /// Any [`AuthError`]; `WrongKind` for a valid sandbox token.
    pub fn verify_user(&self, token: &str, now: i64) -> Result<UserClaims, AuthError> {
        self.verify(token, TokenKind::User, now, |raw, exp, _| {
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
        })
    }

    /// Verifies a per-town container token (`scope: "container"`).
    ///
    /// # Errors
    /// Any [`AuthError`]; `WrongKind` for a valid legacy agent token.
    pub fn verify_container(&self, token: &str, now: i64) -> Result<ContainerClaims, AuthError> {
        self.verify(token, TokenKind::Container, now, |raw, exp, iat| {
            Ok(ContainerClaims {
                town_id: required(raw.town_id, TownId::parse)?,
                user_id: non_empty(raw.user_id)?,
                generation: raw.gen,
                issued_at: iat,
                expires_at: exp,
            })
        })
    }

    /// Verifies a legacy per-agent token (no `scope`).
    ///
    /// # Errors
    /// Any [`AuthError`]; `WrongKind` for a valid container token.
    pub fn verify_agent(&self, token: &str, now: i64) -> Result<AgentClaims, AuthError> {
        self.verify(token, TokenKind::Agent, now, |raw, exp, iat| {
            Ok(AgentClaims {
                agent_id: required(raw.agent_id, AgentId::parse)?,
                rig_id: required(raw.rig_id, RigId::parse)?,
                town_id: required(raw.town_id, TownId::parse)?,
                user_id: non_empty(raw.user_id)?,
                issued_at: iat,
                expires_at: exp,
            })
        })
    }

    /// Verifies a sandbox (gateway) token.
    ///
    /// # Errors
    /// Any [`AuthError`]; `WrongKind` for a valid user token.
    pub fn verify_sandbox(&self, token: &str, now: i64) -> Result<SandboxClaims, AuthError> {
        self.verify(token, TokenKind::Sandbox, now, |raw, exp, _| {
            let organization_id = raw.organization_id.ok_or(AuthError::WrongKind)?;
            Ok(SandboxClaims {
                user_id: non_empty(raw.sub)?,
                town_id: required(raw.sandbox_town_id, TownId::parse)?,
                organization_id,
                expires_at: exp,
            })
        })
    }

    fn sign<T: Serialize>(
        &self,
        key: Option<&Key>,
        custom: T,
        now: i64,
        ttl: i64,
    ) -> Result<(String, i64), AuthError> {
        let key = &key.ok_or(AuthError::NotConfigured)?.signing;
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
    gen: u64,
}

#[derive(Serialize)]
struct SandboxOut<'a> {
    sub: &'a str,
    #[serde(rename = "type")]
    token_type: &'static str,
    town_id: &'a str,
    organization_id: Option<&'a str>,
}

/// Mints a container token for `town`, valid `ttl` seconds (the deployment's setting, by
/// default [`CONTAINER_TOKEN_TTL_SECS`]). Returns the token and its `exp`. `user_id` must be
/// the town's owner (creator for org towns) or the town id.
///
/// # Errors
/// `NotConfigured` without `GASTOWN_JWT_SECRET`; `Malformed` for an empty user id;
/// `LifetimeTooLong` for a `ttl` our own validation would refuse (or not positive).
pub fn sign_container(
    keys: &Keys,
    town: &TownId,
    user_id: &str,
    generation: u64,
    now: i64,
    ttl: i64,
) -> Result<(String, i64), AuthError> {
    if user_id.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    mintable(ttl, super::claims::CONTAINER_TOKEN_MAX_LIFETIME_SECS)?;
    let custom = ContainerOut {
        town_id: town.as_str(),
        user_id,
        scope: CONTAINER_SCOPE,
        gen: generation,
    };
    keys.sign(keys.gastown.as_ref(), custom, now, ttl)
}

/// A lifetime we may mint: positive, and within what our own validation accepts.
fn mintable(ttl: i64, max: i64) -> Result<(), AuthError> {
    if ttl <= 0 || ttl > max {
        return Err(AuthError::LifetimeTooLong);
    }
    Ok(())
}

/// Mints a sandbox (gateway) token, valid `ttl` seconds (by default
/// [`SANDBOX_TOKEN_TTL_SECS`]).
///
/// # Errors
/// `NotConfigured` without `NEXTAUTH_SECRET`; `Malformed` for an empty user id;
/// `LifetimeTooLong` for a `ttl` our own validation would refuse (or not positive).
pub fn sign_sandbox(
    keys: &Keys,
    user_id: &str,
    town: &TownId,
    org: Option<&OrgId>,
    now: i64,
    ttl: i64,
) -> Result<(String, i64), AuthError> {
    if user_id.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    mintable(ttl, super::claims::SANDBOX_TOKEN_MAX_LIFETIME_SECS)?;
    let custom = SandboxOut {
        sub: user_id,
        token_type: SANDBOX_TYPE,
        town_id: town.as_str(),
        organization_id: org.map(OrgId::as_str),
    };
    keys.sign(keys.nextauth.as_ref(), custom, now, ttl)
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;

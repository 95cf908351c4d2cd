//! Who is calling. Four token kinds (DESIGN.md §3) and the internal API key.
//!
//! Every route accepts exactly one principal kind. The router calls one `verify_*` function for
//! the route before it looks up any Durable Object stub, and hands the handler the typed claims.
//! Kinds that share a secret (user and sandbox tokens; container and legacy agent tokens) are told
//! apart by their claims, and a token that looks like two kinds at once is rejected.

mod api_key;
mod claims;
mod jwt;

pub use api_key::InternalKey;
pub use claims::{
    AgentClaims, ContainerClaims, OrgMembership, OrgRole, SandboxClaims, TokenKind, UserClaims,
    AGENT_TOKEN_MAX_LIFETIME_SECS, CONTAINER_TOKEN_MAX_LIFETIME_SECS,
    SANDBOX_TOKEN_MAX_LIFETIME_SECS, USER_TOKEN_MAX_LIFETIME_SECS,
};
pub use jwt::{
    sign_container, sign_sandbox, AuthError, Keys, CLOCK_SKEW_SECS, CONTAINER_TOKEN_TTL_SECS,
    LIFETIME_LEEWAY_SECS, SANDBOX_TOKEN_TTL_SECS,
};

/// Takes the token out of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_header() {
        use super::bearer;
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("abc")), None);
        assert_eq!(bearer(None), None);
    }
}

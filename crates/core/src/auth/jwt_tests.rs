//! Tables of tokens against each verifier. Tokens are forged by hand here (not with the signer
//! under test) so a bug in signing cannot hide a bug in verifying.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

const NEXTAUTH: &str = "nextauth-test-secret-0123456789abcdef";
const GASTOWN: &str = "gastown-test-secret-0123456789abcdef";
const NOW: i64 = 1_800_000_000;

fn keys() -> Keys {
    Keys::new(Some(NEXTAUTH), Some(GASTOWN))
}

fn forge(header: &Value, claims: &Value, secret: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(header).unwrap()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

fn hs256(claims: Value, secret: &str) -> String {
    forge(&json!({"alg": "HS256", "typ": "JWT"}), &claims, secret)
}

fn user_claims() -> Value {
    json!({
        "kiloUserId": "user-1",
        "orgMemberships": [{"orgId": "org-1", "role": "owner"}, {"orgId": "org-2", "role": "billing_manager"}],
        "iat": NOW - 10,
        "exp": NOW + 3000,
    })
}

fn container_claims() -> Value {
    json!({"townId": "town-1", "userId": "user-1", "scope": "container", "iat": NOW, "exp": NOW + 8 * 3600})
}

fn agent_claims() -> Value {
    json!({"agentId": "a-1", "rigId": "r-1", "townId": "town-1", "userId": "user-1", "iat": NOW, "exp": NOW + 3600})
}

fn sandbox_claims() -> Value {
    json!({"sub": "user-1", "type": "gastown_sandbox", "town_id": "town-1", "organization_id": null, "iat": NOW, "exp": NOW + 24 * 3600})
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

#[test]
fn user_token_verifies_with_typed_claims() {
    let claims = keys()
        .verify_user(&hs256(user_claims(), NEXTAUTH), NOW)
        .unwrap();
    assert_eq!(claims.user_id.as_str(), "user-1");
    assert_eq!(
        claims.role_in(&OrgId::parse("org-1").unwrap()),
        Some(OrgRole::Owner)
    );
    assert_eq!(
        claims.role_in(&OrgId::parse("org-2").unwrap()),
        Some(OrgRole::BillingManager)
    );
    assert_eq!(claims.role_in(&OrgId::parse("org-3").unwrap()), None);
    assert!(!claims.is_admin);
    assert_eq!(claims.expires_at, NOW + 3000);
}

#[test]
fn unknown_org_role_is_kept_but_grants_nothing() {
    let token = hs256(
        with(
            user_claims(),
            "orgMemberships",
            json!([{"orgId": "o", "role": "auditor"}]),
        ),
        NEXTAUTH,
    );
    let claims = keys().verify_user(&token, NOW).unwrap();
    let role = claims.role_in(&OrgId::parse("o").unwrap()).unwrap();
    assert_eq!(role, OrgRole::Other);
    assert!(!role.is_gastown_member());
    assert!(!OrgRole::BillingManager.is_gastown_member());
    assert!(OrgRole::Member.is_gastown_member());
}

#[test]
fn user_token_refusals() {
    let k = keys();
    let cases: Vec<(&str, String, AuthError)> = vec![
        (
            "wrong secret",
            hs256(user_claims(), GASTOWN),
            AuthError::BadSignature,
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                B64.encode(br#"{"alg":"none"}"#),
                B64.encode(serde_json::to_vec(&user_claims()).unwrap())
            ),
            AuthError::BadAlgorithm,
        ),
        (
            "alg none signed",
            forge(&json!({"alg": "none"}), &user_claims(), NEXTAUTH),
            AuthError::BadAlgorithm,
        ),
        (
            "alg RS256",
            forge(&json!({"alg": "RS256"}), &user_claims(), NEXTAUTH),
            AuthError::BadAlgorithm,
        ),
        (
            "alg ES256",
            forge(&json!({"alg": "ES256"}), &user_claims(), NEXTAUTH),
            AuthError::BadAlgorithm,
        ),
        (
            "alg HS512",
            forge(&json!({"alg": "HS512"}), &user_claims(), NEXTAUTH),
            AuthError::BadAlgorithm,
        ),
        (
            "alg unknown",
            forge(&json!({"alg": "XX1"}), &user_claims(), NEXTAUTH),
            AuthError::BadAlgorithm,
        ),
        (
            "no alg",
            forge(&json!({"typ": "JWT"}), &user_claims(), NEXTAUTH),
            AuthError::Malformed,
        ),
        (
            "no exp",
            hs256(without(user_claims(), "exp"), NEXTAUTH),
            AuthError::Malformed,
        ),
        (
            "exp as string",
            hs256(with(user_claims(), "exp", json!("soon")), NEXTAUTH),
            AuthError::Malformed,
        ),
        (
            "expired beyond skew",
            hs256(with(user_claims(), "exp", json!(NOW - 61)), NEXTAUTH),
            AuthError::Expired,
        ),
        (
            "nbf in future beyond skew",
            hs256(with(user_claims(), "nbf", json!(NOW + 61)), NEXTAUTH),
            AuthError::NotYetValid,
        ),
        (
            "iat in future beyond skew",
            hs256(with(user_claims(), "iat", json!(NOW + 61)), NEXTAUTH),
            AuthError::IssuedInFuture,
        ),
        (
            "lifetime over one hour",
            hs256(with(user_claims(), "exp", json!(NOW + 3600 + 61)), NEXTAUTH),
            AuthError::LifetimeTooLong,
        ),
        (
            "sandbox token",
            hs256(sandbox_claims(), NEXTAUTH),
            AuthError::WrongKind,
        ),
        (
            "container claims signed with user secret",
            hs256(container_claims(), NEXTAUTH),
            AuthError::WrongKind,
        ),
        (
            "container token",
            hs256(container_claims(), GASTOWN),
            AuthError::BadSignature,
        ),
        (
            "user claims plus type",
            hs256(
                with(user_claims(), "type", json!("gastown_sandbox")),
                NEXTAUTH,
            ),
            AuthError::WrongKind,
        ),
        (
            "user claims plus scope",
            hs256(with(user_claims(), "scope", json!("container")), NEXTAUTH),
            AuthError::WrongKind,
        ),
        (
            "empty user id",
            hs256(with(user_claims(), "kiloUserId", json!("")), NEXTAUTH),
            AuthError::Malformed,
        ),
        (
            "user id not a string",
            hs256(with(user_claims(), "kiloUserId", json!(7)), NEXTAUTH),
            AuthError::Malformed,
        ),
        (
            "wrong audience",
            hs256(with(user_claims(), "aud", json!("other")), NEXTAUTH),
            AuthError::BadAudience,
        ),
        (
            "wrong audience list",
            hs256(with(user_claims(), "aud", json!(["a", "b"])), NEXTAUTH),
            AuthError::BadAudience,
        ),
        (
            "memberships not a list",
            hs256(
                with(user_claims(), "orgMemberships", json!("org-1")),
                NEXTAUTH,
            ),
            AuthError::Malformed,
        ),
        (
            "crit header",
            forge(
                &json!({"alg": "HS256", "crit": ["exp"]}),
                &user_claims(),
                NEXTAUTH,
            ),
            AuthError::Malformed,
        ),
        (
            "four parts",
            format!("{}.x", hs256(user_claims(), NEXTAUTH)),
            AuthError::Malformed,
        ),
        (
            "truncated signature",
            {
                let t = hs256(user_claims(), NEXTAUTH);
                t[..t.len() - 2].to_owned()
            },
            AuthError::BadSignature,
        ),
        (
            "empty signature",
            {
                let t = hs256(user_claims(), NEXTAUTH);
                t[..=t.rfind('.').unwrap()].to_owned()
            },
            AuthError::BadSignature,
        ),
        (
            "exp absurdly large float",
            hs256(with(user_claims(), "exp", json!(1e300)), NEXTAUTH),
            AuthError::Malformed,
        ),
        ("garbage", "not.a.token".to_owned(), AuthError::Malformed),
        ("two parts", "abc.def".to_owned(), AuthError::Malformed),
        ("huge", "a".repeat(9000), AuthError::Malformed),
    ];
    for (name, token, want) in cases {
        assert_eq!(k.verify_user(&token, NOW), Err(want), "{name}");
    }
}

#[test]
fn skew_is_allowed_at_the_edges() {
    let k = keys();
    let t = hs256(with(user_claims(), "exp", json!(NOW - 60)), NEXTAUTH);
    assert!(k.verify_user(&t, NOW).is_ok(), "exp 60 s ago");
    let t = hs256(with(user_claims(), "nbf", json!(NOW + 60)), NEXTAUTH);
    assert!(k.verify_user(&t, NOW).is_ok(), "nbf 60 s ahead");
    // Lifetime is measured from `iat` (issue 9): an `iat` 60 s ahead keeps `exp - iat` at the
    // cap while `exp` lies 3660 s ahead of our clock.
    let t = hs256(
        with(
            with(user_claims(), "iat", json!(NOW + 60)),
            "exp",
            json!(NOW + 3660),
        ),
        NEXTAUTH,
    );
    assert!(k.verify_user(&t, NOW).is_ok(), "lifetime at the cap");
    let t = hs256(
        with(user_claims(), "aud", json!(["x", "gastown"])),
        NEXTAUTH,
    );
    assert!(
        k.verify_user(&t, NOW).is_ok(),
        "audience list naming gastown"
    );
}

#[test]
fn tampered_payload_fails() {
    let token = hs256(user_claims(), NEXTAUTH);
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged =
        B64.encode(serde_json::to_vec(&with(user_claims(), "kiloUserId", json!("admin"))).unwrap());
    parts[1] = &forged;
    assert_eq!(
        keys().verify_user(&parts.join("."), NOW),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn container_and_agent_are_told_apart() {
    let k = keys();
    let c = k
        .verify_container(&hs256(container_claims(), GASTOWN), NOW)
        .unwrap();
    assert_eq!(
        (c.town_id.as_str(), c.user_id.as_str()),
        ("town-1", "user-1")
    );
    let a = k
        .verify_agent(&hs256(agent_claims(), GASTOWN), NOW)
        .unwrap();
    assert_eq!((a.agent_id.as_str(), a.rig_id.as_str()), ("a-1", "r-1"));

    assert_eq!(
        k.verify_container(&hs256(agent_claims(), GASTOWN), NOW),
        Err(AuthError::WrongKind)
    );
    assert_eq!(
        k.verify_agent(&hs256(container_claims(), GASTOWN), NOW),
        Err(AuthError::WrongKind)
    );
    let other_scope = with(container_claims(), "scope", json!("admin"));
    assert_eq!(
        k.verify_container(&hs256(other_scope, GASTOWN), NOW),
        Err(AuthError::WrongKind)
    );
    assert_eq!(
        k.verify_container(&hs256(user_claims(), GASTOWN), NOW),
        Err(AuthError::WrongKind)
    );
    assert_eq!(
        k.verify_container(&hs256(container_claims(), NEXTAUTH), NOW),
        Err(AuthError::BadSignature)
    );
    let empty_user = with(container_claims(), "userId", json!(""));
    assert_eq!(
        k.verify_container(&hs256(empty_user, GASTOWN), NOW),
        Err(AuthError::Malformed)
    );
    let no_town = without(container_claims(), "townId");
    assert_eq!(
        k.verify_container(&hs256(no_town, GASTOWN), NOW),
        Err(AuthError::WrongKind)
    );
    let too_long = with(container_claims(), "exp", json!(NOW + 8 * 3600 + 61));
    assert_eq!(
        k.verify_container(&hs256(too_long, GASTOWN), NOW),
        Err(AuthError::LifetimeTooLong)
    );
}

#[test]
fn sandbox_token_needs_its_type_and_org_claim() {
    let k = keys();
    let s = k
        .verify_sandbox(&hs256(sandbox_claims(), NEXTAUTH), NOW)
        .unwrap();
    assert_eq!(s.organization_id, None);
    let with_org = with(sandbox_claims(), "organization_id", json!("org-9"));
    assert_eq!(
        k.verify_sandbox(&hs256(with_org, NEXTAUTH), NOW)
            .unwrap()
            .organization_id
            .as_deref(),
        Some("org-9")
    );
    let no_org = without(sandbox_claims(), "organization_id");
    assert_eq!(
        k.verify_sandbox(&hs256(no_org, NEXTAUTH), NOW),
        Err(AuthError::WrongKind)
    );
    let other_type = with(sandbox_claims(), "type", json!("stream_ticket"));
    assert_eq!(
        k.verify_sandbox(&hs256(other_type, NEXTAUTH), NOW),
        Err(AuthError::WrongKind)
    );
    assert_eq!(
        k.verify_sandbox(&hs256(user_claims(), NEXTAUTH), NOW),
        Err(AuthError::WrongKind)
    );
}

#[test]
fn missing_secret_is_not_configured() {
    let k = Keys::new(None, Some(""));
    assert_eq!(
        k.verify_user(&hs256(user_claims(), NEXTAUTH), NOW),
        Err(AuthError::NotConfigured)
    );
    assert_eq!(
        k.verify_container(&hs256(container_claims(), ""), NOW),
        Err(AuthError::NotConfigured)
    );
}

#[test]
fn minted_container_token_round_trips() {
    let k = keys();
    let town = TownId::parse("town-7").unwrap();
    let (token, exp) = sign_container(
        &k,
        &town,
        "owner-1",
        1,
        NOW,
        crate::auth::CONTAINER_TOKEN_TTL_SECS,
    )
    .unwrap();
    assert_eq!(exp, NOW + CONTAINER_TOKEN_TTL_SECS);
    let c = k.verify_container(&token, NOW).unwrap();
    assert_eq!(
        (c.town_id, c.user_id.as_str(), c.expires_at),
        (town.clone(), "owner-1", exp)
    );
    assert_eq!(k.verify_user(&token, NOW), Err(AuthError::BadSignature));
    assert_eq!(k.verify_agent(&token, NOW), Err(AuthError::WrongKind));
    assert_eq!(
        sign_container(
            &k,
            &town,
            " ",
            1,
            NOW,
            crate::auth::CONTAINER_TOKEN_TTL_SECS
        ),
        Err(AuthError::Malformed)
    );
}

#[test]
fn minted_sandbox_token_round_trips_and_is_never_a_user_token() {
    let k = keys();
    let town = TownId::parse("town-7").unwrap();
    let org = OrgId::parse("org-1").unwrap();
    let (token, exp) = sign_sandbox(
        &k,
        "user-1",
        &town,
        Some(&org),
        NOW,
        crate::auth::SANDBOX_TOKEN_TTL_SECS,
    )
    .unwrap();
    let s = k.verify_sandbox(&token, NOW).unwrap();
    assert_eq!(
        (
            s.user_id.as_str(),
            s.organization_id.as_deref(),
            s.expires_at
        ),
        ("user-1", Some("org-1"), exp)
    );
    assert_eq!(k.verify_user(&token, NOW), Err(AuthError::WrongKind));
}

/// One verifier per kind, with claims and secret for a valid token of that kind.
type Verify = fn(&Keys, &str, i64) -> Result<(), AuthError>;

fn kinds() -> Vec<(TokenKind, Value, &'static str, Verify)> {
    vec![
        (TokenKind::User, user_claims(), NEXTAUTH, |k, t, n| {
            k.verify_user(t, n).map(drop)
        }),
        (
            TokenKind::Container,
            container_claims(),
            GASTOWN,
            |k, t, n| k.verify_container(t, n).map(drop),
        ),
        (TokenKind::Agent, agent_claims(), GASTOWN, |k, t, n| {
            k.verify_agent(t, n).map(drop)
        }),
        (TokenKind::Sandbox, sandbox_claims(), NEXTAUTH, |k, t, n| {
            k.verify_sandbox(t, n).map(drop)
        }),
    ]
}

/// Claims with `iat` and `exp` replaced.
fn timed(base: &Value, iat: i64, exp: i64) -> Value {
    with(with(base.clone(), "iat", json!(iat)), "exp", json!(exp))
}

#[test]
fn lifetime_caps_are_the_design_values() {
    assert_eq!(TokenKind::User.max_lifetime_secs(), 3600);
    assert_eq!(TokenKind::Container.max_lifetime_secs(), 8 * 3600);
    assert_eq!(TokenKind::Agent.max_lifetime_secs(), 8 * 3600);
    assert_eq!(TokenKind::Sandbox.max_lifetime_secs(), 24 * 3600);
    const {
        assert!(
            LIFETIME_LEEWAY_SECS <= 10,
            "a few seconds, not a second skew window"
        )
    };
}

#[test]
fn lifetime_is_measured_from_iat() {
    let k = keys();
    // The issue-9 examples: an old token with little time left is still too long-lived.
    let user = timed(&user_claims(), NOW - 10 * 3600, NOW + 50 * 60);
    assert_eq!(
        k.verify_user(&hs256(user, NEXTAUTH), NOW),
        Err(AuthError::LifetimeTooLong),
        "user token issued 10 h ago, expiring in 50 min"
    );
    let container = timed(&container_claims(), NOW - 30 * 3600, NOW + 3600);
    assert_eq!(
        k.verify_container(&hs256(container, GASTOWN), NOW),
        Err(AuthError::LifetimeTooLong),
        "container token issued 30 h ago"
    );
    for (kind, claims, secret, verify) in kinds() {
        let max = kind.max_lifetime_secs();
        // Issued long ago, still unexpired: accepted exactly up to the cap plus the leeway.
        let at_cap = timed(&claims, NOW - max + 600, NOW + 600 + LIFETIME_LEEWAY_SECS);
        assert_eq!(
            verify(&k, &hs256(at_cap, secret), NOW),
            Ok(()),
            "{kind:?} at cap"
        );
        let over = timed(
            &claims,
            NOW - max + 600,
            NOW + 600 + LIFETIME_LEEWAY_SECS + 1,
        );
        assert_eq!(
            verify(&k, &hs256(over, secret), NOW),
            Err(AuthError::LifetimeTooLong),
            "{kind:?} one second over"
        );
        // Issued now, claiming more than the cap.
        let long = timed(&claims, NOW, NOW + max + LIFETIME_LEEWAY_SECS + 1);
        assert_eq!(
            verify(&k, &hs256(long, secret), NOW),
            Err(AuthError::LifetimeTooLong),
            "{kind:?} too long from now"
        );
        // `iat` in the future within the skew, `exp` measured from it: still bounded from now.
        let ahead = timed(&claims, NOW + 60, NOW + 60 + max);
        assert_eq!(
            verify(&k, &hs256(ahead, secret), NOW),
            Ok(()),
            "{kind:?} iat ahead"
        );
        let beyond = timed(&claims, NOW + 61, NOW + 61 + max);
        assert_eq!(
            verify(&k, &hs256(beyond, secret), NOW),
            Err(AuthError::IssuedInFuture),
            "{kind:?} iat beyond the skew"
        );
    }
}

#[test]
fn iat_is_required_on_every_kind() {
    let k = keys();
    for (kind, claims, secret, verify) in kinds() {
        let token = hs256(without(claims.clone(), "iat"), secret);
        assert_eq!(
            verify(&k, &token, NOW),
            Err(AuthError::MissingIssuedAt),
            "{kind:?}"
        );
        for bad in [json!("now"), json!(null), json!(1e300), json!([NOW])] {
            let token = hs256(with(claims.clone(), "iat", bad.clone()), secret);
            assert!(verify(&k, &token, NOW).is_err(), "{kind:?} iat {bad}");
        }
    }
    // A token without `iat` is refused with a 401-class error, not a configuration error.
    assert_ne!(AuthError::MissingIssuedAt, AuthError::NotConfigured);
}

#[test]
fn typ_header_must_name_a_jwt() {
    let k = keys();
    let with_typ = |typ: Value| {
        forge(
            &json!({"alg": "HS256", "typ": typ}),
            &user_claims(),
            NEXTAUTH,
        )
    };
    for ok in ["JWT", "jwt", "Jwt", "application/jwt", "APPLICATION/JWT"] {
        assert!(k.verify_user(&with_typ(json!(ok)), NOW).is_ok(), "{ok}");
    }
    let absent = forge(&json!({"alg": "HS256"}), &user_claims(), NEXTAUTH);
    assert!(k.verify_user(&absent, NOW).is_ok(), "absent typ");
    for bad in [
        "at+jwt",
        "application/at+jwt",
        "logout+jwt",
        "JOSE",
        "JWE",
        "",
        "JWT ",
        "text/jwt",
        "application/",
    ] {
        assert_eq!(
            k.verify_user(&with_typ(json!(bad)), NOW),
            Err(AuthError::BadType),
            "{bad:?}"
        );
    }
    assert_eq!(
        k.verify_user(&with_typ(json!(5)), NOW),
        Err(AuthError::Malformed),
        "typ not a string"
    );
    // Every kind applies it, and before the signature is looked at.
    for (kind, claims, secret, verify) in kinds() {
        let token = forge(&json!({"alg": "HS256", "typ": "at+jwt"}), &claims, secret);
        assert_eq!(verify(&k, &token, NOW), Err(AuthError::BadType), "{kind:?}");
    }
}

#[test]
fn minted_tokens_carry_iat_and_a_jwt_typ() {
    let k = keys();
    let town = TownId::parse("town-7").unwrap();
    let (container, _) = sign_container(
        &k,
        &town,
        "owner-1",
        1,
        NOW,
        crate::auth::CONTAINER_TOKEN_TTL_SECS,
    )
    .unwrap();
    let (sandbox, _) = sign_sandbox(
        &k,
        "user-1",
        &town,
        None,
        NOW,
        crate::auth::SANDBOX_TOKEN_TTL_SECS,
    )
    .unwrap();
    for token in [container, sandbox] {
        let mut parts = token.split('.');
        let header: Value =
            serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
        let claims: Value =
            serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["typ"], "JWT");
        assert_eq!(claims["iat"], NOW);
    }
}

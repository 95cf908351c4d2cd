//! Platform integrations (GitHub App installations, GitLab OAuth connections): their records,
//! the signed `state` of the connect flows, the GitHub App key and JWT, webhook signatures, and
//! which stored credential serves a repository. Pure: the worker does the I/O.

use crate::ids::{OrgId, UserId};
use crate::model::{Owner, OwnerType};
use crate::town_config::GitAuth;
pub use crate::vocab::{BotReason, GitIdentity};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// A signed `state` lives this long (the connect flows take one browser round trip).
pub const STATE_TTL_SECS: i64 = 10 * 60;
/// Integration tokens (GitHub installation tokens, GitLab access tokens) are used until this
/// long before their expiry, then replaced.
pub const TOKEN_REFRESH_MARGIN_SECS: i64 = 5 * 60;
/// How long a repository list is served from the cache.
pub const REPO_CACHE_TTL_SECS: i64 = 10 * 60;
/// The one word a connect flow's redirect back to the dashboard carries (`?result=`): never
/// the provider's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DashboardCode {
    Success,
    /// The user declined at the provider.
    AccessDenied,
    /// The `state` was missing, forged, expired, of another flow, or used before.
    InvalidState,
    /// The redirect lacked what the flow needs (an installation id, a code).
    InvalidRequest,
    /// The provider refused the code, or could not be asked.
    ExchangeFailed,
    /// The installation is already connected to another owner.
    AlreadyConnected,
    /// An install came back without the user's authorization code, so nothing proves the user
    /// may access the installation it names (the App must request user authorization during
    /// installation).
    AuthorizationRequired,
    /// The user who came back cannot access the installation named (or, for an org, it is not
    /// installed on an organization account).
    InstallationForbidden,
}

impl DashboardCode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DashboardCode::Success => "success",
            DashboardCode::AccessDenied => "access_denied",
            DashboardCode::InvalidState => "invalid_state",
            DashboardCode::InvalidRequest => "invalid_request",
            DashboardCode::ExchangeFailed => "exchange_failed",
            DashboardCode::AlreadyConnected => "already_connected",
            DashboardCode::AuthorizationRequired => "authorization_required",
            DashboardCode::InstallationForbidden => "installation_forbidden",
        }
    }
}

/// How long a webhook delivery's id is remembered: GitHub lets an App redeliver deliveries of
/// the past three days, so a week covers every redelivery and every replay of a captured one.
pub const WEBHOOK_DELIVERY_TTL_SECS: i64 = 7 * 24 * 3600;

/// The single-use key of a webhook delivery (`X-GitHub-Delivery`, `X-Gitlab-Event-UUID`): an
/// id of at most 100 characters of letters, digits and `-`, or `None` for anything else.
#[must_use]
pub fn delivery_key(platform: Platform, delivery_id: &str) -> Option<String> {
    let ok = !delivery_id.is_empty()
        && delivery_id.len() <= 100
        && delivery_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| format!("webhook:{}:{delivery_id}", platform.as_str()))
}
/// A GitHub App JWT: `iat` this far in the past (clock drift), `exp` this far ahead (≤ 10 min).
pub const APP_JWT_BACKDATE_SECS: i64 = 60;
pub const APP_JWT_TTL_SECS: i64 = 9 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Github,
    Gitlab,
}

impl Platform {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Github => "github",
            Platform::Gitlab => "gitlab",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationStatus {
    Active,
    Suspended,
    Revoked,
}

/// An integration as the API shows it: never a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integration {
    pub id: String,
    pub platform: Platform,
    pub owner_type: OwnerType,
    pub owner_id: String,
    pub account_login: String,
    pub account_type: String,
    pub status: IntegrationStatus,
    pub last_error_code: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Integration {
    /// Whether `owner` (a rig's or a caller's owner) owns this integration.
    #[must_use]
    pub fn belongs_to(&self, owner: &Owner) -> bool {
        self.owner_type == owner.kind() && self.owner_id == owner.id()
    }
}

/// GitHub's no-reply address of a user: commits authored with it are attributed to them.
#[must_use]
pub fn github_noreply_email(github_user_id: u64, login: &str) -> String {
    format!("{github_user_id}+{login}@users.noreply.github.com")
}

/// What a rig shows of its integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrationSummary {
    pub platform: Platform,
    pub account_login: String,
    pub status: IntegrationStatus,
    pub last_error_code: Option<String>,
}

impl From<&Integration> for IntegrationSummary {
    fn from(i: &Integration) -> Self {
        Self {
            platform: i.platform,
            account_login: i.account_login.clone(),
            status: i.status,
            last_error_code: i.last_error_code.clone(),
        }
    }
}

/// One repository of the picker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    pub full_name: String,
    pub git_url: String,
    pub default_branch: String,
    pub private: bool,
}

/// Which flow a `state` was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    GithubInstall,
    GitlabConnect,
    /// The user-to-server authorization of the GitHub App (commits as the user).
    GithubUserConnect,
}

/// What a `state` carries: who started the flow, for which owner, until when, and a nonce that
/// makes it single use (the worker records each nonce it accepts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateClaims {
    pub kind: StateKind,
    pub nonce: String,
    pub user_id: UserId,
    /// `None` for the user's own integration.
    pub org_id: Option<OrgId>,
    pub exp: i64,
}

impl StateClaims {
    /// The owner the integration will belong to.
    #[must_use]
    pub fn owner(&self) -> Owner {
        match &self.org_id {
            Some(org) => Owner::Org(org.clone()),
            None => Owner::User(self.user_id.clone()),
        }
    }
}

/// Why a `state` was refused. The dashboard only ever sees `invalid_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    Malformed,
    BadSignature,
    Expired,
    WrongKind,
}

/// The key that signs `state`, derived from a deployment secret with its own context, so it is
/// no other use's key.
#[must_use]
pub fn state_key(secret: &[u8]) -> Vec<u8> {
    Sha256::new()
        .chain_update(b"gastown-connect-state-key-v1:")
        .chain_update(secret)
        .finalize()
        .to_vec()
}

fn state_mac(key: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"gastown-oauth-state-v1:");
    mac
}

/// `base64url(claims JSON) "." base64url(HMAC-SHA256(key, context ‖ that base64))`.
#[must_use]
pub fn sign_state(key: &[u8], claims: &StateClaims) -> String {
    let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let mut mac = state_mac(key);
    mac.update(body.as_bytes());
    format!("{body}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// Checks signature (in constant time), expiry and kind. Single use is the caller's: it must
/// record the nonce and refuse one it has seen.
///
/// # Errors
/// As [`StateError`].
pub fn verify_state(
    key: &[u8],
    state: &str,
    kind: StateKind,
    now: i64,
) -> Result<StateClaims, StateError> {
    let (body, sig) = state.split_once('.').ok_or(StateError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| StateError::Malformed)?;
    let mut mac = state_mac(key);
    mac.update(body.as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| StateError::BadSignature)?;
    let bytes = B64.decode(body).map_err(|_| StateError::Malformed)?;
    let claims: StateClaims = serde_json::from_slice(&bytes).map_err(|_| StateError::Malformed)?;
    if claims.kind != kind {
        return Err(StateError::WrongKind);
    }
    if now >= claims.exp || claims.exp - now > STATE_TTL_SECS {
        return Err(StateError::Expired);
    }
    Ok(claims)
}

/// The PKCE verifier of a GitLab connect flow, derived from its state's nonce so nothing has to
/// be stored between the redirect and the callback.
#[must_use]
pub fn pkce_verifier(key: &[u8], nonce: &str) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"gastown-pkce-v1:");
    mac.update(nonce.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// `S256` challenge of a PKCE verifier.
#[must_use]
pub fn pkce_challenge(verifier: &str) -> String {
    B64.encode(Sha256::digest(verifier.as_bytes()))
}

/// GitHub's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`, compared in
/// constant time. An empty secret verifies nothing.
#[must_use]
pub fn github_signature_ok(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    if secret.is_empty() {
        return false;
    }
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let presented = hex.to_ascii_lowercase();
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// Whether a GitLab hook's `X-Gitlab-Token` is the configured secret (compared in constant
/// time; an empty or unset secret admits nothing).
#[must_use]
pub fn gitlab_token_ok(secret: &[u8], presented: Option<&str>) -> bool {
    let Some(presented) = presented else {
        return false;
    };
    !secret.is_empty()
        && secret.len() == presented.len()
        && bool::from(secret.ct_eq(presented.as_bytes()))
}

/// Why the App's private key could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    NotPem,
    UnsupportedKind,
}

/// The App's private key as PKCS#8 DER, the form WebCrypto imports. GitHub issues App keys as
/// PKCS#1 (`BEGIN RSA PRIVATE KEY`); those are wrapped in the PKCS#8 structure. A PEM pasted
/// into one line with `\n` escapes (as secrets often are) is read too.
///
/// # Errors
/// `NotPem` for text that is not PEM; `UnsupportedKind` for a PEM of another kind.
pub fn app_key_pkcs8(pem: &str) -> Result<Vec<u8>, KeyError> {
    let pem = pem.replace("\\n", "\n");
    let (label, der) = pem_body(&pem).ok_or(KeyError::NotPem)?;
    match label.as_str() {
        "PRIVATE KEY" => Ok(der),
        "RSA PRIVATE KEY" => Ok(pkcs1_to_pkcs8(&der)),
        _ => Err(KeyError::UnsupportedKind),
    }
}

fn pem_body(pem: &str) -> Option<(String, Vec<u8>)> {
    let start = pem.find("-----BEGIN ")?;
    let rest = &pem[start + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_owned();
    let body = &rest[label_end + 5..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label, der))
}

/// DER length octets.
fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        return vec![u8::try_from(n).unwrap_or(0)];
    }
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | u8::try_from(bytes.len()).unwrap_or(0)];
    out.extend(bytes);
    out
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// `PrivateKeyInfo { version 0, AlgorithmIdentifier { rsaEncryption, NULL }, OCTET STRING pkcs1 }`.
#[must_use]
pub fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    const RSA_ENCRYPTION: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let mut algorithm = der(0x06, &RSA_ENCRYPTION);
    algorithm.extend([0x05, 0x00]);
    let mut info = der(0x02, &[0x00]);
    info.extend(der(0x30, &algorithm));
    info.extend(der(0x04, pkcs1));
    der(0x30, &info)
}

/// The part of a GitHub App JWT that is signed: `base64url(header) "." base64url(claims)`, with
/// `iss` the App id, `iat` backdated a minute for clock drift and `exp` within GitHub's 10 min.
#[must_use]
pub fn app_jwt_signing_input(app_id: &str, now: i64) -> String {
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "iat": now - APP_JWT_BACKDATE_SECS,
        "exp": now + APP_JWT_TTL_SECS,
        "iss": app_id,
    });
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// The signed JWT from its signing input and RS256 signature.
#[must_use]
pub fn app_jwt(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", B64.encode(signature))
}

/// The lowercase host of an `https://` (or `ssh://`, or `git@host:path`) git URL.
#[must_use]
pub fn git_host(git_url: &str) -> Option<String> {
    let rest = if let Some(r) = git_url.split_once("://").map(|(_, r)| r) {
        r
    } else {
        // scp-like `git@host:owner/repo`
        let (user_host, _) = git_url.split_once(':')?;
        return user_host
            .rsplit('@')
            .next()
            .map(str::to_ascii_lowercase)
            .filter(|h| !h.is_empty());
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = host_port.split(':').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// `owner/name` of a repository URL (without `.git`).
#[must_use]
pub fn repo_full_name(git_url: &str) -> Option<String> {
    let path = if let Some((_, rest)) = git_url.split_once("://") {
        rest.split_once('/')?.1
    } else {
        git_url.split_once(':')?.1
    };
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    (path.contains('/') && !path.starts_with('/')).then(|| path.to_owned())
}

/// Whether a `git_url` given by hand names the provider's repository `clone_url`: the same host
/// and the same `owner/name` (case-insensitively, as GitHub and GitLab compare them). A rig that
/// names an integration takes its URL from the provider, so a token minted for the integration
/// can only ever be sent to the integration's own host.
#[must_use]
pub fn same_repository(given: &str, clone_url: &str) -> bool {
    match (
        git_host(given),
        git_host(clone_url),
        repo_full_name(given),
        repo_full_name(clone_url),
    ) {
        (Some(h1), Some(h2), Some(r1), Some(r2)) => h1 == h2 && r1.eq_ignore_ascii_case(&r2),
        _ => false,
    }
}

/// The town's manual token for a repository: the GitHub token for `github.com`, the GitLab
/// token for the GitLab instance's host (`gitlab.com` unless `gitlab_instance_url` names
/// another). Never a token for a host it was not given for.
#[must_use]
pub fn town_token_for<'a>(git_auth: &'a GitAuth, git_url: &str) -> Option<&'a str> {
    let host = git_host(git_url)?;
    if host == "github.com" {
        return git_auth.github_token.as_deref();
    }
    let gitlab_host = git_auth
        .gitlab_instance_url
        .as_deref()
        .and_then(git_host)
        .unwrap_or_else(|| "gitlab.com".to_owned());
    if host == gitlab_host {
        return git_auth.gitlab_token.as_deref();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"state-key";

    fn claims(exp: i64) -> StateClaims {
        StateClaims {
            kind: StateKind::GithubInstall,
            nonce: "n1".into(),
            user_id: UserId::parse("u1").unwrap(),
            org_id: Some(OrgId::parse("o1").unwrap()),
            exp,
        }
    }

    #[test]
    fn state_round_trips_and_refuses_forgery_expiry_and_other_kinds() {
        let now = 1_000_000;
        let state = sign_state(KEY, &claims(now + STATE_TTL_SECS));
        let back = verify_state(KEY, &state, StateKind::GithubInstall, now).unwrap();
        assert_eq!(back, claims(now + STATE_TTL_SECS));
        assert_eq!(back.owner(), Owner::Org(OrgId::parse("o1").unwrap()));
        assert_eq!(
            verify_state(b"other", &state, StateKind::GithubInstall, now),
            Err(StateError::BadSignature)
        );
        assert_eq!(
            verify_state(KEY, &state, StateKind::GitlabConnect, now),
            Err(StateError::WrongKind)
        );
        assert_eq!(
            verify_state(KEY, &state, StateKind::GithubInstall, now + STATE_TTL_SECS),
            Err(StateError::Expired)
        );
        let too_long = sign_state(KEY, &claims(now + STATE_TTL_SECS + 1));
        assert_eq!(
            verify_state(KEY, &too_long, StateKind::GithubInstall, now),
            Err(StateError::Expired),
            "a state may not outlive its 10 minutes"
        );
        // A body swapped under a valid signature.
        let other = sign_state(
            KEY,
            &StateClaims {
                nonce: "n2".into(),
                ..claims(now + 60)
            },
        );
        let forged = format!(
            "{}.{}",
            other.split('.').next().unwrap(),
            state.split('.').nth(1).unwrap()
        );
        assert_eq!(
            verify_state(KEY, &forged, StateKind::GithubInstall, now),
            Err(StateError::BadSignature)
        );
        for junk in ["", ".", "a.b", "no-dot"] {
            assert!(
                verify_state(KEY, junk, StateKind::GithubInstall, now).is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn identities_are_pinned() {
        assert_eq!(
            github_noreply_email(583231, "octocat"),
            "583231+octocat@users.noreply.github.com"
        );
        assert_eq!(
            serde_json::to_string(&GitIdentity::User {
                name: "octocat".into(),
                email: "e".into()
            })
            .unwrap(),
            r#"{"kind":"user","name":"octocat","email":"e"}"#
        );
        assert_eq!(
            serde_json::to_string(&GitIdentity::Bot {
                reason: BotReason::NoRepoAccess
            })
            .unwrap(),
            r#"{"kind":"bot","reason":"no_repo_access"}"#
        );
    }

    #[test]
    fn pkce_is_rfc7636_s256() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_ne!(pkce_verifier(KEY, "a"), pkce_verifier(KEY, "b"));
        assert_eq!(pkce_verifier(KEY, "a").len(), 43);
    }

    #[test]
    fn webhook_signatures() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github_signature_ok(secret, b"Hello, World!", Some(good)));
        assert!(!github_signature_ok(secret, b"Hello, World?", Some(good)));
        assert!(!github_signature_ok(b"other", b"Hello, World!", Some(good)));
        assert!(!github_signature_ok(secret, b"Hello, World!", None));
        assert!(!github_signature_ok(
            secret,
            b"Hello, World!",
            Some("sha1=abc")
        ));
        assert!(!github_signature_ok(b"", b"Hello, World!", Some(good)));
    }

    #[test]
    fn pkcs1_is_wrapped_as_pkcs8() {
        // A short stand-in body: the wrapper does not look inside.
        let wrapped = pkcs1_to_pkcs8(&[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(
            wrapped,
            [
                0x30, 0x19, 0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7,
                0x0d, 0x01, 0x01, 0x01, 0x05, 0x00, 0x04, 0x05, 0x30, 0x03, 0x02, 0x01, 0x00
            ]
        );
        assert_eq!(der_len(0x7f), [0x7f]);
        assert_eq!(der_len(0x80), [0x81, 0x80]);
        assert_eq!(der_len(1190), [0x82, 0x04, 0xa6]);
        let pem = "-----BEGIN RSA PRIVATE KEY-----\\nMAMCAQA=\\n-----END RSA PRIVATE KEY-----\\n";
        assert_eq!(
            app_key_pkcs8(pem).unwrap(),
            wrapped,
            "one-line PEM with \\n escapes"
        );
        assert_eq!(app_key_pkcs8("nope"), Err(KeyError::NotPem));
        assert_eq!(
            app_key_pkcs8("-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----"),
            Err(KeyError::UnsupportedKind)
        );
    }

    /// A throwaway 512-bit test key, and the same key converted by `openssl pkcs8 -topk8`.
    #[test]
    fn the_wrapping_matches_openssl() {
        let pkcs1 = include_str!("../tests/fixtures/rsa512-pkcs1.pem");
        let pkcs8 = include_str!("../tests/fixtures/rsa512-pkcs8.pem");
        let ours = app_key_pkcs8(pkcs1).unwrap();
        assert_eq!(ours, app_key_pkcs8(pkcs8).unwrap());
        assert_eq!(ours, pem_body(pkcs8).unwrap().1);
    }

    #[test]
    fn app_jwt_claims() {
        let input = app_jwt_signing_input("12345", 1_000_000);
        let (h, c) = input.split_once('.').unwrap();
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(h).unwrap()).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&B64.decode(c).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        assert_eq!(claims["iss"], "12345");
        assert_eq!(claims["iat"], 1_000_000 - 60);
        let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert!(ttl <= 600, "GitHub refuses App JWTs over 10 minutes");
        assert!(app_jwt(&input, &[1, 2]).ends_with(".AQI"));
    }

    #[test]
    fn delivery_keys() {
        assert_eq!(
            delivery_key(Platform::Github, "72d3162e-cc78-11e3-81ab-4c9367dc0958").as_deref(),
            Some("webhook:github:72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(
            delivery_key(Platform::Gitlab, "abc").as_deref(),
            Some("webhook:gitlab:abc")
        );
        for bad in ["", "a:b", "a b", &"x".repeat(101)] {
            assert_eq!(delivery_key(Platform::Github, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hosts_names_and_town_tokens() {
        assert_eq!(
            git_host("https://github.com/acme/app.git").as_deref(),
            Some("github.com")
        );
        assert_eq!(
            git_host("https://x:y@GitLab.example.com:8443/a/b").as_deref(),
            Some("gitlab.example.com")
        );
        assert_eq!(
            git_host("git@github.com:acme/app.git").as_deref(),
            Some("github.com")
        );
        assert_eq!(
            git_host("ssh://git@github.com/acme/app.git").as_deref(),
            Some("github.com")
        );
        assert_eq!(
            repo_full_name("https://github.com/acme/app.git").as_deref(),
            Some("acme/app")
        );
        assert_eq!(
            repo_full_name("git@gitlab.com:g/sub/p.git").as_deref(),
            Some("g/sub/p")
        );
        assert_eq!(repo_full_name("https://github.com/acme").as_deref(), None);
        let clone = "https://github.com/Acme/App.git";
        assert!(same_repository("https://github.com/acme/app", clone));
        assert!(same_repository("git@github.com:acme/app.git", clone));
        assert!(
            !same_repository("https://attacker.example/Acme/App.git", clone),
            "another host"
        );
        assert!(
            !same_repository("https://github.com@attacker.example/Acme/App.git", clone),
            "userinfo that looks like the host"
        );
        assert!(!same_repository("https://github.com/acme/other.git", clone));
        assert!(!same_repository("not a url", clone));
        let auth = GitAuth {
            github_token: Some("gh".into()),
            gitlab_token: Some("gl".into()),
            gitlab_instance_url: Some("https://gitlab.example.com".into()),
            platform_integration_id: None,
        };
        assert_eq!(town_token_for(&auth, "https://github.com/a/b"), Some("gh"));
        assert_eq!(
            town_token_for(&auth, "https://gitlab.example.com/a/b"),
            Some("gl")
        );
        assert_eq!(
            town_token_for(&auth, "https://gitlab.com/a/b"),
            None,
            "not the instance it was given for"
        );
        assert_eq!(town_token_for(&auth, "https://evil.example/a/b"), None);
        let default_gitlab = GitAuth {
            gitlab_instance_url: None,
            ..auth.clone()
        };
        assert_eq!(
            town_token_for(&default_gitlab, "https://gitlab.com/a/b"),
            Some("gl")
        );
        assert_eq!(
            town_token_for(&GitAuth::default(), "https://github.com/a/b"),
            None
        );
    }

    #[test]
    fn gitlab_hook_tokens_are_compared_whole() {
        assert!(gitlab_token_ok(b"s3cret", Some("s3cret")));
        assert!(!gitlab_token_ok(b"s3cret", Some("s3cre")));
        assert!(!gitlab_token_ok(b"s3cret", Some("s3cret ")));
        assert!(!gitlab_token_ok(b"s3cret", None));
        assert!(!gitlab_token_ok(b"", Some("")), "no secret admits nothing");
    }
}

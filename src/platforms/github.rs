//! GitHub as a GitHub App: the App JWT, installations, installation tokens and repositories.
//!
//! The App JWT is RS256. It is signed with the runtime's WebCrypto (`crypto.subtle.sign`,
//! RSASSA-PKCS1-v1_5 / SHA-256), not a Rust RSA crate: the `rsa` crate carries a timing
//! side-channel advisory (RUSTSEC-2023-0071, no fixed release) and would add its bignum code to
//! the wasm bundle, while the runtime's implementation is constant-time native code and costs
//! the bundle nothing. The key is imported once per isolate and kept as a non-extractable
//! `CryptoKey`.

use super::http::{self, Answer, Body};
use super::PlatformError;
use crate::config::{self, Platforms};
use gastown_core::integrations::{self, Repository};
use serde::Deserialize;
use std::cell::RefCell;
use worker::js_sys::{self, Array, Object, Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::Method;

thread_local! {
    /// The imported App key (a `CryptoKey`), per isolate.
    static APP_KEY: RefCell<Option<JsValue>> = const { RefCell::new(None) };
}

fn js_err(_: JsValue) -> PlatformError {
    PlatformError::Api(gastown_core::ApiError::internal("WebCrypto call failed"))
}

fn algorithm() -> Result<Object, PlatformError> {
    let algo = Object::new();
    Reflect::set(&algo, &"name".into(), &"RSASSA-PKCS1-v1_5".into()).map_err(js_err)?;
    Reflect::set(&algo, &"hash".into(), &"SHA-256".into()).map_err(js_err)?;
    Ok(algo)
}

fn subtle() -> Result<JsValue, PlatformError> {
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into()).map_err(js_err)?;
    Reflect::get(&crypto, &"subtle".into()).map_err(js_err)
}

async fn call(method: &str, args: &Array) -> Result<JsValue, PlatformError> {
    let subtle = subtle()?;
    let f: js_sys::Function = Reflect::get(&subtle, &method.into())
        .map_err(js_err)?
        .dyn_into()
        .map_err(js_err)?;
    let promise: js_sys::Promise = f
        .apply(&subtle, args)
        .map_err(js_err)?
        .dyn_into()
        .map_err(js_err)?;
    JsFuture::from(promise).await.map_err(js_err)
}

async fn app_key(settings: &Platforms) -> Result<JsValue, PlatformError> {
    if let Some(key) = APP_KEY.with(|k| k.borrow().clone()) {
        return Ok(key);
    }
    let pem = settings
        .github_app_private_key
        .as_deref()
        .ok_or(PlatformError::NotConfigured("GITHUB_APP_PRIVATE_KEY"))?;
    let der = integrations::app_key_pkcs8(pem)
        .map_err(|_| PlatformError::NotConfigured("a readable GITHUB_APP_PRIVATE_KEY"))?;
    let usages = Array::of1(&"sign".into());
    let args = Array::new();
    args.push(&"pkcs8".into());
    args.push(&Uint8Array::from(der.as_slice()).buffer());
    args.push(&algorithm()?.into());
    args.push(&JsValue::FALSE);
    args.push(&usages);
    let key = call("importKey", &args)
        .await
        .map_err(|_| PlatformError::NotConfigured("a readable GITHUB_APP_PRIVATE_KEY"))?;
    APP_KEY.with(|k| *k.borrow_mut() = Some(key.clone()));
    Ok(key)
}

/// A fresh App JWT (`iss` = App id, 9 minutes).
async fn app_jwt(settings: &Platforms) -> Result<String, PlatformError> {
    let app_id = settings
        .github_app_id
        .as_deref()
        .ok_or(PlatformError::NotConfigured("GITHUB_APP_ID"))?;
    let input = integrations::app_jwt_signing_input(app_id, config::now_s());
    let key = app_key(settings).await?;
    let args = Array::new();
    args.push(&algorithm()?.into());
    args.push(&key);
    args.push(&Uint8Array::from(input.as_bytes()).buffer());
    let signature = call("sign", &args).await?;
    let bytes = Uint8Array::new(&signature).to_vec();
    Ok(integrations::app_jwt(&input, &bytes))
}

async fn as_app(
    settings: &Platforms,
    method: Method,
    path: &str,
    body: Body,
    what: &'static str,
) -> Result<Answer, PlatformError> {
    let jwt = app_jwt(settings).await?;
    let auth = format!("Bearer {jwt}");
    http::send(
        method,
        &format!("{}{path}", settings.github_api_url),
        &[
            ("authorization", &auth),
            ("x-github-api-version", "2022-11-28"),
        ],
        body,
        what,
    )
    .await
}

#[derive(Deserialize)]
pub struct Account {
    pub login: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Deserialize)]
pub struct Installation {
    pub id: u64,
    pub account: Account,
    pub suspended_at: Option<String>,
}

/// `GET /app/installations/:id`; `None` when GitHub does not know it.
///
/// # Errors
/// As [`PlatformError`].
pub async fn installation(
    settings: &Platforms,
    id: &str,
) -> Result<Option<Installation>, PlatformError> {
    let answer = as_app(
        settings,
        Method::Get,
        &format!("/app/installations/{}", http::encode(id)),
        Body::None,
        "reading the installation",
    )
    .await?;
    if answer.status == 404 {
        return Ok(None);
    }
    answer.parsed(&[200], "reading the installation").map(Some)
}

#[derive(Deserialize)]
struct UserInstallations {
    installations: Vec<Installation>,
}

/// The App's installations that the user of a user-to-server `token` may access
/// (`GET /user/installations`, 100 a page, at most 10 pages): the proof that a user who comes
/// back from an install may connect the installation the redirect names, since GitHub
/// documents that `installation_id` on that redirect can be spoofed.
///
/// # Errors
/// As [`PlatformError`].
pub async fn user_installations(
    settings: &Platforms,
    token: &str,
) -> Result<Vec<Installation>, PlatformError> {
    let auth = format!("Bearer {token}");
    let mut out = Vec::new();
    for page in 1..=10 {
        let parsed: UserInstallations = http::send(
            Method::Get,
            &format!(
                "{}/user/installations?per_page=100&page={page}",
                settings.github_api_url
            ),
            &[
                ("authorization", &auth),
                ("x-github-api-version", "2022-11-28"),
            ],
            Body::None,
            "listing the user's installations",
        )
        .await?
        .parsed(&[200], "listing the user's installations")?;
        let n = parsed.installations.len();
        out.extend(parsed.installations);
        if n < 100 {
            break;
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    expires_at: String,
}

/// An installation token (1 h), scoped to `repo` (the repository's name) when given.
///
/// # Errors
/// `Provider` with GitHub's status: 403 for a suspended installation, 404 for one removed.
pub async fn installation_token(
    settings: &Platforms,
    installation_id: &str,
    repo: Option<&str>,
) -> Result<(String, i64), PlatformError> {
    let body = match repo {
        Some(name) => Body::Json(serde_json::json!({ "repositories": [name] }).to_string()),
        None => Body::Json("{}".to_owned()),
    };
    let answer = as_app(
        settings,
        Method::Post,
        &format!(
            "/app/installations/{}/access_tokens",
            http::encode(installation_id)
        ),
        body,
        "minting an installation token",
    )
    .await?;
    let token: AccessToken = answer.parsed(&[201], "minting an installation token")?;
    let expires_at = parse_rfc3339(&token.expires_at).unwrap_or(config::now_s() + 3000);
    Ok((token.token, expires_at))
}

#[derive(Deserialize)]
struct RepoPage {
    repositories: Vec<GithubRepo>,
}

#[derive(Deserialize)]
struct GithubRepo {
    full_name: String,
    clone_url: String,
    default_branch: Option<String>,
    private: bool,
}

/// Every repository the installation may access (`GET /installation/repositories`, 100 a page,
/// at most 50 pages).
///
/// # Errors
/// As [`installation_token`].
pub async fn repositories(
    settings: &Platforms,
    installation_id: &str,
) -> Result<Vec<Repository>, PlatformError> {
    let (token, _) = installation_token(settings, installation_id, None).await?;
    let auth = format!("Bearer {token}");
    let mut out = Vec::new();
    for page in 1..=50 {
        let answer = http::send(
            Method::Get,
            &format!(
                "{}/installation/repositories?per_page=100&page={page}",
                settings.github_api_url
            ),
            &[
                ("authorization", &auth),
                ("x-github-api-version", "2022-11-28"),
            ],
            Body::None,
            "listing repositories",
        )
        .await?;
        let parsed: RepoPage = answer.parsed(&[200], "listing repositories")?;
        let n = parsed.repositories.len();
        out.extend(parsed.repositories.into_iter().map(|r| Repository {
            full_name: r.full_name,
            git_url: r.clone_url,
            default_branch: r.default_branch.unwrap_or_else(|| "main".to_owned()),
            private: r.private,
        }));
        if n < 100 {
            break;
        }
    }
    Ok(out)
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-12-02T08:00:00Z`).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let ms = js_sys::Date::parse(s);
    (!ms.is_nan()).then(|| (ms / 1000.0) as i64)
}

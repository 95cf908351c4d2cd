//! One outbound HTTP call to a provider.

use super::PlatformError;
use worker::wasm_bindgen::JsValue;
use worker::{Fetch, Headers, Method, Request, RequestInit};

/// A provider's answer: any status, its body as text.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body as `T` when the status is one of `ok`.
    ///
    /// # Errors
    /// `Provider` with the status, or with status 0 for a body that does not parse.
    pub fn parsed<T: serde::de::DeserializeOwned>(
        &self,
        ok: &[u16],
        what: &'static str,
    ) -> Result<T, PlatformError> {
        if !ok.contains(&self.status) {
            return Err(PlatformError::Provider {
                status: self.status,
                what,
            });
        }
        serde_json::from_str(&self.body).map_err(|_| PlatformError::Provider { status: 0, what })
    }
}

/// What a request's body is.
pub enum Body {
    None,
    Json(String),
    Form(String),
}

/// Sends one request. Headers are `(name, value)`; a token goes in `authorization` only.
///
/// # Errors
/// `Provider { status: 0 }` when the provider cannot be reached.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
    what: &'static str,
) -> Result<Answer, PlatformError> {
    let unreachable = |_| PlatformError::Provider { status: 0, what };
    let h = Headers::new();
    h.set("accept", "application/json").map_err(unreachable)?;
    // GitHub refuses requests without a user agent.
    h.set("user-agent", "gastown-cloud").map_err(unreachable)?;
    for (name, value) in headers {
        h.set(name, value).map_err(unreachable)?;
    }
    let mut init = RequestInit::new();
    init.with_method(method);
    match body {
        Body::None => {}
        Body::Json(text) => {
            h.set("content-type", "application/json")
                .map_err(unreachable)?;
            init.with_body(Some(JsValue::from_str(&text)));
        }
        Body::Form(text) => {
            h.set("content-type", "application/x-www-form-urlencoded")
                .map_err(unreachable)?;
            init.with_body(Some(JsValue::from_str(&text)));
        }
    }
    init.with_headers(h);
    let req = Request::new_with_init(url, &init).map_err(unreachable)?;
    let mut resp = Fetch::Request(req).send().await.map_err(unreachable)?;
    Ok(Answer {
        status: resp.status_code(),
        body: resp.text().await.unwrap_or_default(),
    })
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

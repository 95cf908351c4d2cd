//! HTTP plumbing shared by the router and the Durable Objects: JSON responses, the error body,
//! reading a capped JSON body, the query string (list paging, named parameters).

use gastown_core::body::MAX_BODY_BYTES;
use gastown_core::error::ApiError;
use gastown_core::ids::percent_decode;
use gastown_core::page::{query_pairs, Page};
use gastown_core::protocol::Json;
use serde::Serialize;
use worker::{console_error, Request, Response};

/// A JSON response that no cache keeps.
pub fn json<T: Serialize>(status: u16, body: &T) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => json_text(status, text),
        Err(e) => error_response(&ApiError::internal(format!("serialising response: {e}"))),
    }
}

/// A Durable Object's JSON reply, passed through without decoding it.
pub fn json_reply<T>(status: u16, reply: Json<T>) -> Response {
    json_text(status, reply.into_string())
}

/// A response whose body is already JSON text, that no cache keeps.
pub fn json_text(status: u16, text: String) -> Response {
    let mut resp = match Response::ok(text) {
        Ok(resp) => resp.with_status(status),
        Err(e) => return error_response(&ApiError::internal(e)),
    };
    let headers = resp.headers_mut();
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set("cache-control", "no-store");
    resp
}

/// A response whose body is already JSON text.
///
/// # Errors
/// Internal, if the runtime cannot build the response.
pub fn raw_json(body: &str) -> Result<Response, ApiError> {
    let mut resp = Response::ok(body).map_err(ApiError::internal)?;
    let _ = resp.headers_mut().set("content-type", "application/json");
    Ok(resp)
}

/// The JSON error body. Internal details go to the log, never to the client.
pub fn error_response(err: &ApiError) -> Response {
    if let ApiError::Internal(detail) = err {
        console_error!("internal error: {detail}");
    }
    let body = serde_json::to_string(&err.body()).unwrap_or_else(|_| {
        r#"{"error":{"code":"internal_error","message":"internal error"}}"#.to_owned()
    });
    let mut resp = Response::ok(body)
        .unwrap_or_else(|_| Response::empty().expect("an empty response can always be built"))
        .with_status(err.status());
    let headers = resp.headers_mut();
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set("cache-control", "no-store");
    if err.status() == 401 {
        let _ = headers.set("www-authenticate", "Bearer");
    }
    resp
}

/// Reads a request body that must be JSON and at most [`MAX_BODY_BYTES`].
///
/// # Errors
/// 415 without a JSON content type, 413 when too large, 400 when unreadable.
pub async fn read_json_body(req: &mut Request) -> Result<Vec<u8>, ApiError> {
    let content_type = req
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = req.headers().get("content-length").ok().flatten();
    if declared
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY_BYTES)
    {
        return Err(ApiError::PayloadTooLarge);
    }
    let bytes = req
        .bytes()
        .await
        .map_err(|_| ApiError::BadRequest("request body could not be read".into()))?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(bytes)
}

/// The query string of a request (without `?` and any fragment), if it has one.
pub fn query(req: &Request) -> Option<String> {
    // The runtime's URL is already serialised (WHATWG): its query is what follows the first
    // `?`, so there is no need to parse the whole URL again (`Request::url` would).
    let url = req.inner().url();
    url.split_once('?')
        .map(|(_, q)| q.split_once('#').map_or(q, |(q, _)| q).to_owned())
}

/// The decoded parameters of a request's query string (`+` is a space), for routes that read
/// named values; a pair that does not percent-decode is left out.
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn of(req: &Request) -> Self {
        let decode = |s: &str| percent_decode(&s.replace('+', " "));
        let q = query(req);
        Params(
            query_pairs(q.as_deref())
                .filter_map(|(k, v)| Some((decode(k)?, decode(v)?)))
                .collect(),
        )
    }

    /// The first value given for `name`, unless it is empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// The `?limit=&after=` of a list route.
///
/// # Errors
/// 422 for a malformed parameter.
pub fn page(req: &Request) -> Result<Page, ApiError> {
    Page::parse(query(req).as_deref())
}

//! The mayor's tools: the worker's routes under `/api/mayor/:townId/tools/`, with which the
//! town's mayor (a town-wide agent, on no rig) plans its user's work: it lists rigs, beads and
//! agents, creates and updates beads, slings work to a rig, resets an agent, acknowledges an
//! escalation, replies to its user and says what it is doing (`POST …/state`). `gt` (the agents'
//! tool) makes the calls an agent asks for; the mayor's runtime says its state with
//! [`MayorTools::post_state`].
//!
//! Rules:
//!
//! * every call carries two credentials: `authorization: Bearer <the town's container token>`,
//!   read afresh on every call exactly as [`crate::callbacks`] reads it, and
//!   `x-gastown-mayor-key: <GASTOWN_MAYOR_KEY>`, the mayor session's own key; neither is ever
//!   printed, logged or part of an error (the worker's messages name the URL, never a header);
//! * a `GET` is tried up to [`TRIES`] times while the worker is not reached; a `POST` or a
//!   `PATCH` is sent once, since the worker may have acted on a call whose answer was lost (a
//!   retried sling could sling twice);
//! * a status is an answer, not an error: the caller reads it with its body; no redirect is
//!   followed.

use crate::callbacks::{plain_segment, ContainerToken, TRIES};
use crate::client;
use gastown_core::control::{CONTENT_TYPE_JSON, TOWN_ID_ENV, WORKER_URL_ENV};
/// The mayor session's key (`GASTOWN_MAYOR_KEY`) and its header (`x-gastown-mayor-key`), as the
/// worker reads them.
pub use gastown_core::mayor::{MAYOR_KEY_ENV, MAYOR_KEY_HEADER};
use std::time::Duration;

const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longer than a callback's deadline: a sling or a batch creates beads, and a `POST` whose
/// answer is late is not sent again.
const WORKER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a town's beads, a page at a time, are well under it).
const MAX_ANSWER_BYTES: u64 = 4 * 1024 * 1024;

/// The path of the mayor's tools of `town`, to which a tool's own path is appended.
#[must_use]
pub fn tools_path(town: &str) -> String {
    format!("/api/mayor/{town}/tools")
}

/// The methods the tools take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Patch,
}

impl Method {
    fn parse(method: &str) -> Result<Method, String> {
        match method {
            "GET" => Ok(Method::Get),
            "POST" => Ok(Method::Post),
            "PATCH" => Ok(Method::Patch),
            other => Err(format!("{other:?} is not a method of the mayor's tools")),
        }
    }

    /// Times a call is tried: only a read is safe to send again.
    fn tries(self) -> u32 {
        match self {
            Method::Get => TRIES,
            Method::Post | Method::Patch => 1,
        }
    }
}

/// The mayor session's calls to its tools. Holds the mayor's key, so it is neither `Debug` nor
/// `Clone`.
pub struct MayorTools {
    http: ureq::Agent,
    /// The worker's origin.
    origin: String,
    town: String,
    token: ContainerToken,
    key: String,
}

impl MayorTools {
    /// The session the environment describes (`GASTOWN_WORKER_URL`, `GASTOWN_TOWN_ID`,
    /// `GASTOWN_MAYOR_KEY`, and `GASTOWN_CONTAINER_TOKEN_FILE` or `GASTOWN_CONTAINER_TOKEN`).
    ///
    /// # Errors
    /// What is missing or unusable (never a key's value).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<MayorTools, String> {
        let need = |name: &str| env(name).ok_or_else(|| format!("{name} is not set"));
        let origin =
            client::origin(&need(WORKER_URL_ENV)?).map_err(|e| format!("{WORKER_URL_ENV} {e}"))?;
        let town = need(TOWN_ID_ENV)?;
        if !plain_segment(&town) {
            return Err(format!("{TOWN_ID_ENV} cannot be part of a URL path"));
        }
        let key = need(MAYOR_KEY_ENV)?;
        // Visible ASCII only: a header value, sent as it is (no space for a server to trim).
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{MAYOR_KEY_ENV} cannot be a header value"));
        }
        Ok(MayorTools {
            http: client::agent_with(WORKER_TIMEOUT),
            origin,
            town,
            token: ContainerToken::from_env(env)?,
            key,
        })
    }

    /// `method` (`GET`, `POST` or `PATCH`) of `path_and_query`, the part of the URL after
    /// `/api/mayor/:townId/tools` (from its `/`), with the JSON `body` (a `GET` takes none): the
    /// worker's status and body, whatever the status. A `GET` is tried up to [`TRIES`] times
    /// while the worker is not reached; a `POST` or a `PATCH` once.
    ///
    /// # Errors
    /// The worker was not reached or its answer could not be read, a credential is missing, or
    /// the call is not one of the tools' (another method, a path without its `/`, a `GET` with a
    /// body).
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let method = Method::parse(method)?;
        if !path_and_query.starts_with('/') {
            return Err(format!("{path_and_query:?} is not a tool's path"));
        }
        if method == Method::Get && body.is_some() {
            return Err("a GET sends no body".to_owned());
        }
        let url = format!("{}{}{path_and_query}", self.origin, tools_path(&self.town));
        let mut last = String::new();
        for attempt in 1..=method.tries() {
            if attempt > 1 {
                std::thread::sleep(RETRY_PAUSE);
            }
            let token = self.token.read()?;
            match self.send(method, &url, &token, body) {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let text = response
                        .body_mut()
                        .with_config()
                        .limit(MAX_ANSWER_BYTES)
                        .read_to_string()
                        .map_err(|e| format!("the worker's answer could not be read: {e}"))?;
                    return Ok((status, text));
                }
                // ureq's message names the URL and the failure, never a header.
                Err(e) => last = format!("worker not reached: {e}"),
            }
        }
        Err(last)
    }

    fn send(
        &self,
        method: Method,
        url: &str,
        token: &str,
        body: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let authorization = format!("Bearer {token}");
        let request = match method {
            Method::Get => {
                return self
                    .http
                    .get(url)
                    .header("authorization", &authorization)
                    .header(MAYOR_KEY_HEADER, &self.key)
                    .call()
            }
            Method::Post => self.http.post(url),
            Method::Patch => self.http.patch(url),
        }
        .header("authorization", &authorization)
        .header(MAYOR_KEY_HEADER, &self.key);
        match body {
            Some(body) => request.header("content-type", CONTENT_TYPE_JSON).send(body),
            None => request.send_empty(),
        }
    }

    /// Says what the mayor is doing (`starting`, `working`, `waiting` or `idle`): `POST /state`
    /// `{"status": status}`.
    ///
    /// # Errors
    /// As [`MayorTools::request`], or the status of an answer other than 2xx.
    pub fn post_state(&self, status: &str) -> Result<(), String> {
        let body = serde_json::json!({ "status": status }).to_string();
        match self.request("POST", "/state", Some(&body))? {
            (200..=299, _) => Ok(()),
            (status, _) => Err(format!("worker answered {status}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::CONTAINER_TOKEN_FILE_ENV;
    use crate::callbacks::CONTAINER_TOKEN_ENV;

    fn full(name: &str) -> Option<String> {
        Some(
            match name {
                WORKER_URL_ENV => "http://127.0.0.1:9",
                TOWN_ID_ENV => "t",
                MAYOR_KEY_ENV => "mk-1",
                CONTAINER_TOKEN_FILE_ENV => "/nonexistent/token",
                _ => return None,
            }
            .to_owned(),
        )
    }

    fn with(name: &'static str, value: Option<&'static str>) -> impl Fn(&str) -> Option<String> {
        move |n: &str| {
            if n == name {
                value.map(str::to_owned)
            } else {
                full(n)
            }
        }
    }

    #[test]
    fn the_environment_must_name_the_mayors_session() {
        assert!(MayorTools::from_env(&full).is_ok());
        // The mayor has no rig and no agent id in the tools' calls.
        for missing in [
            WORKER_URL_ENV,
            TOWN_ID_ENV,
            MAYOR_KEY_ENV,
            CONTAINER_TOKEN_FILE_ENV,
        ] {
            let e = MayorTools::from_env(&with(missing, None)).err().unwrap();
            assert!(e.contains(missing), "{e}");
        }
        assert!(MayorTools::from_env(&with(TOWN_ID_ENV, Some("a/b"))).is_err());
        assert!(MayorTools::from_env(&with(WORKER_URL_ENV, Some("ftp://w"))).is_err());
        let e = MayorTools::from_env(&with(MAYOR_KEY_ENV, Some("secret key\n")))
            .err()
            .unwrap();
        assert!(!e.contains("secret"), "{e}");
        let dispatch_token = |n: &str| match n {
            CONTAINER_TOKEN_FILE_ENV => None,
            CONTAINER_TOKEN_ENV => Some("ctok".to_owned()),
            other => full(other),
        };
        assert!(MayorTools::from_env(&dispatch_token).is_ok());
    }

    #[test]
    fn only_the_tools_calls_are_made() {
        let tools = MayorTools::from_env(&with(CONTAINER_TOKEN_ENV, Some("ctok"))).unwrap();
        for (method, path, body) in [
            ("DELETE", "/beads/b1", None),
            ("get", "/rigs", None),
            ("GET", "rigs", None),
            ("GET", "/rigs", Some("{}")),
        ] {
            let e = tools.request(method, path, body).unwrap_err();
            assert!(!e.contains("not reached"), "{method} {path}: {e}");
        }
        assert_eq!(tools_path("t1"), "/api/mayor/t1/tools");
        assert_eq!(Method::Get.tries(), TRIES);
        assert_eq!(Method::Post.tries(), 1);
        assert_eq!(Method::Patch.tries(), 1);
    }

    #[test]
    fn a_missing_token_is_an_error_before_any_call() {
        // The token file does not exist and there is no dispatch token.
        let tools = MayorTools::from_env(&full).unwrap();
        let e = tools.request("GET", "/rigs", None).unwrap_err();
        assert!(e.contains("container token"), "{e}");
    }
}

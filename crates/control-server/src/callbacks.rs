//! An agent session's calls to the worker: heartbeat, status and done
//! (`POST <worker><agent_callback_path(town, rig, agent, kind)>`), with the town's container
//! token read afresh from `GASTOWN_CONTAINER_TOKEN_FILE` on every call, so a `/refresh-token`
//! reaches a running session. Used by `gt` (the agents' tool), the Kilo runtime and the demo
//! agent; the mayor's tools ([`crate::mayor_tools`]) read the token the same way.
//!
//! Rules: `authorization: Bearer <token>` and `content-type: application/json`; no redirect is
//! followed; a failed call is tried [`TRIES`] times; a failure names a status or a kind of
//! failure, never a token.

use crate::agents::{AGENT_ID_ENV, CONTAINER_TOKEN_FILE_ENV, RIG_ID_ENV};
use crate::client;
use crate::workdir::is_plain_token;
use gastown_core::control::{
    agent_callback_path, AgentStatusCallback, CONTENT_TYPE_JSON, MAX_CALLBACK_TEXT, TOWN_ID_ENV,
    WORKER_URL_ENV,
};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// The container token of the dispatch, used only while the token file does not exist.
pub const CONTAINER_TOKEN_ENV: &str = "GASTOWN_CONTAINER_TOKEN";
/// Times a call to the worker is tried.
pub const TRIES: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(200);
const WORKER_TIMEOUT: Duration = Duration::from_secs(10);

/// `text` cut to [`MAX_CALLBACK_TEXT`] characters, as the worker takes it.
#[must_use]
pub fn callback_text(text: &str) -> String {
    text.chars().take(MAX_CALLBACK_TEXT).collect()
}

/// Whether `s` can be a segment of a callback's path as it is.
#[must_use]
pub fn plain_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        && s != "."
        && s != ".."
}

/// Where a session finds the town's container token: its file
/// (`GASTOWN_CONTAINER_TOKEN_FILE`), read afresh on every call, else, only while that file does
/// not exist, the dispatch's token (`GASTOWN_CONTAINER_TOKEN`).
pub(crate) struct ContainerToken {
    file: Option<PathBuf>,
    /// The dispatch's token, for while the token file does not exist.
    fallback: Option<String>,
}

impl ContainerToken {
    /// The token's places the environment names.
    ///
    /// # Errors
    /// `GASTOWN_CONTAINER_TOKEN_FILE is not set` when neither place is.
    pub(crate) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<ContainerToken, String> {
        let file = env(CONTAINER_TOKEN_FILE_ENV).map(PathBuf::from);
        let fallback = env(CONTAINER_TOKEN_ENV);
        if file.is_none() && fallback.is_none() {
            return Err(format!("{CONTAINER_TOKEN_FILE_ENV} is not set"));
        }
        Ok(ContainerToken { file, fallback })
    }

    /// The container token as it is now: never kept between calls.
    ///
    /// # Errors
    /// Why there is no token (never the file's content).
    pub(crate) fn read(&self) -> Result<String, String> {
        if let Some(file) = &self.file {
            match fs::read_to_string(file) {
                Ok(text) if is_plain_token(text.trim()) => return Ok(text.trim().to_owned()),
                Ok(_) => return Err("the container token file holds no token".to_owned()),
                Err(e) if e.kind() == io::ErrorKind::NotFound && self.fallback.is_some() => {}
                Err(e) => return Err(format!("cannot read the container token file: {e}")),
            }
        }
        self.fallback
            .clone()
            .filter(|t| is_plain_token(t))
            .ok_or_else(|| "no container token".to_owned())
    }
}

/// One agent session's calls to the worker.
pub struct Callbacks {
    http: ureq::Agent,
    /// The worker's origin.
    origin: String,
    town: String,
    rig: String,
    agent: String,
    token: ContainerToken,
    /// Names the caller in log lines.
    label: &'static str,
}

impl Callbacks {
    /// The session the environment describes (`GASTOWN_WORKER_URL`, `GASTOWN_TOWN_ID`,
    /// `GASTOWN_RIG_ID`, `GASTOWN_AGENT_ID`, `GASTOWN_CONTAINER_TOKEN_FILE`); `label` names the
    /// caller in its log lines.
    ///
    /// # Errors
    /// What is missing or unusable.
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        label: &'static str,
    ) -> Result<Callbacks, String> {
        let need = |name: &str| env(name).ok_or_else(|| format!("{name} is not set"));
        let origin =
            client::origin(&need(WORKER_URL_ENV)?).map_err(|e| format!("{WORKER_URL_ENV} {e}"))?;
        let (town, rig, agent) = (need(TOWN_ID_ENV)?, need(RIG_ID_ENV)?, need(AGENT_ID_ENV)?);
        for (name, id) in [
            (TOWN_ID_ENV, &town),
            (RIG_ID_ENV, &rig),
            (AGENT_ID_ENV, &agent),
        ] {
            if !plain_segment(id) {
                return Err(format!("{name} cannot be part of a URL path"));
            }
        }
        let token = ContainerToken::from_env(env)?;
        Ok(Callbacks {
            http: client::agent_with(WORKER_TIMEOUT),
            origin,
            town,
            rig,
            agent,
            token,
            label,
        })
    }

    /// `POST` of `body` to the callback `kind`, tried up to [`TRIES`] times; each failure is
    /// logged (a status or a kind, never the token).
    ///
    /// # Errors
    /// The last failure.
    pub fn call(&self, kind: &str, body: &str) -> Result<(), String> {
        let url = format!(
            "{}{}",
            self.origin,
            agent_callback_path(&self.town, &self.rig, &self.agent, kind)
        );
        let mut last = String::new();
        for attempt in 1..=TRIES {
            if attempt > 1 {
                std::thread::sleep(RETRY_PAUSE);
            }
            match self.try_call(&url, body) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    eprintln!("{}: {kind} (try {attempt} of {TRIES}): {e}", self.label);
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn try_call(&self, url: &str, body: &str) -> Result<(), String> {
        let token = self.token.read()?;
        let response = self
            .http
            .post(url)
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", CONTENT_TYPE_JSON)
            .send(body)
            // ureq's message names the URL and the failure, never a header.
            .map_err(|e| format!("worker not reached: {e}"))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("worker answered {status}"))
        }
    }

    /// Posts a status (and logs it).
    ///
    /// # Errors
    /// As [`Callbacks::call`].
    pub fn status(&self, message: &str) -> Result<(), String> {
        eprintln!("{}: {message}", self.label);
        let body = AgentStatusCallback {
            message: callback_text(message),
        };
        self.call(
            "status",
            &serde_json::to_string(&body).map_err(|e| e.to_string())?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_segments() {
        assert_eq!(
            callback_text(&"x".repeat(MAX_CALLBACK_TEXT + 5)).len(),
            MAX_CALLBACK_TEXT
        );
        for ok in ["a", "rig-1", "A_b.c~"] {
            assert!(plain_segment(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(!plain_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_environment_must_name_the_session() {
        let full = |name: &str| {
            Some(
                match name {
                    WORKER_URL_ENV => "http://127.0.0.1:9",
                    TOWN_ID_ENV => "t",
                    RIG_ID_ENV => "r",
                    AGENT_ID_ENV => "a",
                    CONTAINER_TOKEN_FILE_ENV => "/nonexistent/token",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        assert!(Callbacks::from_env(&full, "test").is_ok());
        for missing in [WORKER_URL_ENV, TOWN_ID_ENV, RIG_ID_ENV, AGENT_ID_ENV] {
            let env = |name: &str| if name == missing { None } else { full(name) };
            assert!(Callbacks::from_env(&env, "test").is_err(), "{missing}");
        }
        let bad_id = |name: &str| {
            if name == RIG_ID_ENV {
                Some("a/b".into())
            } else {
                full(name)
            }
        };
        assert!(Callbacks::from_env(&bad_id, "test").is_err());
        let no_token = |name: &str| {
            if name == CONTAINER_TOKEN_FILE_ENV {
                None
            } else {
                full(name)
            }
        };
        assert!(Callbacks::from_env(&no_token, "test").is_err());
    }
}

//! How `TownContainerDO` reaches its container's control server (DESIGN.md §7): the Cloudflare
//! Container bound to the DO in production, or plain HTTP to `CONTAINER_CONTROL_URL` where no
//! container is bound (local dev and tests).
//!
//! Every request but `/health` carries the town's control secret (`gastown_core::control`),
//! derived from `GASTOWN_CONTROL_KEY`; a production container is started with only its own
//! town's secret in its environment, which the control server removes before it starts agents.

use crate::config;
use gastown_core::control::{self, AUTHORIZATION_HEADER, TOWN_ID_HEADER};
use gastown_core::ids::TownId;
use serde::Serialize;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;
use worker::wasm_bindgen::JsValue;
use worker::{
    console_error, Container, ContainerStartupOptions, Delay, Env, Fetch, Headers, Method, Request,
    RequestInit, State,
};

/// The control server's port inside a Cloudflare Container.
const CONTROL_PORT: u16 = 8080;
/// How long any call to the control server may take before it counts as failed: a deaf
/// container must not hold the town's alarm (a start includes the container's own start).
const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// A direct merge clones, merges and pushes: the control server's own deadline (120 s) and a
/// margin.
const MERGE_DEADLINE: Duration = Duration::from_secs(150);

/// `future`'s output, or `None` once `deadline` has passed (the future is then dropped).
pub async fn within<F: Future>(deadline: Duration, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(Delay::from(deadline));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// A control server's 2xx answer.
pub struct Answer {
    /// This request had to start the container first (which then had neither env nor token).
    pub started: bool,
    pub body: String,
}

/// Where the control server is.
pub enum Target {
    /// The Cloudflare Container bound to this DO (production).
    Cloudflare(Container),
    /// A control server at this base URL (local dev and tests).
    Control(String),
    /// Neither is configured.
    Missing,
}

/// The control server of one town's container.
pub struct Backend {
    target: Target,
    town: TownId,
    /// The town's control secret; `None` when `GASTOWN_CONTROL_KEY` is not set, and then every
    /// authenticated request fails rather than go out without it.
    secret: Option<String>,
    /// Where the container's agents call back and its server renews gateway tokens.
    worker_url: String,
    gateway_refresh_ms: u64,
}

impl Backend {
    pub fn new(state: &State, env: &Env, town: &TownId) -> Backend {
        let target = if let Some(container) = state.container() {
            Target::Cloudflare(container)
        } else {
            match env.secret("CONTAINER_CONTROL_URL").map(|s| s.to_string()) {
                Ok(url) if !url.trim().is_empty() => {
                    Target::Control(url.trim_end_matches('/').to_owned())
                }
                _ => Target::Missing,
            }
        };
        let settings = config::get(env);
        let secret = settings
            .control_key
            .as_deref()
            .map(|key| control::control_secret(key, town.as_str()));
        Backend {
            target,
            town: town.clone(),
            secret,
            worker_url: settings.work.callback_url.clone(),
            gateway_refresh_ms: settings.gateway_self_refresh_ms,
        }
    }

    /// `GET /health`.
    ///
    /// # Errors
    /// A description for the log when the server is unreachable or answers non-2xx.
    pub async fn health(&self) -> Result<(), String> {
        self.health_within(CALL_DEADLINE).await
    }

    /// A health check that starts nothing: as [`Backend::health_within`], except that a
    /// Cloudflare Container that is not running fails it.
    ///
    /// # Errors
    /// As [`Backend::health_within`], and for a container that is not running.
    pub async fn probe(&self, deadline: Duration) -> Result<(), String> {
        if let Target::Cloudflare(container) = &self.target {
            if !container.running() {
                return Err("the container is not running".into());
            }
        }
        self.health_within(deadline).await
    }

    /// `GET /health`, answered within `deadline`.
    ///
    /// # Errors
    /// As [`Backend::health`], and when no answer came in time.
    pub async fn health_within(&self, deadline: Duration) -> Result<(), String> {
        match self
            .exchange(Method::Get, control::HEALTH_PATH, None, deadline)
            .await?
        {
            (200..=299, _) => Ok(()),
            (status, _) => Err(format!("/health: control server answered {status}")),
        }
    }

    /// POSTs a JSON body; any non-2xx answer is an error.
    ///
    /// # Errors
    /// As [`Backend::health`].
    pub async fn post<T: Serialize>(&self, path: &str, body: &T) -> Result<Answer, String> {
        let body = serde_json::to_string(body).map_err(|e| e.to_string())?;
        self.send(Method::Post, path, Some(body)).await
    }

    /// POSTs a JSON body and answers with the status, whatever it is.
    ///
    /// # Errors
    /// When the server is unreachable.
    pub async fn post_any<T: Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<(u16, Answer), String> {
        let body = serde_json::to_string(body).map_err(|e| e.to_string())?;
        let deadline = if path == control::MERGE_PATH {
            MERGE_DEADLINE
        } else {
            CALL_DEADLINE
        };
        self.exchange(Method::Post, path, Some(body), deadline)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Answer, String> {
        match self.exchange(method, path, body, CALL_DEADLINE).await? {
            (200..=299, answer) => Ok(answer),
            (status, _) => Err(format!("{path}: control server answered {status}")),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        deadline: Duration,
    ) -> Result<(u16, Answer), String> {
        within(deadline, self.exchange_now(method, path, body))
            .await
            .unwrap_or_else(|| {
                Err(format!(
                    "{path}: no answer within {} ms",
                    deadline.as_millis()
                ))
            })
    }

    async fn exchange_now(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, Answer), String> {
        let secret = self
            .secret
            .as_deref()
            .ok_or("GASTOWN_CONTROL_KEY is not set")?;
        let headers = Headers::new();
        let set = |name: &str, value: &str| headers.set(name, value).map_err(|e| e.to_string());
        set(AUTHORIZATION_HEADER, &format!("Bearer {secret}"))?;
        set(TOWN_ID_HEADER, self.town.as_str())?;
        let mut init = RequestInit::new();
        init.with_method(method);
        if let Some(body) = body {
            set("content-type", control::CONTENT_TYPE_JSON)?;
            init.with_body(Some(JsValue::from_str(&body)));
        }
        init.with_headers(headers);
        let mut started = false;
        let response = match &self.target {
            Target::Cloudflare(container) => {
                if !container.running() {
                    started = true;
                    let mut options = ContainerStartupOptions::new();
                    for (name, value) in control::startup_env(
                        secret,
                        self.town.as_str(),
                        &self.worker_url,
                        self.gateway_refresh_ms,
                    ) {
                        options.add_env(name, &value);
                    }
                    container
                        .start(Some(options))
                        .map_err(|e| format!("container start: {e}"))?;
                }
                let port = container
                    .get_tcp_port(CONTROL_PORT)
                    .map_err(|e| e.to_string())?;
                port.fetch(format!("http://container{path}"), Some(init))
                    .await
            }
            Target::Control(base) => {
                let req = Request::new_with_init(&format!("{base}{path}"), &init)
                    .map_err(|e| e.to_string())?;
                Fetch::Request(req).send().await
            }
            Target::Missing => {
                return Err("no container is bound and CONTAINER_CONTROL_URL is not set".into())
            }
        };
        let mut response = response.map_err(|e| format!("{path}: {e}"))?;
        Ok((
            response.status_code(),
            Answer {
                started,
                body: response.text().await.unwrap_or_default(),
            },
        ))
    }

    /// Stops the container: a Cloudflare Container is destroyed; the development control
    /// server drops the town's token and env, as a stopped container would.
    pub async fn stop(&self) {
        let result = match &self.target {
            Target::Cloudflare(container) if container.running() => {
                container.destroy(None).await.map_err(|e| e.to_string())
            }
            Target::Cloudflare(_) | Target::Missing => Ok(()),
            Target::Control(_) => {
                let body = control::StopBody {
                    town_id: self.town.as_str().to_owned(),
                };
                self.post(control::STOP_PATH, &body).await.map(|_| ())
            }
        };
        if let Err(e) = result {
            console_error!("town {}: container stop: {e}", self.town);
        }
    }
}

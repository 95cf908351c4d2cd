//! `TownContainerDO`: one per town. Persists the env the town's container runs with, knows
//! whether the container is running, and talks to its control server (DESIGN.md §7) through
//! [`Backend`]: the Cloudflare Container bound to this DO in production, or plain HTTP to
//! `CONTAINER_CONTROL_URL` where no container is bound (local dev and tests).
//!
//! Only the town's `TownDO` calls it. It keeps no token: only the expiry of the last one the
//! container accepted and when.

use crate::config;
use crate::http::{read_rpc, rpc_response};
use crate::storage::{exec, first, rows, Schema};
use gastown_core::do_api::{Ack, ContainerRequest, ContainerStatus, EnvSynced, TokenPushed};
use gastown_core::error::ApiError;
use gastown_core::ids::TownId;
use gastown_core::schema;
use gastown_core::time::rfc3339;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use worker::wasm_bindgen::JsValue;
use worker::{
    console_error, durable_object, Container, DurableObject, Env, Fetch, Method, Request,
    RequestInit, Response, Result, State, Stub,
};

pub const BINDING: &str = "TOWN_CONTAINER";
/// The control server's port inside a Cloudflare Container.
const CONTROL_PORT: u16 = 8080;

/// The DO of `town`'s container.
///
/// # Errors
/// Internal, when the binding is missing.
pub fn stub(env: &Env, town: &TownId) -> std::result::Result<Stub, ApiError> {
    env.durable_object(BINDING)
        .and_then(|ns| ns.get_by_name(town.as_str()))
        .map_err(ApiError::internal)
}

/// How this DO reaches its container's control server.
enum Backend {
    /// The Cloudflare Container bound to this DO (production).
    Cloudflare(Container),
    /// A control server at this base URL (local dev and tests).
    Control(String),
    /// Neither is configured.
    Missing,
}

impl Backend {
    fn new(state: &State, env: &Env) -> Backend {
        if let Some(container) = state.container() {
            return Backend::Cloudflare(container);
        }
        match env.secret("CONTAINER_CONTROL_URL").map(|s| s.to_string()) {
            Ok(url) if !url.trim().is_empty() => {
                Backend::Control(url.trim_end_matches('/').to_owned())
            }
            _ => Backend::Missing,
        }
    }

    /// Sends one request to the control server; any non-2xx answer is an error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> std::result::Result<(), String> {
        let mut init = RequestInit::new();
        init.with_method(method);
        if let Some(body) = body {
            let headers = worker::Headers::new();
            headers
                .set("content-type", "application/json")
                .map_err(|e| e.to_string())?;
            init.with_headers(headers)
                .with_body(Some(JsValue::from_str(&body.to_string())));
        }
        let response = match self {
            Backend::Cloudflare(container) => {
                if !container.running() {
                    container
                        .start(None)
                        .map_err(|e| format!("container start: {e}"))?;
                }
                let port = container
                    .get_tcp_port(CONTROL_PORT)
                    .map_err(|e| e.to_string())?;
                port.fetch(format!("http://container{path}"), Some(init))
                    .await
            }
            Backend::Control(base) => {
                let req = Request::new_with_init(&format!("{base}{path}"), &init)
                    .map_err(|e| e.to_string())?;
                Fetch::Request(req).send().await
            }
            Backend::Missing => {
                return Err("no container is bound and CONTAINER_CONTROL_URL is not set".into())
            }
        };
        let response = response.map_err(|e| format!("{path}: {e}"))?;
        match response.status_code() {
            200..=299 => Ok(()),
            status => Err(format!("{path}: control server answered {status}")),
        }
    }

    async fn stop(&self) {
        if let Backend::Cloudflare(container) = self {
            if container.running() {
                if let Err(e) = container.destroy(None).await {
                    console_error!("container stop: {e}");
                }
            }
        }
    }
}

#[durable_object]
pub struct TownContainerDO {
    state: State,
    env: Env,
    schema: Schema,
}

#[derive(Deserialize)]
struct StateRow {
    status: String,
    token_expires_at: Option<f64>,
    token_pushed_at: Option<f64>,
    last_error: Option<String>,
}

#[derive(Deserialize)]
struct EnvRow {
    key: String,
    value: String,
}

type Outcome = std::result::Result<Value, ApiError>;

fn to_json<T: serde::Serialize>(value: T) -> Outcome {
    serde_json::to_value(value).map_err(ApiError::internal)
}

impl TownContainerDO {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> std::result::Result<(), ApiError> {
        self.schema.ensure(&self.sql(), config::now_ms())
    }

    fn row(&self) -> std::result::Result<StateRow, ApiError> {
        first::<StateRow>(
            &self.sql(),
            "SELECT status, token_expires_at, token_pushed_at, last_error FROM state WHERE id = 1",
            vec![],
        )?
        .ok_or_else(|| ApiError::internal("container state row missing"))
    }

    fn env_map(&self) -> std::result::Result<BTreeMap<String, String>, ApiError> {
        Ok(rows::<EnvRow>(
            &self.sql(),
            "SELECT key, value FROM env ORDER BY key",
            vec![],
        )?
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect())
    }

    /// Replaces the stored env: keys not in `env` are deleted. Values are sealed (they hold
    /// tokens and PATs), each bound to its key name.
    fn store_env(&self, env: &BTreeMap<String, String>) -> std::result::Result<(), ApiError> {
        let sql = self.sql();
        let sealer = &config::get(&self.env).sealer;
        let sealed = env
            .iter()
            .map(|(key, value)| {
                sealer
                    .seal(
                        value.as_bytes(),
                        &format!("container-env:{key}"),
                        config::nonce()?,
                    )
                    .map(|v| (key, v))
                    .map_err(ApiError::internal)
            })
            .collect::<std::result::Result<Vec<_>, ApiError>>()?;
        exec(&sql, "DELETE FROM env", vec![])?;
        for (key, value) in sealed {
            exec(
                &sql,
                "INSERT INTO env (key, value) VALUES (?, ?)",
                vec![key.as_str().into(), value.as_str().into()],
            )?;
        }
        Ok(())
    }

    fn record_error(&self, error: Option<&str>) -> std::result::Result<(), ApiError> {
        exec(
            &self.sql(),
            "UPDATE state SET last_error = ? WHERE id = 1",
            vec![error.into()],
        )
    }

    async fn push_token(
        &self,
        backend: &Backend,
        town: &TownId,
        token: &str,
        expires_at: i64,
    ) -> Outcome {
        let body = json!({ "token": token, "townId": town });
        match backend
            .send(Method::Post, "/refresh-token", Some(&body))
            .await
        {
            Ok(()) => {
                exec(
                    &self.sql(),
                    "UPDATE state SET token_expires_at = ?, token_pushed_at = ?, last_error = NULL WHERE id = 1",
                    vec![expires_at.into(), crate::storage::int(config::now_ms())],
                )?;
                to_json(TokenPushed {
                    accepted: true,
                    token_expires_at: Some(expires_at),
                })
            }
            Err(e) => {
                console_error!("town {town}: token push failed: {e}");
                self.record_error(Some("the container did not accept the token"))?;
                to_json(TokenPushed {
                    accepted: false,
                    token_expires_at: None,
                })
            }
        }
    }

    async fn push_env(
        &self,
        backend: &Backend,
        town: &TownId,
        env: &BTreeMap<String, String>,
    ) -> std::result::Result<bool, ApiError> {
        match backend
            .send(
                Method::Post,
                "/sync-config",
                Some(&json!({ "env": env, "townId": town })),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) => {
                console_error!("town {town}: env push failed: {e}");
                self.record_error(Some("the container did not accept its env"))?;
                Ok(false)
            }
        }
    }

    async fn serve(&self, request: ContainerRequest) -> Outcome {
        self.ensure_schema()?;
        let backend = Backend::new(&self.state, &self.env);
        match request {
            ContainerRequest::Start {
                town_id,
                token,
                expires_at,
                env,
            } => {
                self.store_env(&env)?;
                if let Err(e) = backend.send(Method::Get, "/health", None).await {
                    console_error!("town {town_id}: container not healthy: {e}");
                    self.record_error(Some("the container is not reachable"))?;
                    return to_json(TokenPushed {
                        accepted: false,
                        token_expires_at: None,
                    });
                }
                exec(
                    &self.sql(),
                    "UPDATE state SET status = 'running' WHERE id = 1",
                    vec![],
                )?;
                if !self.push_env(&backend, &town_id, &env).await? {
                    return to_json(TokenPushed {
                        accepted: false,
                        token_expires_at: None,
                    });
                }
                self.push_token(&backend, &town_id, &token, expires_at)
                    .await
            }
            ContainerRequest::SyncEnv { town_id, env } => {
                self.store_env(&env)?;
                let running = self.row()?.status == "running";
                let pushed = running && self.push_env(&backend, &town_id, &env).await?;
                to_json(EnvSynced {
                    pushed,
                    names: env.into_keys().collect(),
                })
            }
            ContainerRequest::PushToken {
                town_id,
                token,
                expires_at,
            } => {
                if self.row()?.status != "running" {
                    return to_json(TokenPushed {
                        accepted: false,
                        token_expires_at: None,
                    });
                }
                self.push_token(&backend, &town_id, &token, expires_at)
                    .await
            }
            ContainerRequest::Status => {
                let row = self.row()?;
                to_json(ContainerStatus {
                    state: row.status,
                    env_var_names: self.env_map()?.into_keys().collect(),
                    token_expires_at: row.token_expires_at.map(|t| t as i64),
                    token_pushed_at: row.token_pushed_at.map(|t| rfc3339(t as u64)),
                    last_error: row.last_error,
                })
            }
            ContainerRequest::Destroy => {
                backend.stop().await;
                self.state
                    .storage()
                    .delete_all()
                    .await
                    .map_err(ApiError::internal)?;
                self.schema.reset();
                to_json(Ack { ok: true })
            }
        }
    }
}

impl DurableObject for TownContainerDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            schema: Schema::new(schema::CONTAINER_DO),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let result = match read_rpc::<ContainerRequest>(&mut req).await {
            Ok(request) => self.serve(request).await,
            Err(e) => Err(e),
        };
        rpc_response(result)
    }
}

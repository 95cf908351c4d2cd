//! `TownContainerDO`: one per town. Persists the env the town's container runs with (sealed),
//! knows whether the container is running, and talks to its control server through
//! [`Backend`].
//!
//! Only the town's `TownDO` calls it. It keeps no token: only the expiry of the last one the
//! container accepted and when.

mod backend;

use super::{no_fetch, rpc_entry, DoStub};
use crate::config;
use crate::storage::{exec, exists, first, int, rows, Schema};
use backend::Backend;
use gastown_core::agent_settings::SettingsFiles;
use gastown_core::control::{self, RefreshTokenBody, RefreshTokenReply, SyncConfigBody};
use gastown_core::error::ApiError;
use gastown_core::ids::TownId;
use gastown_core::protocol::container::*;
use gastown_core::protocol::Ack;
use gastown_core::schema;
use gastown_core::time::rfc3339;
use serde::Deserialize;
use std::cell::Cell;
use std::collections::BTreeMap;
use worker::{
    console_error, durable_object, DurableObject, Env, Request, Response, Result, SqlStorage, State,
};

pub const BINDING: &str = "TOWN_CONTAINER";

/// A stub of a town's container DO.
pub type ContainerStub = DoStub<ContainerOp>;

/// The container DO of `town`.
///
/// # Errors
/// Internal, when the binding is missing.
pub fn stub(env: &Env, town: &TownId) -> std::result::Result<ContainerStub, ApiError> {
    DoStub::get(env, BINDING, town.as_str())
}

#[durable_object]
pub struct TownContainerDO {
    state: State,
    env: Env,
    schema: Schema,
    /// Set by `destroy` before its first await. A start or push that resumes after an await
    /// finds it, stops the container again (its request may have landed after the stop) and
    /// answers 410, so nothing of a destroyed town survives in its container.
    destroyed: Cell<bool>,
}

#[derive(Deserialize)]
struct StateRow {
    status: ContainerState,
    token_expires_at: Option<f64>,
    token_pushed_at: Option<f64>,
    last_error: Option<String>,
}

#[derive(Deserialize)]
struct EnvKey {
    key: String,
}

#[derive(Deserialize)]
struct EnvRow {
    key: String,
    value: String,
}

/// What a stored env value is bound to: its town and its name.
fn env_aad(town: &TownId, key: &str) -> String {
    format!("container-env:{town}:{key}")
}

type Reply<T> = std::result::Result<T, ApiError>;

fn gone() -> ApiError {
    ApiError::Gone("the town was destroyed".into())
}

impl TownContainerDO {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn backend(&self, town: &TownId) -> Backend {
        Backend::new(&self.state, &self.env, town)
    }

    fn row(&self) -> Reply<StateRow> {
        first::<StateRow>(
            &self.sql(),
            "SELECT status, token_expires_at, token_pushed_at, last_error FROM state WHERE id = 1",
            vec![],
        )?
        .ok_or_else(|| ApiError::internal("container state row missing"))
    }

    fn running(&self) -> Reply<bool> {
        Ok(self.row()?.status == ContainerState::Running)
    }

    fn set_status(&self, status: ContainerState) -> Reply<()> {
        exec(
            &self.sql(),
            "UPDATE state SET status = ? WHERE id = 1",
            vec![status.as_str().into()],
        )
    }

    /// Replaces the stored env: keys not in `env` are deleted. Values are sealed (they hold
    /// tokens and PATs), each bound to its town and key name. Sealing happens before the first
    /// write, so a failure leaves the stored env as it was.
    fn store_env(&self, town: &TownId, env: &BTreeMap<String, String>) -> Reply<()> {
        let sql = self.sql();
        let sealer = &config::get(&self.env).sealer;
        let sealed = env
            .iter()
            .map(|(key, value)| {
                sealer
                    .seal(value.as_bytes(), &env_aad(town, key), config::nonce()?)
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

    /// The stored env, opened.
    fn stored_env(&self, town: &TownId) -> Reply<BTreeMap<String, String>> {
        let sealer = &config::get(&self.env).sealer;
        rows::<EnvRow>(&self.sql(), "SELECT key, value FROM env", vec![])?
            .into_iter()
            .map(|row| {
                let plain = sealer
                    .open(&row.value, &env_aad(town, &row.key))
                    .map_err(|e| ApiError::internal(format!("env {}: {e:?}", row.key)))?;
                let value = String::from_utf8(plain)
                    .map_err(|_| ApiError::internal(format!("env {}: not UTF-8", row.key)))?;
                Ok((row.key, value))
            })
            .collect()
    }

    fn store_settings(&self, settings: &SettingsFiles) -> Reply<()> {
        let json = serde_json::to_string(settings).map_err(ApiError::internal)?;
        exec(
            &self.sql(),
            "INSERT INTO settings (id, json) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET json = excluded.json",
            vec![json.into()],
        )
    }

    fn stored_settings(&self) -> Reply<SettingsFiles> {
        #[derive(Deserialize)]
        struct Row {
            json: String,
        }
        match first::<Row>(
            &self.sql(),
            "SELECT json FROM settings WHERE id = 1",
            vec![],
        )? {
            Some(row) => serde_json::from_str(&row.json)
                .map_err(|e| ApiError::internal(format!("stored settings: {e}"))),
            None => Ok(SettingsFiles::default()),
        }
    }

    fn env_names(&self) -> Reply<Vec<String>> {
        Ok(
            rows::<EnvKey>(&self.sql(), "SELECT key FROM env ORDER BY key", vec![])?
                .into_iter()
                .map(|r| r.key)
                .collect(),
        )
    }

    /// After an await: if the town was destroyed meanwhile, stop what this call may have
    /// started and give up.
    async fn still_here(&self, backend: &Backend) -> Reply<()> {
        if self.destroyed.get() {
            backend.stop().await;
            return Err(gone());
        }
        Ok(())
    }

    fn record_error(&self, error: Option<&str>) -> Reply<()> {
        exec(
            &self.sql(),
            "UPDATE state SET last_error = ? WHERE id = 1",
            vec![error.into()],
        )
    }

    async fn send_token(
        &self,
        backend: &Backend,
        town: &TownId,
        token: String,
        expires_at: i64,
    ) -> Reply<TokenPushed> {
        let body = RefreshTokenBody {
            token,
            town_id: town.as_str().to_owned(),
        };
        let sent = backend.post(control::REFRESH_TOKEN_PATH, &body).await;
        self.still_here(backend).await?;
        match sent {
            Ok(answer) => {
                let had_env = serde_json::from_str::<RefreshTokenReply>(&answer.body)
                    .is_ok_and(|r| r.had_env);
                let restarted = answer.started || !had_env;
                if restarted {
                    // A container that (re)started since its last push has a token now, but
                    // no env: hand it the stored one.
                    let env = self.stored_env(town)?;
                    let settings = self.stored_settings()?;
                    self.send_env(backend, town, env, settings).await?;
                }
                exec(
                    &self.sql(),
                    "UPDATE state SET token_expires_at = ?, token_pushed_at = ?, last_error = NULL WHERE id = 1",
                    vec![expires_at.into(), int(config::now_ms())],
                )?;
                Ok(TokenPushed {
                    accepted: true,
                    token_expires_at: Some(expires_at),
                    restarted,
                })
            }
            Err(e) => {
                console_error!("town {town}: token push failed: {e}");
                self.record_error(Some("the container did not accept the token"))?;
                Ok(TokenPushed::REFUSED)
            }
        }
    }

    async fn send_env(
        &self,
        backend: &Backend,
        town: &TownId,
        env: BTreeMap<String, String>,
        settings: SettingsFiles,
    ) -> Reply<bool> {
        let body = SyncConfigBody {
            env,
            settings,
            town_id: town.as_str().to_owned(),
        };
        let sent = backend.post(control::SYNC_CONFIG_PATH, &body).await;
        self.still_here(backend).await?;
        match sent {
            Ok(_) => Ok(true),
            Err(e) => {
                console_error!("town {town}: env push failed: {e}");
                self.record_error(Some("the container did not accept its env"))?;
                Ok(false)
            }
        }
    }
}

impl ContainerOps for TownContainerDO {
    /// A destroyed town's container DO keeps only a tombstone, and answers 410 to everything:
    /// a start that arrives after the destroy cannot bring the container back.
    fn prepare(&self) -> Reply<()> {
        if exists(
            &self.sql(),
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tombstone'",
            vec![],
        )? {
            return Err(gone());
        }
        self.schema.ensure(&self.sql(), config::now_ms())
    }

    async fn start(&self, req: Start) -> Reply<TokenPushed> {
        let Start {
            town_id,
            token,
            expires_at,
            env,
            settings,
        } = req;
        self.store_env(&town_id, &env)?;
        self.store_settings(&settings)?;
        let backend = self.backend(&town_id);
        let healthy = backend.health().await;
        self.still_here(&backend).await?;
        if let Err(e) = healthy {
            console_error!("town {town_id}: container not healthy: {e}");
            self.record_error(Some("the container is not reachable"))?;
            return Ok(TokenPushed::REFUSED);
        }
        self.set_status(ContainerState::Running)?;
        if !self.send_env(&backend, &town_id, env, settings).await? {
            return Ok(TokenPushed::REFUSED);
        }
        self.send_token(&backend, &town_id, token, expires_at).await
    }

    async fn sync_env(&self, req: SyncEnv) -> Reply<EnvSynced> {
        let SyncEnv {
            town_id,
            env,
            settings,
        } = req;
        self.store_env(&town_id, &env)?;
        self.store_settings(&settings)?;
        let names = env.keys().cloned().collect();
        let pushed = self.running()?
            && self
                .send_env(&self.backend(&town_id), &town_id, env, settings)
                .await?;
        Ok(EnvSynced { pushed, names })
    }

    async fn push_token(&self, req: PushToken) -> Reply<TokenPushed> {
        if !self.running()? {
            return Ok(TokenPushed::REFUSED);
        }
        let backend = self.backend(&req.town_id);
        self.send_token(&backend, &req.town_id, req.token, req.expires_at)
            .await
    }

    /// Only the stored env changes: the container already holds the token (it asked for it).
    async fn keep_gateway_token(
        &self,
        KeepGatewayToken { town_id, token }: KeepGatewayToken,
    ) -> Reply<Ack> {
        let mut env = self.stored_env(&town_id)?;
        env.insert(control::GATEWAY_TOKEN_ENV.to_owned(), token);
        self.store_env(&town_id, &env)?;
        Ok(Ack::OK)
    }

    /// The town believes its container runs: its control server must answer `/health` within
    /// the deadline. A Cloudflare Container that is not running fails the check (it is not
    /// started by it); a restart that could not start it is tried again that way.
    async fn probe(
        &self,
        Probe {
            town_id,
            timeout_ms,
        }: Probe,
    ) -> Reply<Probed> {
        let backend = self.backend(&town_id);
        let answered = backend
            .probe(std::time::Duration::from_millis(timeout_ms))
            .await;
        self.still_here(&backend).await?;
        if let Err(e) = &answered {
            console_error!("town {town_id}: health check failed: {e}");
            self.record_error(Some("the container answered no health check"))?;
        }
        Ok(Probed {
            healthy: answered.is_ok(),
        })
    }

    async fn status(&self, _: Status) -> Reply<ContainerStatus> {
        let row = self.row()?;
        Ok(ContainerStatus {
            state: row.status,
            env_var_names: self.env_names()?,
            token_expires_at: row.token_expires_at.map(|t| t as i64),
            token_pushed_at: row.token_pushed_at.map(|t| rfc3339(t as u64)),
            last_error: row.last_error,
            breaker: None,
        })
    }

    /// The town was stopped: the container stops and forgets its token; the env stays stored
    /// for the next start. Idempotent.
    async fn stop(&self, Stop { town_id }: Stop) -> Reply<Ack> {
        self.set_status(ContainerState::Stopped)?;
        exec(
            &self.sql(),
            "UPDATE state SET token_expires_at = NULL WHERE id = 1",
            vec![],
        )?;
        let backend = self.backend(&town_id);
        backend.stop().await;
        self.still_here(&backend).await?;
        Ok(Ack::OK)
    }

    /// Only into a running container: the town starts it (fresh tokens and env) first.
    async fn start_agent(&self, StartAgent { town_id, agent }: StartAgent) -> Reply<AgentStarted> {
        if !self.running()? {
            return Ok(AgentStarted::TownUnknown);
        }
        let backend = self.backend(&town_id);
        let sent = backend.post_any(control::AGENTS_START_PATH, &agent).await;
        self.still_here(&backend).await?;
        Ok(match sent {
            Ok((200..=299, _)) => AgentStarted::Started,
            Ok((409, _)) => AgentStarted::TownUnknown,
            Ok((status, _)) => AgentStarted::Failed {
                error: format!("the container answered {status} to the agent start"),
            },
            Err(e) => {
                console_error!("town {town_id}: agent start failed: {e}");
                AgentStarted::Failed {
                    error: "the container could not be reached".into(),
                }
            }
        })
    }

    async fn stop_agent(&self, StopAgent { town_id, agent_id }: StopAgent) -> Reply<Ack> {
        if !self.running()? {
            return Ok(Ack::OK);
        }
        let backend = self.backend(&town_id);
        let body = control::AgentStopBody {
            town_id: town_id.as_str().to_owned(),
        };
        if let Err(e) = backend
            .post(&control::agent_stop_path(&agent_id), &body)
            .await
        {
            console_error!("town {town_id}: agent stop failed: {e}");
        }
        self.still_here(&backend).await?;
        Ok(Ack::OK)
    }

    /// Only into a running container; the control server's `{"error"}` is the reason of a 4xx.
    async fn merge(&self, Merge { town_id, body }: Merge) -> Reply<Merged> {
        if !self.running()? {
            return Ok(Merged::TownUnknown);
        }
        let backend = self.backend(&town_id);
        let sent = backend.post_any(control::MERGE_PATH, &body).await;
        self.still_here(&backend).await?;
        let said = |answer: &backend::Answer| {
            serde_json::from_str::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_default()
        };
        Ok(match sent {
            Ok((200, answer)) => match serde_json::from_str(&answer.body) {
                Ok(reply) => Merged::Done { reply },
                Err(_) => Merged::Failed {
                    error: "the container's merge answer does not parse".into(),
                },
            },
            Ok((409, _)) => Merged::TownUnknown,
            Ok((status @ 400..=499, answer)) => Merged::Refused {
                error: format!("{} ({status})", said(&answer)),
            },
            Ok((status, answer)) => Merged::Failed {
                error: format!(
                    "the container answered {status} to the merge: {}",
                    said(&answer)
                ),
            },
            Err(e) => {
                console_error!("town {town_id}: merge failed: {e}");
                Merged::Failed {
                    error: "the container could not be reached".into(),
                }
            }
        })
    }

    /// Only into a running container; 409 from the control server means no session runs.
    async fn message_agent(
        &self,
        MessageAgent {
            town_id,
            agent_id,
            text,
        }: MessageAgent,
    ) -> Reply<AgentMessaged> {
        if !self.running()? {
            return Ok(AgentMessaged::NoSession);
        }
        let backend = self.backend(&town_id);
        let body = control::AgentMessageBody {
            town_id: town_id.as_str().to_owned(),
            text,
        };
        let sent = backend
            .post_any(&control::agent_message_path(&agent_id), &body)
            .await;
        self.still_here(&backend).await?;
        Ok(match sent {
            Ok((200..=299, _)) => AgentMessaged::Delivered,
            Ok((404 | 409, _)) => AgentMessaged::NoSession,
            Ok((status, _)) => AgentMessaged::Failed {
                error: format!("the container answered {status} to the message"),
            },
            Err(e) => {
                console_error!("town {town_id}: agent message failed: {e}");
                AgentMessaged::Failed {
                    error: "the container could not be reached".into(),
                }
            }
        })
    }

    async fn destroy(&self, Destroy { town_id }: Destroy) -> Reply<Ack> {
        self.destroyed.set(true);
        self.backend(&town_id).stop().await;
        self.state
            .storage()
            .delete_all()
            .await
            .map_err(ApiError::internal)?;
        self.schema.reset();
        let sql = self.sql();
        exec(
            &sql,
            "CREATE TABLE tombstone (destroyed_at INTEGER NOT NULL)",
            vec![],
        )?;
        exec(
            &sql,
            "INSERT INTO tombstone (destroyed_at) VALUES (?)",
            vec![int(config::now_ms())],
        )?;
        Ok(Ack::OK)
    }
}

rpc_entry!(TownContainerDO, ContainerOp);

impl DurableObject for TownContainerDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            schema: Schema::new(schema::CONTAINER_DO),
            destroyed: Cell::new(false),
        }
    }

    async fn fetch(&self, _req: Request) -> Result<Response> {
        no_fetch()
    }
}

//! The protocol of `TownContainerDO`. Only the town's own `TownDO` sends these.

use super::Ack;
use crate::agent_settings::SettingsFiles;
use crate::ids::TownId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

crate::do_protocol! {
    /// Operations of a `TownContainerDO`.
    pub enum ContainerOp: ContainerOps {
        /// Stores the env, starts the container if needed and hands it env and token.
        Start(Start) -> TokenPushed => start;
        /// Replaces the persisted env (keys not sent are deleted) and pushes it to a running
        /// container.
        SyncEnv(SyncEnv) -> EnvSynced => sync_env;
        /// Pushes a fresh token to a running container.
        PushToken(PushToken) -> TokenPushed => push_token;
        /// What the dashboard may know of the container.
        Status(Status) -> ContainerStatus => status;
        /// Stops the container and wipes this DO.
        Destroy(Destroy) -> Ack => destroy;
        /// Stops the container (the town was stopped), keeping the stored env for its start.
        Stop(Stop) -> Ack => stop;
        /// Starts one agent in the running container.
        StartAgent(StartAgent) -> AgentStarted => start_agent;
        /// Stops one agent; idempotent, and a container that is not running has none.
        StopAgent(StopAgent) -> Ack => stop_agent;
        /// A further message to a running agent's session.
        MessageAgent(MessageAgent) -> AgentMessaged => message_agent;
        /// The refinery's direct merge, in the running container.
        Merge(Merge) -> Merged => merge;
        /// Asks the running container's control server for its health, within a deadline.
        Probe(Probe) -> Probed => probe;
        /// Records in the stored env the gateway token the container fetched itself, so a
        /// restarted container is handed that one, not an older one.
        KeepGatewayToken(KeepGatewayToken) -> Ack => keep_gateway_token;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepGatewayToken {
    pub town_id: TownId,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub town_id: TownId,
    /// How long to wait for the answer.
    pub timeout_ms: u64,
}

/// What a health check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probed {
    /// The control server answered 2xx within the deadline (a container this DO does not run
    /// counts as healthy: there is nothing to restart).
    pub healthy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merge {
    pub town_id: TownId,
    pub body: crate::control::MergeBody,
}

/// How a direct merge went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Merged {
    /// The control server merged (or found nothing to merge, or a conflict).
    Done { reply: crate::control::MergeReply },
    /// The container holds no token or env for the town (or does not run): start it, retry.
    TownUnknown,
    /// The control server refused the merge for good (a 4xx: a branch the remote lacks).
    Refused { error: String },
    /// Unreachable, or it failed (a 5xx); tried again later.
    Failed { error: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAgent {
    pub town_id: TownId,
    pub agent_id: String,
    pub text: String,
}

/// How a message to an agent's session went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AgentMessaged {
    Delivered,
    /// No session runs for the agent (or the container does not run): start one.
    NoSession,
    /// Unreachable, or refused; for the log.
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    pub town_id: TownId,
    pub token: String,
    pub expires_at: i64,
    pub env: BTreeMap<String, String>,
    pub settings: SettingsFiles,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEnv {
    pub town_id: TownId,
    pub env: BTreeMap<String, String>,
    pub settings: SettingsFiles,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartAgent {
    pub town_id: TownId,
    pub agent: crate::control::AgentStartBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopAgent {
    pub town_id: TownId,
    pub agent_id: String,
}

/// How an agent start went. Not an error either way: a failed start is the town's dispatch
/// failure to count, retry and, in the end, report on the bead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AgentStarted {
    Started,
    /// The container holds no token or env for the town (it restarted): start it, then retry.
    TownUnknown,
    /// Unreachable, or refused; the reason is for the bead's log (no secrets in it).
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    pub town_id: TownId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushToken {
    pub town_id: TownId,
    pub token: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroy {
    pub town_id: TownId,
}

/// Whether the container is up, as this DO last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Stopped,
    Running,
}

impl ContainerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Stopped => "stopped",
            ContainerState::Running => "running",
        }
    }
}

/// Whether the container took a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPushed {
    pub accepted: bool,
    pub token_expires_at: Option<i64>,
    /// The container had lost what it held (it was evicted or restarted, and started again)
    /// since the last push: the agents it ran are gone.
    #[serde(default)]
    pub restarted: bool,
}

impl TokenPushed {
    pub const REFUSED: TokenPushed = TokenPushed {
        accepted: false,
        token_expires_at: None,
        restarted: false,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSynced {
    /// False when the container is not running (the env waits for its start) or refused.
    pub pushed: bool,
    pub names: Vec<String>,
}

/// What the dashboard may know of a town's container: never a value or a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub state: ContainerState,
    pub env_var_names: Vec<String>,
    /// `exp` of the last token the container accepted (seconds since the epoch).
    pub token_expires_at: Option<i64>,
    pub token_pushed_at: Option<String>,
    pub last_error: Option<String>,
    /// Set by the town while its breaker holds a wedged container: why, and until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerView>,
}

/// The town's breaker, open because its container kept answering no health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerView {
    pub reason: String,
    pub open_until: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AgentId, RigId};
    use crate::protocol::pin::{all, pinned};

    #[test]
    fn every_operation_is_pinned() {
        let town = TownId::parse("t1").unwrap();
        let env: BTreeMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        let cases: Vec<(ContainerOp, &str)> = vec![
            (
                Start {
                    town_id: town.clone(),
                    token: "tok".into(),
                    expires_at: 9,
                    env: env.clone(),
                    settings: SettingsFiles::default(),
                }
                .into(),
                r#"{"op":"start","town_id":"t1","token":"tok","expires_at":9,"env":{"A":"1"},"settings":{"town":{"role_agents":{}},"rigs":{}}}"#,
            ),
            (
                SyncEnv {
                    town_id: town.clone(),
                    env,
                    settings: SettingsFiles::default(),
                }
                .into(),
                r#"{"op":"sync_env","town_id":"t1","env":{"A":"1"},"settings":{"town":{"role_agents":{}},"rigs":{}}}"#,
            ),
            (
                Stop {
                    town_id: town.clone(),
                }
                .into(),
                r#"{"op":"stop","town_id":"t1"}"#,
            ),
            (
                PushToken {
                    town_id: town,
                    token: "tok".into(),
                    expires_at: 9,
                }
                .into(),
                r#"{"op":"push_token","town_id":"t1","token":"tok","expires_at":9}"#,
            ),
            (Status {}.into(), r#"{"op":"status"}"#),
            (
                Destroy {
                    town_id: TownId::parse("t1").unwrap(),
                }
                .into(),
                r#"{"op":"destroy","town_id":"t1"}"#,
            ),
            (
                Merge {
                    town_id: TownId::parse("t1").unwrap(),
                    body: crate::control::MergeBody {
                        town_id: "t1".into(),
                        rig_id: "r1".into(),
                        git_url: "https://git.example/o/r.git".into(),
                        branch: "gastown/p/1".into(),
                        base: "main".into(),
                        message: "Merge".into(),
                        author_name: "A".into(),
                        author_email: "a@example.com".into(),
                    },
                }
                .into(),
                r#"{"op":"merge","town_id":"t1","body":{"townId":"t1","rig_id":"r1","git_url":"https://git.example/o/r.git","branch":"gastown/p/1","base":"main","message":"Merge","author_name":"A","author_email":"a@example.com"}}"#,
            ),
            (
                StopAgent {
                    town_id: TownId::parse("t1").unwrap(),
                    agent_id: "a1".into(),
                }
                .into(),
                r#"{"op":"stop_agent","town_id":"t1","agent_id":"a1"}"#,
            ),
            (
                MessageAgent {
                    town_id: TownId::parse("t1").unwrap(),
                    agent_id: "a1".into(),
                    text: "hi".into(),
                }
                .into(),
                r#"{"op":"message_agent","town_id":"t1","agent_id":"a1","text":"hi"}"#,
            ),
            (
                StartAgent {
                    town_id: TownId::parse("t1").unwrap(),
                    agent: crate::control::AgentStartBody {
                        town_id: TownId::parse("t1").unwrap(),
                        agent_id: AgentId::parse("a1").unwrap(),
                        role: crate::vocab::Role::Polecat,
                        name: "p".into(),
                        rig_id: Some(RigId::parse("r1").unwrap()),
                        bead: None,
                        git_url: None,
                        default_branch: None,
                        branch: None,
                        model: None,
                        worker_url: None,
                        organization_id: None,
                        env: BTreeMap::new(),
                    },
                }
                .into(),
                r#"{"op":"start_agent","town_id":"t1","agent":{"townId":"t1","agent_id":"a1","role":"polecat","name":"p","rig_id":"r1","bead":null,"git_url":null,"default_branch":null,"branch":null,"model":null,"worker_url":null,"env":{}}}"#,
            ),
            (
                Probe {
                    town_id: TownId::parse("t1").unwrap(),
                    timeout_ms: 5_000,
                }
                .into(),
                r#"{"op":"probe","town_id":"t1","timeout_ms":5000}"#,
            ),
            (
                KeepGatewayToken {
                    town_id: TownId::parse("t1").unwrap(),
                    token: "g".into(),
                }
                .into(),
                r#"{"op":"keep_gateway_token","town_id":"t1","token":"g"}"#,
            ),
        ];
        all(&ContainerOp::ops(), &cases);
    }

    #[test]
    fn agent_start_outcomes_are_pinned() {
        pinned(&AgentStarted::Started, r#"{"outcome":"started"}"#);
        pinned(&AgentStarted::TownUnknown, r#"{"outcome":"town_unknown"}"#);
        pinned(
            &AgentStarted::Failed {
                error: "503".into(),
            },
            r#"{"outcome":"failed","error":"503"}"#,
        );
    }

    #[test]
    fn replies_are_pinned() {
        pinned(
            &ContainerStatus {
                state: ContainerState::Running,
                env_var_names: vec!["A".into()],
                token_expires_at: Some(9),
                token_pushed_at: None,
                last_error: None,
                breaker: None,
            },
            r#"{"state":"running","env_var_names":["A"],"token_expires_at":9,"token_pushed_at":null,"last_error":null}"#,
        );
        pinned(
            &TokenPushed::REFUSED,
            r#"{"accepted":false,"token_expires_at":null,"restarted":false}"#,
        );
        pinned(&Probed { healthy: false }, r#"{"healthy":false}"#);
        pinned(
            &EnvSynced {
                pushed: true,
                names: vec!["A".into()],
            },
            r#"{"pushed":true,"names":["A"]}"#,
        );
    }
}

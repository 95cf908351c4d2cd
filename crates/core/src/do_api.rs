//! The typed requests the worker sends its Durable Objects, shared by caller and callee so each
//! operation is written once. Every call is a `POST` of one of these enums as JSON; the DO answers
//! 200 with the operation's result, or an [`crate::ApiError`] body with its status.
//!
//! DOs trust these requests: the router has already checked the caller's token and claims.

use crate::ids::{AgentId, RigId, TownId};
use crate::model::{Rig, Town};
use crate::page::Page;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The URL every worker → DO request is sent to; only the body matters.
pub const DO_URL: &str = "https://durable-object.internal/rpc";

/// Operations of an owner DO (`GastownUserDO`; the org DO speaks the same language).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OwnerRequest {
    /// → [`Town`]
    AddTown { town: Town },
    /// → `Vec<Town>`, oldest first
    ListTowns {
        #[serde(default)]
        page: Page,
    },
    /// → [`Town`], 404 when this owner has no such town
    GetTown { town_id: TownId },
    /// → [`RemovedTown`]; removes the town's rigs too
    RemoveTown { town_id: TownId },
    /// → [`Rig`]; 404 for a town this owner lacks, 409 for a rig name taken in that town
    AddRig { rig: Rig },
    /// → `Vec<Rig>`, oldest first; 404 for a town this owner lacks
    ListRigs {
        town_id: TownId,
        #[serde(default)]
        page: Page,
    },
    /// → [`Rig`]
    GetRig { rig_id: RigId },
    /// → [`Rig`] as it was
    RemoveRig { rig_id: RigId },
}

/// What removing a town took with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedTown {
    pub town: Town,
    pub rig_ids: Vec<RigId>,
}

/// Operations of a `TownDO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TownRequest {
    /// Records identity and ownership and arms the alarm. Idempotent for the same town;
    /// 409 if this DO already holds another identity. → [`Town`]
    Init { town: Town },
    /// → [`Town`]; 404 when uninitialised or destroyed
    Get,
    /// Wipes all storage and the alarm. → [`Ack`]
    Destroy,
    /// → [`Ack`]
    AddRig { rig: Rig },
    /// → [`Ack`]
    RemoveRig { rig_id: RigId },
    /// Arms the alarm if the town exists and none is pending. → [`AlarmArmed`]
    EnsureAlarm,
    /// → [`TownHealth`]
    Health,
    /// → [`crate::town_config::TownConfig`] as stored (the router masks it)
    GetConfig,
    /// Applies a PATCH body to the stored config and stores the result, or stores nothing and
    /// answers 400/422. → the new [`crate::town_config::TownConfig`]
    PatchConfig { body: String },
    /// Mints a container token and pushes token and env to the container, starting it.
    /// → [`TokenPushed`]; 502 when the container does not accept.
    StartContainer,
    /// Mints and pushes a fresh container token now, ignoring the hourly throttle (owner's
    /// request from the dashboard). → [`TokenPushed`]; 502 when the container does not accept.
    ForceTokenRefresh,
    /// Mints a fresh container token for a container that holds a valid one. → [`IssuedToken`]
    IssueContainerToken,
    /// An agent reports in. 404 for a rig the town does not have. → [`Ack`]
    Heartbeat { rig_id: RigId, agent_id: AgentId },
    /// The town's rigs, for the mayor's tools. → `Vec<Rig>`
    MayorRigs,
    /// Test hook: deletes the pending alarm, leaving the town otherwise intact. → [`Ack`]
    DropAlarm,
}

/// Operations of a `TownContainerDO`. Only the town's `TownDO` sends them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ContainerRequest {
    /// Starts the container (if it is not running) and hands it env and token. → [`TokenPushed`]
    Start {
        town_id: TownId,
        token: String,
        expires_at: i64,
        env: BTreeMap<String, String>,
    },
    /// Replaces the persisted env (keys not sent are deleted) and pushes it to a running
    /// container. → [`EnvSynced`]
    SyncEnv {
        town_id: TownId,
        env: BTreeMap<String, String>,
    },
    /// Pushes a fresh token to a running container. → [`TokenPushed`]
    PushToken {
        town_id: TownId,
        token: String,
        expires_at: i64,
    },
    /// → [`ContainerStatus`]
    Status,
    /// Stops the container and wipes this DO. → [`Ack`]
    Destroy,
}

/// Whether the container took a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPushed {
    pub accepted: bool,
    pub token_expires_at: Option<i64>,
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
    /// `stopped` or `running`.
    pub state: String,
    pub env_var_names: Vec<String>,
    /// `exp` of the last token the container accepted (seconds since the epoch).
    pub token_expires_at: Option<i64>,
    pub token_pushed_at: Option<String>,
    pub last_error: Option<String>,
}

/// A token for its rightful caller (the container itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Ack {
    pub ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmArmed {
    /// True when this call had to set a missing alarm.
    pub rearmed: bool,
}

/// Operator view of a town's main loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TownHealth {
    pub town_id: TownId,
    pub status: String,
    pub rig_count: u32,
    /// Next alarm, ms since the epoch.
    pub alarm_at: Option<u64>,
    pub alarm_runs: u64,
    /// Times an owner's watchdog found the alarm missing and set it again.
    pub watchdog_rearms: u64,
    /// When the container last accepted a refreshed token (the hourly throttle).
    #[serde(default)]
    pub token_refreshed_at: Option<String>,
    /// Token pushes the container accepted / refused, from the alarm and from the dashboard.
    #[serde(default)]
    pub token_refreshes: u64,
    #[serde(default)]
    pub token_refresh_failures: u64,
    pub last_alarm_at: Option<String>,
}

/// The container token is refreshed at most once per `throttle_ms`, counted from the last time
/// the container *accepted* one; a town that never had one accepted is due at once.
pub fn token_refresh_due(last_accepted_ms: Option<u64>, now_ms: u64, throttle_ms: u64) -> bool {
    last_accepted_ms.is_none_or(|last| now_ms.saturating_sub(last) >= throttle_ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn refresh_throttle() {
        use super::token_refresh_due as due;
        assert!(due(None, 0, 3_600_000));
        assert!(!due(Some(1_000), 1_000 + 3_599_999, 3_600_000));
        assert!(due(Some(1_000), 1_000 + 3_600_000, 3_600_000));
        assert!(
            !due(Some(5_000), 1_000, 3_600_000),
            "a clock that went back does not refresh early"
        );
    }

    use super::*;

    #[test]
    fn wire_format_is_pinned() {
        let req = TownRequest::RemoveRig {
            rig_id: RigId::parse("r1").unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"op":"remove_rig","rig_id":"r1"}"#
        );
        assert_eq!(
            serde_json::to_string(&OwnerRequest::ListTowns {
                page: Page::default()
            })
            .unwrap(),
            r#"{"op":"list_towns","page":{"limit":500,"after":null}}"#
        );
        let old: OwnerRequest = serde_json::from_str(r#"{"op":"list_towns"}"#).unwrap();
        assert_eq!(
            old,
            OwnerRequest::ListTowns {
                page: Page::default()
            }
        );
        assert_eq!(
            serde_json::to_string(&TownRequest::Get).unwrap(),
            r#"{"op":"get"}"#
        );
        let back: OwnerRequest =
            serde_json::from_str(r#"{"op":"get_town","town_id":"t1"}"#).unwrap();
        assert_eq!(
            back,
            OwnerRequest::GetTown {
                town_id: TownId::parse("t1").unwrap()
            }
        );
    }
}

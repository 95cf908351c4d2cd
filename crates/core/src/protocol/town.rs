//! The protocol of `TownDO`: a town's identity, config, rigs registry, agents and main loop.

use super::container::{self, TokenPushed};
use super::{Ack, Json};
use crate::authz::{ContainerCredential, TownCaller};
use crate::beads::{
    Bead, BeadDetail, BeadFilter, BeadPatch, ConvoyDetail, ConvoySummary, NewBead, SlingBatch,
};
use crate::control::{AgentDoneCallback, AgentExitCallback, AgentStatusCallback};
use crate::events::{EventBatch, EventPage, EventsStored};
use crate::ids::{AgentId, BeadId, RigId, TownId, UserId};
use crate::mayor::{MayorMessage, MayorStatus, MayorView, Transcript};
use crate::model::{Agent, Rig, Town, TownStatus};
use crate::page::Page;
use crate::page::SeqPage;
use crate::town_config::{ConfigPatch, ConfigView};
use crate::vocab::Role;
use serde::{Deserialize, Serialize};

crate::do_protocol! {
    /// Operations of a `TownDO`.
    pub enum TownOp: TownOps {
        /// Records identity and ownership and arms the alarm. Idempotent for the same town;
        /// 409 if this DO already holds another identity.
        Init(Init) -> Town => init;
        /// 404 when uninitialised or destroyed, 403 for a caller the town does not admit.
        Get(Get) -> Town => get;
        /// A page of the town's rigs, oldest first (the town's own registry).
        ListRigs(ListRigs) -> Json<Vec<Rig>> => list_rigs;
        /// The town's container as its DO last saw it: state, env var names, token expiry.
        ContainerStatus(ContainerStatus) -> container::ContainerStatus => container_status;
        /// Destroys the town's container, then wipes all storage and the alarm.
        Destroy(Destroy) -> Ack => destroy;
        /// Registers a rig of this town.
        AddRig(AddRig) -> Ack => add_rig;
        /// Forgets a rig and its config override.
        RemoveRig(RemoveRig) -> Ack => remove_rig;
        /// Arms the alarm if the town exists and none is pending.
        EnsureAlarm(EnsureAlarm) -> AlarmArmed => ensure_alarm;
        /// The main loop's state, for operators.
        Health(Health) -> TownHealth => health;
        /// The config as the API shows it: secrets masked.
        GetConfig(GetConfig) -> Json<ConfigView> => get_config;
        /// For those who manage the town: applies a validated patch and stores the result, or
        /// stores nothing and answers 4xx; then hands the derived env to the container.
        PatchConfig(PatchConfig) -> Json<ConfigView> => patch_config;
        /// Mints a container token and hands token and env to the container, starting it;
        /// answers the container's status; 502 when the container does not accept.
        StartContainer(StartContainer) -> container::ContainerStatus => start_container;
        /// Rotates: advances the token generation (older tokens are refused after a short
        /// grace), then mints and pushes a fresh container token now, ignoring the throttle;
        /// 409 while the container is not running, 502 when it does not accept.
        ForceTokenRefresh(ForceTokenRefresh) -> TokenPushed => force_token_refresh;
        /// A fresh container token for a running container that holds a valid one; 409 while
        /// the container is not running, 401 for a revoked credential.
        IssueContainerToken(IssueContainerToken) -> IssuedToken => issue_container_token;
        /// An agent the town knows reports in; 404 for an agent or rig the town does not have,
        /// or a rig-bound agent reporting from another rig.
        Heartbeat(Heartbeat) -> Ack => heartbeat;
        /// For those who manage the town: stops it (container stopped, token generation
        /// advanced, alarm deleted, running work handed back); tells the owner's DO. Idempotent.
        StopTown(StopTown) -> Town => stop_town;
        /// For those who manage the town: resumes it (fresh gateway and container tokens are
        /// pushed to a newly started container before the alarm is armed again); tells the
        /// owner's DO. Idempotent.
        StartTown(StartTown) -> TownStarted => start_town;
        /// The owner's DO, after `user_id`'s account was deleted: a town acting as that user
        /// stops as `StopTown` does, acts as no one and shows `creator_deleted`; any other
        /// town is answered unchanged.
        ForgetUser(ForgetUser) -> Town => forget_user;
        /// The owner's DO, for an org owner's claim: a `creator_deleted` town acts as
        /// `user_id` from now on and is `stopped`; 409 for any other town.
        Claim(Claim) -> Town => claim;
        /// A fresh gateway (sandbox) token for the container (`credential` set, checked against
        /// the token generation) or an internal service (`None`); 409 `town_stopped` for a
        /// stopped town.
        IssueSandboxToken(IssueSandboxToken) -> IssuedToken => issue_sandbox_token;
        /// The town's agents.
        ListAgents(ListAgents) -> Json<Vec<Agent>> => list_agents;
        /// The town's one mayor, created on first call (409 past the agent quota).
        EnsureMayor(EnsureMayor) -> Agent => ensure_mayor;
        /// Test hook (the `test-hooks` feature, as its route): records a polecat or refinery
        /// of a rig, optionally working.
        #[cfg(feature = "test-hooks")]
        RegisterAgent(RegisterAgent) -> Agent => register_agent;
        /// What a git token for one rig is made from: the rig (its repository and
        /// integration), the town (its owner), and the town's own token for the repository's
        /// host, if any. `credential` is the container's (checked against the generation);
        /// `None` for the internal key. With `agent_id`, the user the agent's work runs as
        /// (its bead's creator; the town's user when it has none) and the identity its
        /// session last committed as.
        RigCredentials(RigCredentials) -> RigCredentialsReply => rig_credentials;
        /// The git identity an agent's session now commits as, when it is not the one last
        /// recorded: recorded, and written to its bead's events with `message`.
        NoteGitIdentity(NoteGitIdentity) -> Ack => note_git_identity;
        /// Test hook (the `test-hooks` feature, as its route): deletes the pending alarm,
        /// leaving the town otherwise intact.
        #[cfg(feature = "test-hooks")]
        DropAlarm(DropAlarm) -> Ack => drop_alarm;
        /// A page of the town's beads, oldest first, filtered.
        ListBeads(ListBeads) -> Json<Vec<Bead>> => list_beads;
        /// Records a bead; an issue is dispatched by the next tick, which comes at once.
        CreateBead(CreateBead) -> Bead => create_bead;
        /// A bead with its event log.
        GetBead(GetBead) -> Json<BeadDetail> => get_bead;
        /// Slings a batch: a convoy bead and its issues, each waiting for the beads it
        /// depends on; the convoy with its beads.
        SlingBatch(SlingBatchOp) -> ConvoyDetail => sling_batch;
        /// The town's convoys, newest first, with their progress.
        ListConvoys(ListConvoys) -> Vec<ConvoySummary> => list_convoys;
        /// A convoy with its beads and their dependencies.
        GetConvoy(GetConvoy) -> ConvoyDetail => get_convoy;
        /// A user's change: fields, close, reopen (a reopened bead's attempts start again).
        PatchBead(PatchBead) -> Bead => patch_bead;
        /// Deletes a bead and its events; its agent, if any, is stopped and freed.
        DeleteBead(DeleteBead) -> Ack => delete_bead;
        /// An agent's status message, recorded on its bead.
        AgentStatus(AgentStatus) -> Ack => agent_status;
        /// An agent finished its bead: closed (or in review with a PR), the agent freed.
        AgentDone(AgentDone) -> Bead => agent_done;
        /// The container saw an agent's process end: if it still held a bead in progress, the
        /// bead reopens (or fails, per the attempt cap) with the exit as its reason, at once
        /// rather than at patrol's stall time; an agent with no work is only freed.
        AgentExited(AgentExited) -> Ack => agent_exited;
        /// A user's message to the mayor: recorded in the transcript, then given to the
        /// mayor's session (started, or resumed from the transcript, if none runs).
        MayorSay(MayorSay) -> MayorMessage => mayor_say;
        /// The mayor's status as the dashboard shows it.
        MayorView(MayorViewOp) -> MayorView => mayor_view;
        /// A page of the transcript, oldest first.
        MayorTranscript(MayorTranscript) -> Transcript => mayor_transcript;
        /// One of the mayor's tools: only with the key of the town's current mayor session.
        MayorTool(MayorToolOp) -> Json<serde_json::Value> => mayor_tool;
        /// A batch of an agent's events from the container; a batch sent again is stored once.
        AgentEvents(AgentEventsOp) -> EventsStored => agent_events;
        /// A page of an agent's events, oldest first.
        ListAgentEvents(ListAgentEvents) -> EventPage => list_agent_events;
        /// Whether the caller may watch one of the town's streams now: the town is active, and
        /// an agent's stream names one of its agents. The router then signs the ticket.
        AdmitStream(AdmitStream) -> Ack => admit_stream;
        /// A provider's webhook named the pull request the merge request bead `bead_id`
        /// follows: the town reads it now (a stopped town at its next start) and answers where
        /// it stands. Never taken at the webhook's word.
        RefinePullRequest(RefinePullRequest) -> PullRequestRefined => refine_pull_request;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefinePullRequest {
    pub bead_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestRefined {
    /// `None`: the town follows no such pull request (the bead is gone).
    pub state: Option<crate::refinery::PrState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEventsOp {
    pub credential: ContainerCredential,
    pub rig_id: RigId,
    pub agent_id: AgentId,
    pub batch: EventBatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitStream {
    pub caller: TownCaller,
    /// `crate::stream::StreamScope::as_string`.
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAgentEvents {
    pub caller: TownCaller,
    pub agent_id: AgentId,
    pub page: SeqPage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MayorSay {
    /// Also who sent the message: the work the mayor makes of it runs as them.
    pub caller: TownCaller,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MayorViewOp {
    pub caller: TownCaller,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MayorTranscript {
    pub caller: TownCaller,
    pub page: SeqPage,
}

/// A mayor tool's call: the container's credential, the session key it presented, and what
/// it asks.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MayorToolOp {
    pub credential: ContainerCredential,
    pub key: String,
    pub tool: MayorTool,
}

impl std::fmt::Debug for MayorToolOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MayorToolOp")
            .field("credential", &self.credential)
            .field("key", &"****")
            .field("tool", &self.tool)
            .finish()
    }
}

/// The mayor's tools (`gt`), each a route under `/api/mayor/:townId/tools/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tool", rename_all = "snake_case")]
pub enum MayorTool {
    /// Nothing but the checks (token, session key): a bad request's caller hears first what
    /// the town says of them, as town routes answer.
    Admit,
    Rigs,
    ListBeads {
        filter: BeadFilter,
        page: Page,
    },
    GetBead {
        bead_id: BeadId,
    },
    CreateBead {
        bead: NewBead,
    },
    PatchBead {
        bead_id: BeadId,
        patch: BeadPatch,
    },
    SlingBatch {
        batch: SlingBatch,
    },
    ListAgents,
    /// A stuck agent: its process stopped, its bead handed back.
    ResetAgent {
        agent_id: AgentId,
    },
    /// An escalation seen to: closed, with the mayor's acknowledgement in its log.
    AckEscalation {
        bead_id: BeadId,
    },
    /// A message to the user's transcript.
    Reply {
        text: String,
    },
    /// The mayor's runtime says what its session does (and shows it lives).
    State {
        status: MayorStatus,
    },
    /// The mayor's own events, kept as any agent's.
    Events {
        batch: EventBatch,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    pub town: Town,
}

/// Every operation of a town route carries its caller: the town decides access from its own
/// record, in the same call (`authz::TownCaller::role_in`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    pub caller: TownCaller,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRigs {
    pub caller: TownCaller,
    pub page: Page,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub caller: TownCaller,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroy {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRig {
    pub rig: Rig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveRig {
    pub rig_id: RigId,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsureAlarm {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetConfig {
    pub caller: TownCaller,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchConfig {
    pub caller: TownCaller,
    pub patch: ConfigPatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartContainer {
    pub caller: TownCaller,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceTokenRefresh {
    pub caller: TownCaller,
}

/// Container routes carry the caller's credential, which the town checks against its current
/// token generation before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueContainerToken {
    pub credential: ContainerCredential,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub credential: ContainerCredential,
    pub rig_id: RigId,
    pub agent_id: AgentId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopTown {
    pub caller: TownCaller,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetUser {
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartTown {
    pub caller: TownCaller,
}

/// The started town, and whether its container took the fresh tokens (if not, the alarm and
/// the next start retry; the town is active either way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TownStarted {
    pub town: Town,
    pub container_started: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueSandboxToken {
    /// The container's credential; `None` for the internal API key.
    pub credential: Option<ContainerCredential>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAgents {
    pub caller: TownCaller,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsureMayor {
    pub caller: TownCaller,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAgent {
    pub role: Role,
    pub rig_id: RigId,
    pub name: String,
    /// Recorded as working (with no bead): the town has work while it heartbeats.
    #[serde(default)]
    pub working: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListBeads {
    pub caller: TownCaller,
    pub filter: BeadFilter,
    pub page: Page,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateBead {
    /// Also who created the bead.
    pub caller: TownCaller,
    pub bead: NewBead,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlingBatchOp {
    /// Also who slung the batch.
    pub caller: TownCaller,
    pub batch: SlingBatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListConvoys {
    pub caller: TownCaller,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetConvoy {
    pub caller: TownCaller,
    pub convoy_id: BeadId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetBead {
    pub caller: TownCaller,
    pub bead_id: BeadId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchBead {
    /// Also who made the change.
    pub caller: TownCaller,
    pub bead_id: BeadId,
    pub patch: BeadPatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteBead {
    pub caller: TownCaller,
    pub bead_id: BeadId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub credential: ContainerCredential,
    pub rig_id: RigId,
    pub agent_id: AgentId,
    pub status: AgentStatusCallback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDone {
    pub credential: ContainerCredential,
    pub rig_id: RigId,
    pub agent_id: AgentId,
    pub done: AgentDoneCallback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentExited {
    pub credential: ContainerCredential,
    pub rig_id: RigId,
    pub agent_id: AgentId,
    pub exit: AgentExitCallback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RigCredentials {
    pub credential: Option<ContainerCredential>,
    pub rig_id: RigId,
    /// The agent whose git asks (the container's credential helper names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteGitIdentity {
    pub agent_id: AgentId,
    /// `user:<email>` or `bot:<reason>`.
    pub identity: String,
    pub message: String,
}

/// Internal only (worker ↔ TownDO): `town_token` is a secret and never leaves the worker.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RigCredentialsReply {
    pub town: Town,
    pub rig: Rig,
    pub town_token: Option<String>,
    /// The town's `commit_as_user`.
    #[serde(default)]
    pub commit_as_user: bool,
    /// The user git tokens are minted for: the creator of the asking agent's bead, else the
    /// town's user.
    pub as_user: String,
    /// For an asking agent: the identity its session last committed as (`None`: not yet).
    #[serde(default)]
    pub session_identity: Option<String>,
}

impl std::fmt::Debug for RigCredentialsReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RigCredentialsReply")
            .field("town", &self.town.id)
            .field("rig", &self.rig.id)
            .field("town_token", &self.town_token.as_ref().map(|_| "****"))
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropAlarm {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmArmed {
    /// True when this call had to set a missing alarm.
    pub rearmed: bool,
}

/// A token for its rightful caller (the container itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: i64,
}

/// Operator view of a town's main loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TownHealth {
    pub town_id: TownId,
    pub status: TownStatus,
    pub rig_count: u32,
    /// Next alarm, ms since the epoch.
    pub alarm_at: Option<u64>,
    pub alarm_runs: u64,
    /// Times an owner's watchdog found the alarm missing and set it again.
    pub watchdog_rearms: u64,
    /// When the container last accepted a refreshed token (the throttle).
    #[serde(default)]
    pub token_refreshed_at: Option<String>,
    /// Token pushes the container accepted / refused, from the alarm and from the dashboard.
    #[serde(default)]
    pub token_refreshes: u64,
    #[serde(default)]
    pub token_refresh_failures: u64,
    pub last_alarm_at: Option<String>,
    /// `exp` of the gateway token the container last accepted (seconds).
    #[serde(default)]
    pub gateway_token_expires_at: Option<i64>,
    /// Gateway tokens the alarm pushed and the container accepted / refused.
    #[serde(default)]
    pub gateway_refreshes: u64,
    #[serde(default)]
    pub gateway_refresh_failures: u64,
    /// The town has work now (else the alarm runs at the idle cadence and pushes nothing).
    #[serde(default)]
    pub busy: bool,
    /// Agents started in the container / starts that failed.
    #[serde(default)]
    pub dispatches: u64,
    #[serde(default)]
    pub dispatch_failures: u64,
    /// Failed dispatches in a row, and until when the breaker holds dispatch (ms).
    #[serde(default)]
    pub breaker_failures: u64,
    #[serde(default)]
    pub breaker_open_until: Option<u64>,
    /// Agents patrol found without a heartbeat.
    #[serde(default)]
    pub stalls: u64,
    /// Containers stopped for idleness.
    #[serde(default)]
    pub idle_stops: u64,
    /// Agents an eviction drain stopped (their beads resumed on their branches), agents handed
    /// back because their container was evicted or restarted, and restarts of a wedged
    /// container.
    #[serde(default)]
    pub drains: u64,
    #[serde(default)]
    pub eviction_resets: u64,
    #[serde(default)]
    pub wedge_restarts: u64,
    /// Why the town's breaker holds dispatch, while a wedged container keeps it open.
    #[serde(default)]
    pub breaker_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{rig, town};
    use crate::protocol::pin::{all, pinned};

    #[test]
    fn every_operation_is_pinned() {
        let t = town("t1", "u1");
        let r = rig("r1", "t1");
        let town_json = serde_json::to_string(&t).unwrap();
        let rig_json = serde_json::to_string(&r).unwrap();
        let patch = ConfigPatch::parse(br#"{"default_model":"m1"}"#).unwrap();
        let patch_json = serde_json::to_string(&patch).unwrap();
        let caller = TownCaller {
            user_id: crate::ids::UserId::parse("u1").unwrap(),
            orgs: vec![(
                crate::ids::OrgId::parse("o1").unwrap(),
                crate::auth::OrgRole::Member,
            )],
        };
        let c = || caller.clone();
        const C: &str = r#"{"user_id":"u1","orgs":[["o1","member"]]}"#;
        #[allow(unused_mut)]
        let mut cases: Vec<(TownOp, String)> = vec![
            (
                Init { town: t.clone() }.into(),
                format!(r#"{{"op":"init","town":{town_json}}}"#),
            ),
            (
                ForgetUser {
                    user_id: UserId::parse("u1").unwrap(),
                }
                .into(),
                r#"{"op":"forget_user","user_id":"u1"}"#.into(),
            ),
            (
                Claim {
                    user_id: UserId::parse("u2").unwrap(),
                }
                .into(),
                r#"{"op":"claim","user_id":"u2"}"#.into(),
            ),
            (Get { caller: c() }.into(), format!(r#"{{"op":"get","caller":{C}}}"#)),
            (
                ListRigs {
                    caller: c(),
                    page: Page::default(),
                }
                .into(),
                format!(r#"{{"op":"list_rigs","caller":{C},"page":{{"limit":500,"after":null}}}}"#),
            ),
            (
                ContainerStatus { caller: c() }.into(),
                format!(r#"{{"op":"container_status","caller":{C}}}"#),
            ),
            (Destroy {}.into(), r#"{"op":"destroy"}"#.into()),
            (
                AddRig { rig: r.clone() }.into(),
                format!(r#"{{"op":"add_rig","rig":{rig_json}}}"#),
            ),
            (
                RemoveRig {
                    rig_id: r.id.clone(),
                }
                .into(),
                r#"{"op":"remove_rig","rig_id":"r1"}"#.into(),
            ),
            (EnsureAlarm {}.into(), r#"{"op":"ensure_alarm"}"#.into()),
            (Health {}.into(), r#"{"op":"health"}"#.into()),
            (
                GetConfig { caller: c() }.into(),
                format!(r#"{{"op":"get_config","caller":{C}}}"#),
            ),
            (
                PatchConfig {
                    caller: c(),
                    patch,
                }
                .into(),
                format!(r#"{{"op":"patch_config","caller":{C},"patch":{patch_json}}}"#),
            ),
            (
                StartContainer { caller: c() }.into(),
                format!(r#"{{"op":"start_container","caller":{C}}}"#),
            ),
            (
                ForceTokenRefresh { caller: c() }.into(),
                format!(r#"{{"op":"force_token_refresh","caller":{C}}}"#),
            ),
            (
                IssueContainerToken {
                    credential: ContainerCredential::Container {
                        generation: Some(2),
                    },
                }
                .into(),
                r#"{"op":"issue_container_token","credential":{"kind":"container","generation":2}}"#
                    .into(),
            ),
            (
                Heartbeat {
                    credential: ContainerCredential::Agent { issued_at: 7 },
                    rig_id: r.id.clone(),
                    agent_id: AgentId::parse("a1").unwrap(),
                }
                .into(),
                r#"{"op":"heartbeat","credential":{"kind":"agent","issued_at":7},"rig_id":"r1","agent_id":"a1"}"#.into(),
            ),
            (
                MayorToolOp {
                    credential: ContainerCredential::Container { generation: None },
                    key: "k".into(),
                    tool: MayorTool::Rigs,
                }
                .into(),
                r#"{"op":"mayor_tool","credential":{"kind":"container","generation":null},"key":"k","tool":{"tool":"rigs"}}"#.into(),
            ),
            (
                AgentEventsOp {
                    credential: ContainerCredential::Container { generation: Some(1) },
                    rig_id: r.id.clone(),
                    agent_id: AgentId::parse("a1").unwrap(),
                    batch: EventBatch {
                        run: 2,
                        events: vec![crate::events::NewEvent {
                            seq: 1,
                            at_ms: 5,
                            kind: "output".into(),
                            text: "hi".into(),
                            truncated: false,
                        }],
                    },
                }
                .into(),
                r#"{"op":"agent_events","credential":{"kind":"container","generation":1},"rig_id":"r1","agent_id":"a1","batch":{"run":2,"events":[{"seq":1,"at_ms":5,"kind":"output","text":"hi","truncated":false}]}}"#.into(),
            ),
            (
                ListAgentEvents {
                    caller: c(),
                    agent_id: AgentId::parse("a1").unwrap(),
                    page: SeqPage { after: 0, limit: 5 },
                }
                .into(),
                format!(r#"{{"op":"list_agent_events","caller":{C},"agent_id":"a1","page":{{"after":0,"limit":5}}}}"#),
            ),
            (
                AdmitStream {
                    caller: c(),
                    scope: "agent:a1".into(),
                }
                .into(),
                format!(r#"{{"op":"admit_stream","caller":{C},"scope":"agent:a1"}}"#),
            ),
            (
                RefinePullRequest {
                    bead_id: "b1".into(),
                }
                .into(),
                r#"{"op":"refine_pull_request","bead_id":"b1"}"#.into(),
            ),
            (
                MayorViewOp { caller: c() }.into(),
                format!(r#"{{"op":"mayor_view","caller":{C}}}"#),
            ),
            (
                MayorTranscript {
                    caller: c(),
                    page: SeqPage { after: 3, limit: 10 },
                }
                .into(),
                format!(r#"{{"op":"mayor_transcript","caller":{C},"page":{{"after":3,"limit":10}}}}"#),
            ),
            (
                MayorSay {
                    caller: c(),
                    text: "hello".into(),
                }
                .into(),
                format!(r#"{{"op":"mayor_say","caller":{C},"text":"hello"}}"#),
            ),
            (
                StopTown { caller: c() }.into(),
                format!(r#"{{"op":"stop_town","caller":{C}}}"#),
            ),
            (
                StartTown { caller: c() }.into(),
                format!(r#"{{"op":"start_town","caller":{C}}}"#),
            ),
            (
                IssueSandboxToken { credential: None }.into(),
                r#"{"op":"issue_sandbox_token","credential":null}"#.into(),
            ),
            (
                ListAgents { caller: c() }.into(),
                format!(r#"{{"op":"list_agents","caller":{C}}}"#),
            ),
            (
                RigCredentials {
                    credential: None,
                    rig_id: r.id.clone(),
                    agent_id: None,
                }
                .into(),
                r#"{"op":"rig_credentials","credential":null,"rig_id":"r1"}"#.into(),
            ),
            (
                NoteGitIdentity {
                    agent_id: AgentId::parse("a1").unwrap(),
                    identity: "bot:revoked".into(),
                    message: "m".into(),
                }
                .into(),
                r#"{"op":"note_git_identity","agent_id":"a1","identity":"bot:revoked","message":"m"}"#
                    .into(),
            ),
            (
                EnsureMayor { caller: c() }.into(),
                format!(r#"{{"op":"ensure_mayor","caller":{C}}}"#),
            ),
            (
                ListBeads {
                    caller: c(),
                    filter: BeadFilter::default(),
                    page: Page::default(),
                }
                .into(),
                format!(r#"{{"op":"list_beads","caller":{C},"filter":{{"status":null,"rig_id":null,"bead_type":null}},"page":{{"limit":500,"after":null}}}}"#),
            ),
            (
                CreateBead {
                    caller: c(),
                    bead: NewBead::parse_sling(br#"{"rig_id":"r1","title":"t"}"#).unwrap(),
                }
                .into(),
                format!(r#"{{"op":"create_bead","caller":{C},"bead":{{"bead_type":"issue","title":"t","body":"","rig_id":"r1","priority":2,"labels":[],"metadata":"{{}}"}}}}"#),
            ),
            (
                GetBead {
                    caller: c(),
                    bead_id: BeadId::parse("b1").unwrap(),
                }
                .into(),
                format!(r#"{{"op":"get_bead","caller":{C},"bead_id":"b1"}}"#),
            ),
            (
                SlingBatchOp {
                    caller: c(),
                    batch: SlingBatch::parse(
                        br#"{"title":"c","beads":[{"rig_id":"r1","title":"a"},{"rig_id":"r1","title":"b","depends_on":[0]}]}"#,
                    )
                    .unwrap(),
                }
                .into(),
                format!(r#"{{"op":"sling_batch","caller":{C},"batch":{{"title":"c","beads":[{{"bead":{{"bead_type":"issue","title":"a","body":"","rig_id":"r1","priority":2,"labels":[],"metadata":"{{}}"}},"depends_on":[]}},{{"bead":{{"bead_type":"issue","title":"b","body":"","rig_id":"r1","priority":2,"labels":[],"metadata":"{{}}"}},"depends_on":[0]}}]}}}}"#),
            ),
            (
                ListConvoys { caller: c() }.into(),
                format!(r#"{{"op":"list_convoys","caller":{C}}}"#),
            ),
            (
                GetConvoy {
                    caller: c(),
                    convoy_id: BeadId::parse("c1").unwrap(),
                }
                .into(),
                format!(r#"{{"op":"get_convoy","caller":{C},"convoy_id":"c1"}}"#),
            ),
            (
                PatchBead {
                    caller: c(),
                    bead_id: BeadId::parse("b1").unwrap(),
                    patch: BeadPatch::parse(br#"{"status":"open"}"#).unwrap(),
                }
                .into(),
                format!(r#"{{"op":"patch_bead","caller":{C},"bead_id":"b1","patch":{{"title":null,"body":null,"priority":null,"labels":null,"status":"open"}}}}"#),
            ),
            (
                DeleteBead {
                    caller: c(),
                    bead_id: BeadId::parse("b1").unwrap(),
                }
                .into(),
                format!(r#"{{"op":"delete_bead","caller":{C},"bead_id":"b1"}}"#),
            ),
            (
                AgentStatus {
                    credential: ContainerCredential::Container { generation: Some(1) },
                    rig_id: r.id.clone(),
                    agent_id: AgentId::parse("a1").unwrap(),
                    status: AgentStatusCallback { message: "m".into() },
                }
                .into(),
                r#"{"op":"agent_status","credential":{"kind":"container","generation":1},"rig_id":"r1","agent_id":"a1","status":{"message":"m"}}"#.into(),
            ),
            (
                AgentDone {
                    credential: ContainerCredential::Container { generation: Some(1) },
                    rig_id: r.id.clone(),
                    agent_id: AgentId::parse("a1").unwrap(),
                    done: AgentDoneCallback { summary: "s".into(), branch: Some("b".into()), pr_url: None },
                }
                .into(),
                r#"{"op":"agent_done","credential":{"kind":"container","generation":1},"rig_id":"r1","agent_id":"a1","done":{"summary":"s","branch":"b","pr_url":null}}"#.into(),
            ),
            (
                AgentExited {
                    credential: ContainerCredential::Container { generation: Some(1) },
                    rig_id: r.id.clone(),
                    agent_id: AgentId::parse("a1").unwrap(),
                    exit: AgentExitCallback { exit_code: Some(3), output_tail: "boom".into(), drained: None },
                }
                .into(),
                r#"{"op":"agent_exited","credential":{"kind":"container","generation":1},"rig_id":"r1","agent_id":"a1","exit":{"exit_code":3,"output_tail":"boom"}}"#.into(),
            ),
        ];
        #[cfg(feature = "test-hooks")]
        cases.extend([
            (
                    RegisterAgent {
                        role: Role::Polecat,
                        rig_id: r.id.clone(),
                        name: "p1".into(),
                        working: false,
                    }
                    .into(),
                    r#"{"op":"register_agent","role":"polecat","rig_id":"r1","name":"p1","working":false}"#.into(),
                ),
            (DropAlarm {}.into(), r#"{"op":"drop_alarm"}"#.into()),
        ]);
        all(&TownOp::ops(), &cases);
    }

    #[test]
    fn replies_are_pinned() {
        pinned(&AlarmArmed { rearmed: true }, r#"{"rearmed":true}"#);
        pinned(
            &IssuedToken {
                token: "x.y.z".into(),
                expires_at: 1_700_000_000,
            },
            r#"{"token":"x.y.z","expires_at":1700000000}"#,
        );
        pinned(
            &TownHealth {
                town_id: TownId::parse("t1").unwrap(),
                status: TownStatus::Active,
                rig_count: 2,
                alarm_at: Some(5),
                alarm_runs: 3,
                watchdog_rearms: 1,
                token_refreshed_at: None,
                token_refreshes: 4,
                token_refresh_failures: 0,
                last_alarm_at: Some("2026-11-23T00:00:00.000Z".into()),
                gateway_token_expires_at: Some(9),
                gateway_refreshes: 1,
                gateway_refresh_failures: 2,
                busy: true,
                dispatches: 3,
                dispatch_failures: 1,
                breaker_failures: 0,
                breaker_open_until: None,
                stalls: 0,
                idle_stops: 1,
                drains: 0,
                eviction_resets: 0,
                wedge_restarts: 0,
                breaker_reason: None,
            },
            r#"{"town_id":"t1","status":"active","rig_count":2,"alarm_at":5,"alarm_runs":3,"watchdog_rearms":1,"token_refreshed_at":null,"token_refreshes":4,"token_refresh_failures":0,"last_alarm_at":"2026-11-23T00:00:00.000Z","gateway_token_expires_at":9,"gateway_refreshes":1,"gateway_refresh_failures":2,"busy":true,"dispatches":3,"dispatch_failures":1,"breaker_failures":0,"breaker_open_until":null,"stalls":0,"idle_stops":1,"drains":0,"eviction_resets":0,"wedge_restarts":0,"breaker_reason":null}"#,
        );
        pinned(&Ack::OK, r#"{"ok":true}"#);
    }
}

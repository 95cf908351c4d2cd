//! The route table: every public path, its method, and the one principal kind it accepts.
//!
//! The router matches a request here first; only then does it verify the credential the route's
//! [`Principal`] names, and only after that does it touch a Durable Object. The table is also the
//! source for the published route list, so a route cannot exist without its principal.
//!
//! A [`Route`] is grouped by its principal, so the router's dispatch is one exhaustive match per
//! principal with no catch-all: a route added here without a handler does not compile.

use crate::ids::{
    percent_decode, AgentId, BeadId, IdError, IntegrationId, OrgId, RigId, TownId, UserId,
};
use crate::model::Owner;
use crate::stream::StreamScope;

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
    Other,
}

impl Method {
    pub fn parse(s: &str) -> Self {
        match s {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// Anyone.
    Public,
    /// A dashboard user token.
    User,
    /// A container token (or a legacy agent token) of the route's town.
    Container,
    /// The `x-internal-api-key` header.
    Internal,
    /// A stream ticket in the query (`?ticket=`): a WebSocket cannot carry a header.
    StreamTicket,
}

/// A matched request with its typed path parameters, grouped by the principal it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Public(PublicRoute),
    User(UserRoute),
    Container(ContainerRoute),
    Internal(InternalRoute),
    Stream(StreamRoute),
}

impl Route {
    /// The one credential kind this route accepts.
    pub fn principal(&self) -> Principal {
        match self {
            Route::Public(_) => Principal::Public,
            Route::User(_) => Principal::User,
            Route::Container(_) => Principal::Container,
            Route::Internal(_) => Principal::Internal,
            Route::Stream(_) => Principal::StreamTicket,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicRoute {
    Health,
    OpenApi,
    /// GitHub's redirect after an App installation; authenticated by its signed `state`.
    GithubInstalled,
    /// GitLab's OAuth redirect; authenticated by its signed `state`.
    GitlabCallback,
    /// GitHub's webhook; authenticated by `X-Hub-Signature-256`.
    GithubWebhook,
    /// GitLab's merge request and pipeline hooks; authenticated by `X-Gitlab-Token`.
    GitlabWebhook,
    /// GitHub's redirect after a user authorised the App; authenticated by its signed `state`.
    GithubUserConnectCallback,
}

/// A WebSocket of a town (`crate::stream`), opened with a stream ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRoute {
    pub town: TownId,
    pub scope: StreamScope,
}

/// Routes for a dashboard user token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRoute {
    /// `/api/users/:userId/...` and `/api/orgs/:orgId/...`: the same actions on either owner.
    Owned { owner: Owner, action: OwnedAction },
    /// `/api/towns/:townId/...`: authorised by the town's recorded ownership.
    Town { town: TownId, action: TownAction },
    /// `/api/integrations/...`: authorised by the integration's (or the flow's) owner.
    Integration(IntegrationAction),
}

/// What an `/api/integrations/...` route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntegrationAction {
    GithubInstall,
    GitlabConnect,
    /// The caller's own GitHub identity (commits as the user): start, status, disconnect.
    GithubUserConnect,
    GithubUserStatus,
    GithubUserDisconnect,
    Repositories(IntegrationId),
    Delete(IntegrationId),
}

/// What a personal or org route does with its owner's towns and rigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedAction {
    CreateTown,
    ListTowns,
    GetTown(TownId),
    DeleteTown(TownId),
    /// An org owner takes over a town whose creator was deleted.
    ClaimTown(TownId),
    ListTownRigs(TownId),
    CreateRig,
    GetRig(RigId),
    PatchRig(RigId),
    DeleteRig(RigId),
    ListIntegrations,
}

impl OwnedAction {
    /// Destroys something, or takes a town over: for an org, only its owners may.
    pub fn destroys(&self) -> bool {
        matches!(
            self,
            OwnedAction::DeleteTown(_) | OwnedAction::DeleteRig(_) | OwnedAction::ClaimTown(_)
        )
    }
}

/// What a `/api/towns/:townId/...` route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TownAction {
    Get,
    ListRigs,
    /// Changes one of the town's rigs, as the owner-scoped rig routes do.
    PatchRig(RigId),
    GetConfig,
    PatchConfig,
    GetContainer,
    StartContainer,
    ForceContainerTokenRefresh,
    /// Town lifecycle: for the personal owner, an org owner or the creator.
    Stop,
    Start,
    ListAgents,
    /// A page of one agent's events.
    AgentEvents(AgentId),
    /// A one-time ticket for one of the town's streams.
    StreamTicket,
    EnsureMayor,
    /// The mayor's status.
    MayorView,
    /// A user's message to the mayor.
    MayorSay,
    /// The conversation with the mayor.
    MayorTranscript,
    ListBeads,
    CreateBead,
    GetBead(BeadId),
    PatchBead(BeadId),
    DeleteBead(BeadId),
    /// An issue bead on a rig, for dispatch.
    Sling,
    /// Several issues under one convoy, with dependencies between them.
    SlingBatch,
    ListConvoys,
    GetConvoy(BeadId),
}

/// Routes for a town's container token (or a legacy agent token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRoute {
    RefreshToken {
        town: TownId,
    },
    AgentHeartbeat {
        town: TownId,
        rig: RigId,
        agent: AgentId,
    },
    /// What the agent is doing now.
    AgentStatus {
        town: TownId,
        rig: RigId,
        agent: AgentId,
    },
    /// The agent finished its bead.
    AgentDone {
        town: TownId,
        rig: RigId,
        agent: AgentId,
    },
    /// The container saw the agent's process end.
    AgentExit {
        town: TownId,
        rig: RigId,
        agent: AgentId,
    },
    /// A batch of the agent's events.
    AgentEvents {
        town: TownId,
        rig: RigId,
        agent: AgentId,
    },
    /// One of the mayor's tools (the mayor session's key is checked by the town).
    MayorTool {
        town: TownId,
        tool: MayorToolRoute,
    },
    /// The container's own gateway-token refresh.
    SandboxToken {
        town: TownId,
    },
    /// A git token for one of the town's rigs.
    GitToken {
        town: TownId,
        rig: RigId,
    },
}

impl ContainerRoute {
    /// The town the route belongs to, and the rig and agent where its path names them.
    pub fn scope(&self) -> (&TownId, Option<&RigId>, Option<&AgentId>) {
        match self {
            ContainerRoute::RefreshToken { town }
            | ContainerRoute::MayorTool { town, .. }
            | ContainerRoute::SandboxToken { town } => (town, None, None),
            ContainerRoute::GitToken { town, rig } => (town, Some(rig), None),
            ContainerRoute::AgentHeartbeat { town, rig, agent }
            | ContainerRoute::AgentStatus { town, rig, agent }
            | ContainerRoute::AgentDone { town, rig, agent }
            | ContainerRoute::AgentExit { town, rig, agent }
            | ContainerRoute::AgentEvents { town, rig, agent } => (town, Some(rig), Some(agent)),
        }
    }
}

/// Which of the mayor's tools a `/api/mayor/:townId/tools/...` route is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MayorToolRoute {
    Rigs,
    ListBeads,
    GetBead(BeadId),
    CreateBead,
    PatchBead(BeadId),
    Sling,
    SlingBatch,
    ListAgents,
    ResetAgent(AgentId),
    AckEscalation(BeadId),
    Reply,
    State,
    /// A batch of the mayor's own events (its runtime's lines).
    Events,
}

/// Routes for the `x-internal-api-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InternalRoute {
    TownHealth {
        town: TownId,
    },
    RigLookup {
        rig: RigId,
    },
    /// A gateway token for an internal service.
    SandboxToken {
        town: TownId,
    },
    /// A git token for a rig, for an internal service.
    RigGitToken {
        rig: RigId,
    },
    /// Personal data deletion: the user's GitHub grants, tokens, personal integrations and
    /// personal towns.
    DeleteUser {
        user: UserId,
    },
    /// Test hook (`test-hooks` only), until dispatch creates agents: registers a polecat or
    /// refinery of a rig so callbacks from it can be tested.
    #[cfg(feature = "test-hooks")]
    RegisterAgent {
        town: TownId,
    },
    /// Test hook, compiled only with the `test-hooks` feature (the end-to-end tests' build):
    /// drops a town's pending alarm so tests can watch the owner's watchdog re-arm it.
    #[cfg(feature = "test-hooks")]
    DropTownAlarm {
        town: TownId,
    },
}

/// Why nothing matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// The path exists with these methods.
    MethodNotAllowed(Vec<Method>),
}

/// One row of the route table.
pub struct RouteSpec {
    pub method: Method,
    /// Segments, `:name` for a parameter.
    pub path: &'static str,
    pub principal: Principal,
    build: fn(&Params) -> Result<Route, IdError>,
}

/// Decoded path parameters in order of appearance.
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }
    fn user(&self) -> Result<UserId, IdError> {
        UserId::parse(self.get("userId"))
    }
    fn org(&self) -> Result<OrgId, IdError> {
        OrgId::parse(self.get("orgId"))
    }
    fn town(&self) -> Result<TownId, IdError> {
        TownId::parse(self.get("townId"))
    }
    fn agent(&self) -> Result<AgentId, IdError> {
        AgentId::parse(self.get("agentId"))
    }
    fn rig(&self) -> Result<RigId, IdError> {
        RigId::parse(self.get("rigId"))
    }
    fn bead(&self) -> Result<BeadId, IdError> {
        BeadId::parse(self.get("beadId"))
    }
    fn convoy(&self) -> Result<BeadId, IdError> {
        BeadId::parse(self.get("convoyId"))
    }
    fn agent_route(
        &self,
        make: fn(TownId, RigId, AgentId) -> ContainerRoute,
    ) -> Result<Route, IdError> {
        Ok(Route::Container(make(
            self.town()?,
            self.rig()?,
            self.agent()?,
        )))
    }
    fn integration(&self) -> Result<IntegrationId, IdError> {
        IntegrationId::parse(self.get("integrationId"))
    }
    fn personal(&self, action: OwnedAction) -> Result<Route, IdError> {
        let owner = Owner::User(self.user()?);
        Ok(Route::User(UserRoute::Owned { owner, action }))
    }
    fn org_owned(&self, action: OwnedAction) -> Result<Route, IdError> {
        let owner = Owner::Org(self.org()?);
        Ok(Route::User(UserRoute::Owned { owner, action }))
    }
    fn mayor_tool(&self, tool: MayorToolRoute) -> Result<Route, IdError> {
        Ok(Route::Container(ContainerRoute::MayorTool {
            town: self.town()?,
            tool,
        }))
    }
    fn town_route(&self, action: TownAction) -> Result<Route, IdError> {
        let town = self.town()?;
        Ok(Route::User(UserRoute::Town { town, action }))
    }
}

macro_rules! route {
    ($method:ident $path:literal $principal:ident => $build:expr) => {
        RouteSpec {
            method: Method::$method,
            path: $path,
            principal: Principal::$principal,
            build: $build,
        }
    };
}

use OwnedAction as O;
use TownAction as T;

/// Every route of the API.
pub static ROUTES: &[RouteSpec] = &[
    route!(Get "/health" Public => |_| Ok(Route::Public(PublicRoute::Health))),
    route!(Get "/openapi.json" Public => |_| Ok(Route::Public(PublicRoute::OpenApi))),
    route!(Get "/api/integrations/github/installed" Public => |_| Ok(Route::Public(PublicRoute::GithubInstalled))),
    route!(Get "/api/integrations/gitlab/callback" Public => |_| Ok(Route::Public(PublicRoute::GitlabCallback))),
    route!(Post "/api/webhooks/github" Public => |_| Ok(Route::Public(PublicRoute::GithubWebhook))),
    route!(Post "/api/webhooks/gitlab" Public => |_| Ok(Route::Public(PublicRoute::GitlabWebhook))),
    route!(Get "/api/integrations/github/user-connect/callback" Public => |_| Ok(Route::Public(PublicRoute::GithubUserConnectCallback))),
    route!(Post "/api/integrations/github/user-connect" User => |_| Ok(Route::User(UserRoute::Integration(IntegrationAction::GithubUserConnect)))),
    route!(Get "/api/integrations/github/user-connect" User => |_| Ok(Route::User(UserRoute::Integration(IntegrationAction::GithubUserStatus)))),
    route!(Delete "/api/integrations/github/user-connect" User => |_| Ok(Route::User(UserRoute::Integration(IntegrationAction::GithubUserDisconnect)))),
    route!(Delete "/api/internal/users/:userId" Internal => |p| Ok(Route::Internal(InternalRoute::DeleteUser { user: p.user()? }))),
    route!(Post "/api/integrations/github/install" User => |_| Ok(Route::User(UserRoute::Integration(IntegrationAction::GithubInstall)))),
    route!(Post "/api/integrations/gitlab/connect" User => |_| Ok(Route::User(UserRoute::Integration(IntegrationAction::GitlabConnect)))),
    route!(Get "/api/integrations/:integrationId/repositories" User => |p| Ok(Route::User(UserRoute::Integration(IntegrationAction::Repositories(p.integration()?))))),
    route!(Delete "/api/integrations/:integrationId" User => |p| Ok(Route::User(UserRoute::Integration(IntegrationAction::Delete(p.integration()?))))),
    route!(Get "/api/users/:userId/integrations" User => |p| p.personal(O::ListIntegrations)),
    route!(Get "/api/orgs/:orgId/integrations" User => |p| p.org_owned(O::ListIntegrations)),
    route!(Post "/api/towns/:townId/rigs/:rigId/git-token" Container => |p| Ok(Route::Container(ContainerRoute::GitToken { town: p.town()?, rig: p.rig()? }))),
    route!(Post "/api/internal/rigs/:rigId/git-token" Internal => |p| Ok(Route::Internal(InternalRoute::RigGitToken { rig: p.rig()? }))),
    route!(Post "/api/users/:userId/towns" User => |p| p.personal(O::CreateTown)),
    route!(Get "/api/users/:userId/towns" User => |p| p.personal(O::ListTowns)),
    route!(Get "/api/users/:userId/towns/:townId" User => |p| p.personal(O::GetTown(p.town()?))),
    route!(Delete "/api/users/:userId/towns/:townId" User => |p| p.personal(O::DeleteTown(p.town()?))),
    route!(Get "/api/users/:userId/towns/:townId/rigs" User => |p| p.personal(O::ListTownRigs(p.town()?))),
    route!(Post "/api/users/:userId/rigs" User => |p| p.personal(O::CreateRig)),
    route!(Get "/api/users/:userId/rigs/:rigId" User => |p| p.personal(O::GetRig(p.rig()?))),
    route!(Patch "/api/users/:userId/rigs/:rigId" User => |p| p.personal(O::PatchRig(p.rig()?))),
    route!(Delete "/api/users/:userId/rigs/:rigId" User => |p| p.personal(O::DeleteRig(p.rig()?))),
    route!(Post "/api/orgs/:orgId/towns" User => |p| p.org_owned(O::CreateTown)),
    route!(Get "/api/orgs/:orgId/towns" User => |p| p.org_owned(O::ListTowns)),
    route!(Get "/api/orgs/:orgId/towns/:townId" User => |p| p.org_owned(O::GetTown(p.town()?))),
    route!(Delete "/api/orgs/:orgId/towns/:townId" User => |p| p.org_owned(O::DeleteTown(p.town()?))),
    route!(Post "/api/orgs/:orgId/towns/:townId/claim" User => |p| p.org_owned(O::ClaimTown(p.town()?))),
    route!(Get "/api/orgs/:orgId/towns/:townId/rigs" User => |p| p.org_owned(O::ListTownRigs(p.town()?))),
    route!(Post "/api/orgs/:orgId/rigs" User => |p| p.org_owned(O::CreateRig)),
    route!(Get "/api/orgs/:orgId/rigs/:rigId" User => |p| p.org_owned(O::GetRig(p.rig()?))),
    route!(Patch "/api/orgs/:orgId/rigs/:rigId" User => |p| p.org_owned(O::PatchRig(p.rig()?))),
    route!(Delete "/api/orgs/:orgId/rigs/:rigId" User => |p| p.org_owned(O::DeleteRig(p.rig()?))),
    route!(Get "/api/towns/:townId" User => |p| p.town_route(T::Get)),
    route!(Get "/api/towns/:townId/rigs" User => |p| p.town_route(T::ListRigs)),
    route!(Patch "/api/towns/:townId/rigs/:rigId" User => |p| p.town_route(T::PatchRig(p.rig()?))),
    route!(Get "/api/towns/:townId/config" User => |p| p.town_route(T::GetConfig)),
    route!(Patch "/api/towns/:townId/config" User => |p| p.town_route(T::PatchConfig)),
    route!(Get "/api/towns/:townId/container" User => |p| p.town_route(T::GetContainer)),
    route!(Post "/api/towns/:townId/container/start" User => |p| p.town_route(T::StartContainer)),
    route!(Post "/api/towns/:townId/container/refresh-token" User => |p| p.town_route(T::ForceContainerTokenRefresh)),
    route!(Post "/api/towns/:townId/stop" User => |p| p.town_route(T::Stop)),
    route!(Post "/api/towns/:townId/start" User => |p| p.town_route(T::Start)),
    route!(Get "/api/towns/:townId/agents" User => |p| p.town_route(T::ListAgents)),
    route!(Get "/api/towns/:townId/agents/:agentId/events" User => |p| p.town_route(T::AgentEvents(p.agent()?))),
    route!(Post "/api/towns/:townId/stream-tickets" User => |p| p.town_route(T::StreamTicket)),
    route!(Get "/api/towns/:townId/stream" StreamTicket => |p| Ok(Route::Stream(StreamRoute { town: p.town()?, scope: StreamScope::Town }))),
    route!(Get "/api/towns/:townId/agents/:agentId/stream" StreamTicket => |p| Ok(Route::Stream(StreamRoute { town: p.town()?, scope: StreamScope::Agent(p.agent()?) }))),
    route!(Post "/api/towns/:townId/mayor/ensure" User => |p| p.town_route(T::EnsureMayor)),
    route!(Get "/api/towns/:townId/mayor" User => |p| p.town_route(T::MayorView)),
    route!(Post "/api/towns/:townId/mayor/messages" User => |p| p.town_route(T::MayorSay)),
    route!(Get "/api/towns/:townId/mayor/messages" User => |p| p.town_route(T::MayorTranscript)),
    route!(Get "/api/towns/:townId/beads" User => |p| p.town_route(T::ListBeads)),
    route!(Post "/api/towns/:townId/beads" User => |p| p.town_route(T::CreateBead)),
    route!(Get "/api/towns/:townId/beads/:beadId" User => |p| p.town_route(T::GetBead(p.bead()?))),
    route!(Patch "/api/towns/:townId/beads/:beadId" User => |p| p.town_route(T::PatchBead(p.bead()?))),
    route!(Delete "/api/towns/:townId/beads/:beadId" User => |p| p.town_route(T::DeleteBead(p.bead()?))),
    route!(Post "/api/towns/:townId/sling" User => |p| p.town_route(T::Sling)),
    route!(Post "/api/towns/:townId/sling-batch" User => |p| p.town_route(T::SlingBatch)),
    route!(Get "/api/towns/:townId/convoys" User => |p| p.town_route(T::ListConvoys)),
    route!(Get "/api/towns/:townId/convoys/:convoyId" User => |p| p.town_route(T::GetConvoy(p.convoy()?))),
    route!(Post "/api/towns/:townId/sandbox-token" Container => |p| Ok(Route::Container(ContainerRoute::SandboxToken { town: p.town()? }))),
    route!(Post "/api/towns/:townId/refresh-container-token" Container => |p| Ok(Route::Container(ContainerRoute::RefreshToken { town: p.town()? }))),
    route!(Post "/api/towns/:townId/rigs/:rigId/agents/:agentId/heartbeat" Container => |p| Ok(Route::Container(ContainerRoute::AgentHeartbeat { town: p.town()?, rig: p.rig()?, agent: p.agent()? }))),
    route!(Post "/api/towns/:townId/rigs/:rigId/agents/:agentId/status" Container => |p| p.agent_route(|town, rig, agent| ContainerRoute::AgentStatus { town, rig, agent })),
    route!(Post "/api/towns/:townId/rigs/:rigId/agents/:agentId/done" Container => |p| p.agent_route(|town, rig, agent| ContainerRoute::AgentDone { town, rig, agent })),
    route!(Post "/api/towns/:townId/rigs/:rigId/agents/:agentId/exit" Container => |p| p.agent_route(|town, rig, agent| ContainerRoute::AgentExit { town, rig, agent })),
    route!(Post "/api/towns/:townId/rigs/:rigId/agents/:agentId/events" Container => |p| p.agent_route(|town, rig, agent| ContainerRoute::AgentEvents { town, rig, agent })),
    route!(Get "/api/mayor/:townId/tools/rigs" Container => |p| p.mayor_tool(MayorToolRoute::Rigs)),
    route!(Get "/api/mayor/:townId/tools/beads" Container => |p| p.mayor_tool(MayorToolRoute::ListBeads)),
    route!(Post "/api/mayor/:townId/tools/beads" Container => |p| p.mayor_tool(MayorToolRoute::CreateBead)),
    route!(Get "/api/mayor/:townId/tools/beads/:beadId" Container => |p| p.mayor_tool(MayorToolRoute::GetBead(p.bead()?))),
    route!(Patch "/api/mayor/:townId/tools/beads/:beadId" Container => |p| p.mayor_tool(MayorToolRoute::PatchBead(p.bead()?))),
    route!(Post "/api/mayor/:townId/tools/sling" Container => |p| p.mayor_tool(MayorToolRoute::Sling)),
    route!(Post "/api/mayor/:townId/tools/sling-batch" Container => |p| p.mayor_tool(MayorToolRoute::SlingBatch)),
    route!(Get "/api/mayor/:townId/tools/agents" Container => |p| p.mayor_tool(MayorToolRoute::ListAgents)),
    route!(Post "/api/mayor/:townId/tools/agents/:agentId/reset" Container => |p| p.mayor_tool(MayorToolRoute::ResetAgent(p.agent()?))),
    route!(Post "/api/mayor/:townId/tools/escalations/:beadId/ack" Container => |p| p.mayor_tool(MayorToolRoute::AckEscalation(p.bead()?))),
    route!(Post "/api/mayor/:townId/tools/reply" Container => |p| p.mayor_tool(MayorToolRoute::Reply)),
    route!(Post "/api/mayor/:townId/tools/state" Container => |p| p.mayor_tool(MayorToolRoute::State)),
    route!(Post "/api/mayor/:townId/tools/events" Container => |p| p.mayor_tool(MayorToolRoute::Events)),
    route!(Get "/api/internal/towns/:townId/health" Internal => |p| Ok(Route::Internal(InternalRoute::TownHealth { town: p.town()? }))),
    route!(Get "/api/internal/rigs/:rigId" Internal => |p| Ok(Route::Internal(InternalRoute::RigLookup { rig: p.rig()? }))),
    route!(Post "/api/internal/towns/:townId/sandbox-token" Internal => |p| Ok(Route::Internal(InternalRoute::SandboxToken { town: p.town()? }))),
    #[cfg(feature = "test-hooks")]
    route!(Post "/api/internal/towns/:townId/agents" Internal => |p| Ok(Route::Internal(InternalRoute::RegisterAgent { town: p.town()? }))),
    #[cfg(feature = "test-hooks")]
    route!(Delete "/api/internal/towns/:townId/alarm" Internal => |p| Ok(Route::Internal(InternalRoute::DropTownAlarm { town: p.town()? }))),
];

/// A path's segments without its leading and trailing `/`.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    path.split('/')
}

fn match_path(spec: &RouteSpec, segs: &[&str]) -> Option<Params> {
    if segments(spec.path).count() != segs.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in segments(spec.path).zip(segs) {
        if let Some(name) = p.strip_prefix(':') {
            params.push((name, percent_decode(s)?));
        } else if p != *s {
            return None;
        }
    }
    Some(Params(params))
}

/// Finds the route for `method` and `path` (no query string).
///
/// # Errors
/// `NotFound` when no path matches or a parameter is not a valid id; `MethodNotAllowed` with
/// the methods the path has.
pub fn match_route(method: Method, path: &str) -> Result<Route, RouteError> {
    let segs: Vec<&str> = segments(path).collect();
    let mut allowed = Vec::new();
    for spec in ROUTES {
        let Some(params) = match_path(spec, &segs) else {
            continue;
        };
        if spec.method != method {
            allowed.push(spec.method);
            continue;
        }
        return (spec.build)(&params).map_err(|_| RouteError::NotFound);
    }
    if allowed.is_empty() {
        Err(RouteError::NotFound)
    } else {
        Err(RouteError::MethodNotAllowed(allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_routes_match_with_typed_ids() {
        let route = match_route(Method::Get, "/api/users/u1/towns/t1").unwrap();
        assert_eq!(
            route,
            Route::User(UserRoute::Owned {
                owner: Owner::User(UserId::parse("u1").unwrap()),
                action: OwnedAction::GetTown(TownId::parse("t1").unwrap())
            })
        );
        assert_eq!(route.principal(), Principal::User);
        let route = match_route(Method::Post, "/api/users/oauth%2Fgoogle%3A1/rigs/").unwrap();
        assert_eq!(
            route,
            Route::User(UserRoute::Owned {
                owner: Owner::User(UserId::parse("oauth/google:1").unwrap()),
                action: OwnedAction::CreateRig
            })
        );
        assert_eq!(
            match_route(Method::Get, "/health").unwrap().principal(),
            Principal::Public
        );
        assert_eq!(
            match_route(Method::Get, "/api/internal/rigs/r1")
                .unwrap()
                .principal(),
            Principal::Internal
        );
        let route = match_route(Method::Post, "/api/towns/t1/rigs/r1/agents/a1/heartbeat").unwrap();
        let Route::Container(route) = route else {
            panic!("a container route")
        };
        assert_eq!(
            route.scope(),
            (
                &TownId::parse("t1").unwrap(),
                Some(&RigId::parse("r1").unwrap()),
                Some(&AgentId::parse("a1").unwrap())
            )
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(match_route(Method::Get, "/nope"), Err(RouteError::NotFound));
        assert_eq!(
            match_route(Method::Get, "/api/users/u1"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            match_route(Method::Get, "/api/users//towns"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            match_route(Method::Get, "/api/users/a%20b/towns"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            match_route(Method::Get, "/api/users/a%zz/towns"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            match_route(Method::Patch, "/api/users/u1/towns"),
            Err(RouteError::MethodNotAllowed(vec![
                Method::Post,
                Method::Get
            ]))
        );
        assert_eq!(
            match_route(Method::Other, "/health"),
            Err(RouteError::MethodNotAllowed(vec![Method::Get]))
        );
    }

    /// The table's principal column (published in the OpenAPI document) is the principal of
    /// the route each row builds.
    #[test]
    fn every_row_builds_a_route_of_its_principal() {
        for spec in ROUTES {
            let path: String = spec
                .path
                .split('/')
                .map(|seg| if seg.starts_with(':') { "x1" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let route = match_route(spec.method, &path).unwrap();
            assert_eq!(route.principal(), spec.principal, "{}", spec.path);
        }
    }

    #[cfg(not(feature = "test-hooks"))]
    #[test]
    fn the_test_hook_exists_only_in_test_builds() {
        assert_eq!(
            match_route(Method::Delete, "/api/internal/towns/t1/alarm"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn every_route_has_a_unique_method_and_path() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {}",
                    a.path,
                    a.method.as_str()
                );
            }
        }
    }
}

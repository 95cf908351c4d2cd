//! The route table: every public path, its method, and the one principal kind it accepts.
//!
//! The router matches a request here first; only then does it verify the credential the route's
//! [`Principal`] names, and only after that does it touch a Durable Object. The table is also the
//! source for the published route list, so a route cannot exist without its principal.

use crate::ids::{percent_decode, AgentId, IdError, OrgId, RigId, TownId, UserId};

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
}

/// A matched request with its typed path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    OpenApi,
    CreateUserTown {
        user: UserId,
    },
    ListUserTowns {
        user: UserId,
    },
    GetUserTown {
        user: UserId,
        town: TownId,
    },
    DeleteUserTown {
        user: UserId,
        town: TownId,
    },
    CreateUserRig {
        user: UserId,
    },
    ListUserTownRigs {
        user: UserId,
        town: TownId,
    },
    GetUserRig {
        user: UserId,
        rig: RigId,
    },
    DeleteUserRig {
        user: UserId,
        rig: RigId,
    },
    CreateOrgTown {
        org: OrgId,
    },
    ListOrgTowns {
        org: OrgId,
    },
    GetOrgTown {
        org: OrgId,
        town: TownId,
    },
    DeleteOrgTown {
        org: OrgId,
        town: TownId,
    },
    CreateOrgRig {
        org: OrgId,
    },
    ListOrgTownRigs {
        org: OrgId,
        town: TownId,
    },
    GetOrgRig {
        org: OrgId,
        rig: RigId,
    },
    DeleteOrgRig {
        org: OrgId,
        rig: RigId,
    },
    GetTown {
        town: TownId,
    },
    ListTownRigs {
        town: TownId,
    },
    GetTownConfig {
        town: TownId,
    },
    PatchTownConfig {
        town: TownId,
    },
    GetTownContainer {
        town: TownId,
    },
    StartTownContainer {
        town: TownId,
    },
    ForceContainerTokenRefresh {
        town: TownId,
    },
    RefreshContainerToken {
        town: TownId,
    },
    AgentHeartbeat {
        town: TownId,
        rig: RigId,
        agent: AgentId,
    },
    MayorRigs {
        town: TownId,
    },
    InternalTownHealth {
        town: TownId,
    },
    InternalRigLookup {
        rig: RigId,
    },
    /// Test hook (only with `GASTOWN_TEST_HOOKS=1`): drops a town's pending alarm so tests can
    /// watch the owner's watchdog re-arm it.
    InternalDropTownAlarm {
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

/// Every route of the API.
pub static ROUTES: &[RouteSpec] = &[
    route!(Get "/health" Public => |_| Ok(Route::Health)),
    route!(Get "/openapi.json" Public => |_| Ok(Route::OpenApi)),
    route!(Post "/api/users/:userId/towns" User => |p| Ok(Route::CreateUserTown { user: p.user()? })),
    route!(Get "/api/users/:userId/towns" User => |p| Ok(Route::ListUserTowns { user: p.user()? })),
    route!(Get "/api/users/:userId/towns/:townId" User => |p| Ok(Route::GetUserTown { user: p.user()?, town: p.town()? })),
    route!(Delete "/api/users/:userId/towns/:townId" User => |p| Ok(Route::DeleteUserTown { user: p.user()?, town: p.town()? })),
    route!(Get "/api/users/:userId/towns/:townId/rigs" User => |p| Ok(Route::ListUserTownRigs { user: p.user()?, town: p.town()? })),
    route!(Post "/api/users/:userId/rigs" User => |p| Ok(Route::CreateUserRig { user: p.user()? })),
    route!(Get "/api/users/:userId/rigs/:rigId" User => |p| Ok(Route::GetUserRig { user: p.user()?, rig: p.rig()? })),
    route!(Delete "/api/users/:userId/rigs/:rigId" User => |p| Ok(Route::DeleteUserRig { user: p.user()?, rig: p.rig()? })),
    route!(Post "/api/orgs/:orgId/towns" User => |p| Ok(Route::CreateOrgTown { org: p.org()? })),
    route!(Get "/api/orgs/:orgId/towns" User => |p| Ok(Route::ListOrgTowns { org: p.org()? })),
    route!(Get "/api/orgs/:orgId/towns/:townId" User => |p| Ok(Route::GetOrgTown { org: p.org()?, town: p.town()? })),
    route!(Delete "/api/orgs/:orgId/towns/:townId" User => |p| Ok(Route::DeleteOrgTown { org: p.org()?, town: p.town()? })),
    route!(Get "/api/orgs/:orgId/towns/:townId/rigs" User => |p| Ok(Route::ListOrgTownRigs { org: p.org()?, town: p.town()? })),
    route!(Post "/api/orgs/:orgId/rigs" User => |p| Ok(Route::CreateOrgRig { org: p.org()? })),
    route!(Get "/api/orgs/:orgId/rigs/:rigId" User => |p| Ok(Route::GetOrgRig { org: p.org()?, rig: p.rig()? })),
    route!(Delete "/api/orgs/:orgId/rigs/:rigId" User => |p| Ok(Route::DeleteOrgRig { org: p.org()?, rig: p.rig()? })),
    route!(Get "/api/towns/:townId" User => |p| Ok(Route::GetTown { town: p.town()? })),
    route!(Get "/api/towns/:townId/rigs" User => |p| Ok(Route::ListTownRigs { town: p.town()? })),
    route!(Get "/api/towns/:townId/config" User => |p| Ok(Route::GetTownConfig { town: p.town()? })),
    route!(Patch "/api/towns/:townId/config" User => |p| Ok(Route::PatchTownConfig { town: p.town()? })),
    route!(Get "/api/towns/:townId/container" User => |p| Ok(Route::GetTownContainer { town: p.town()? })),
    route!(Post "/api/towns/:townId/container/start" User => |p| Ok(Route::StartTownContainer { town: p.town()? })),
    route!(Post "/api/towns/:townId/container/refresh-token" User => |p| Ok(Route::ForceContainerTokenRefresh { town: p.town()? })),
    route!(Post "/api/towns/:townId/refresh-container-token" Container => |p| Ok(Route::RefreshContainerToken { town: p.town()? })),
    route!(Post "/api/towns/:townId/rigs/:rigId/agents/:agentId/heartbeat" Container => |p| Ok(Route::AgentHeartbeat { town: p.town()?, rig: p.rig()?, agent: p.agent()? })),
    route!(Get "/api/mayor/:townId/tools/rigs" Container => |p| Ok(Route::MayorRigs { town: p.town()? })),
    route!(Get "/api/internal/towns/:townId/health" Internal => |p| Ok(Route::InternalTownHealth { town: p.town()? })),
    route!(Get "/api/internal/rigs/:rigId" Internal => |p| Ok(Route::InternalRigLookup { rig: p.rig()? })),
    route!(Delete "/api/internal/towns/:townId/alarm" Internal => |p| Ok(Route::InternalDropTownAlarm { town: p.town()? })),
];

fn segments(path: &str) -> Vec<&str> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    path.split('/').collect()
}

fn match_path(spec: &RouteSpec, segs: &[&str]) -> Option<Params> {
    let pattern = segments(spec.path);
    if pattern.len() != segs.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in pattern.iter().zip(segs) {
        if let Some(name) = p.strip_prefix(':') {
            let spec_name: &'static str = spec
                .path
                .split('/')
                .find(|seg| seg.strip_prefix(':') == Some(name))?
                .strip_prefix(':')?;
            params.push((spec_name, percent_decode(s)?));
        } else if p != s {
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
pub fn match_route(method: Method, path: &str) -> Result<(Route, Principal), RouteError> {
    let segs = segments(path);
    let mut allowed = Vec::new();
    for spec in ROUTES {
        let Some(params) = match_path(spec, &segs) else {
            continue;
        };
        if spec.method != method {
            allowed.push(spec.method);
            continue;
        }
        return (spec.build)(&params)
            .map(|route| (route, spec.principal))
            .map_err(|_| RouteError::NotFound);
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
        let (route, principal) = match_route(Method::Get, "/api/users/u1/towns/t1").unwrap();
        assert_eq!(
            route,
            Route::GetUserTown {
                user: UserId::parse("u1").unwrap(),
                town: TownId::parse("t1").unwrap()
            }
        );
        assert_eq!(principal, Principal::User);
        let (route, _) = match_route(Method::Post, "/api/users/oauth%2Fgoogle%3A1/rigs/").unwrap();
        assert_eq!(
            route,
            Route::CreateUserRig {
                user: UserId::parse("oauth/google:1").unwrap()
            }
        );
        assert_eq!(
            match_route(Method::Get, "/health").unwrap().1,
            Principal::Public
        );
        assert_eq!(
            match_route(Method::Get, "/api/internal/rigs/r1").unwrap().1,
            Principal::Internal
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

//! Authorization decisions over verified claims: plain functions, so every rule has a native
//! test. The router calls these before it touches any Durable Object; a town route's role is
//! decided inside the town's DO over the [`TownCaller`] the router hands it.

use crate::auth::{AuthError, Keys, OrgRole, UserClaims};
use crate::error::ApiError;
use crate::ids::{AgentId, OrgId, RigId, TownId, UserId};
use crate::model::{Owner, Town};
use serde::{Deserialize, Serialize};

/// Dashboard users the dashboard has switched off (`gastownAccess: false`) may use nothing.
///
/// # Errors
/// 403.
pub fn require_gastown_access(claims: &UserClaims) -> Result<(), ApiError> {
    if claims.gastown_access == Some(false) {
        return Err(ApiError::Forbidden(
            "gastown access is not enabled for this user".into(),
        ));
    }
    Ok(())
}

/// Personal routes (`/api/users/:userId/...`) are for that user only.
///
/// # Errors
/// 403 when the token belongs to someone else or lacks Gastown access.
pub fn personal(claims: &UserClaims, user: &UserId) -> Result<(), ApiError> {
    require_gastown_access(claims)?;
    if &claims.user_id != user {
        return Err(ApiError::Forbidden(
            "this token does not belong to that user".into(),
        ));
    }
    Ok(())
}

/// Org routes (`/api/orgs/:orgId/...`) are for owners and members of that org, as the token
/// says; billing managers and unknown roles are not members for Gastown. Returns the role.
///
/// # Errors
/// 403.
pub fn org_member(claims: &UserClaims, org: &OrgId) -> Result<OrgRole, ApiError> {
    require_gastown_access(claims)?;
    match claims.role_in(org) {
        Some(role) if role.is_gastown_member() => Ok(role),
        _ => Err(ApiError::Forbidden(
            "not a member of this organisation".into(),
        )),
    }
}

/// Destroying org towns and rigs is for org owners.
///
/// # Errors
/// 403 for members and everyone else.
pub fn org_owner(claims: &UserClaims, org: &OrgId) -> Result<(), ApiError> {
    match org_member(claims, org)? {
        OrgRole::Owner => Ok(()),
        _ => Err(ApiError::Forbidden(
            "only an organisation owner may do this".into(),
        )),
    }
}

/// Personal and org routes: a personal route is for that user; an org route is for owners and
/// members of the org, and only its owners may destroy.
///
/// # Errors
/// 403.
pub fn owned(claims: &UserClaims, owner: &Owner, destroys: bool) -> Result<(), ApiError> {
    match owner {
        Owner::User(user) => personal(claims, user),
        Owner::Org(org) if destroys => org_owner(claims, org),
        Owner::Org(org) => org_member(claims, org).map(|_| ()),
    }
}

/// What the caller is to a town, most privileged first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TownRole {
    /// The user who owns a personal town.
    PersonalOwner,
    /// An owner of the organisation that owns the town.
    OrgOwner,
    /// The member of the owning organisation who created the town.
    Creator,
    /// Any other member of the owning organisation.
    OrgMember,
}

impl TownRole {
    /// May change the town's config and credentials (and see who may).
    pub fn manages_town(self) -> bool {
        !matches!(self, TownRole::OrgMember)
    }
}

/// Town routes (`/api/towns/:townId/...`): personal towns for their owner, org towns for owners
/// and members of the owning org. Decided from the town's recorded ownership and the token's
/// claims alone.
///
/// # Errors
/// 403 for anyone else.
pub fn town_role(claims: &UserClaims, town: &Town) -> Result<TownRole, ApiError> {
    TownCaller::of(claims)?.role_in(town)
}

/// A verified user as a town route's Durable Object operation receives it: who they are and
/// the org roles their token states. The router builds it from claims it has verified (and
/// refuses users without Gastown access first), so the town's DO decides access from its own
/// record in the same call that does the work: one round trip per town route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TownCaller {
    pub user_id: UserId,
    pub orgs: Vec<(OrgId, OrgRole)>,
}

impl TownCaller {
    /// # Errors
    /// 403 for a user without Gastown access.
    pub fn of(claims: &UserClaims) -> Result<TownCaller, ApiError> {
        require_gastown_access(claims)?;
        Ok(TownCaller {
            user_id: claims.user_id.clone(),
            orgs: claims
                .org_memberships
                .iter()
                .map(|m| (m.org_id.clone(), m.role))
                .collect(),
        })
    }

    /// What the caller is to `town`.
    ///
    /// # Errors
    /// 403 for anyone the town's ownership does not admit.
    pub fn role_in(&self, town: &Town) -> Result<TownRole, ApiError> {
        let refused = || ApiError::Forbidden("not allowed on this town".into());
        match &town.owner {
            Owner::User(owner) if &self.user_id == owner => Ok(TownRole::PersonalOwner),
            Owner::User(_) => Err(refused()),
            Owner::Org(org) => match self.orgs.iter().find(|(id, _)| id == org).map(|m| m.1) {
                Some(OrgRole::Owner) => Ok(TownRole::OrgOwner),
                Some(OrgRole::Member) if self.user_id == town.created_by_user_id => {
                    Ok(TownRole::Creator)
                }
                Some(OrgRole::Member) => Ok(TownRole::OrgMember),
                _ => Err(refused()),
            },
        }
    }
}

/// Changing a town's config, rotating its tokens, stopping and starting it are for those who
/// manage it.
///
/// # Errors
/// 403 naming `what` for org members who did not create the town.
pub fn require_manager(role: TownRole, what: &str) -> Result<(), ApiError> {
    if role.manages_town() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "only the town's owner or creator, or an org owner, may {what}"
        )))
    }
}

/// A verified container (or legacy agent) caller, scoped to the route's town.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCaller {
    pub town_id: TownId,
    /// The identity the token carries (the town's owner, or creator for org towns).
    pub user_id: String,
    pub rig_id: Option<RigId>,
    pub agent_id: Option<AgentId>,
    /// What the token proves, for the town's DO to check against its current generation.
    pub credential: ContainerCredential,
}

/// The part of a container caller's token that rotation revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContainerCredential {
    /// A container token of this generation (`None`: minted before generations existed).
    Container { generation: Option<u64> },
    /// A legacy per-agent token issued at this time (seconds since the epoch).
    Agent { issued_at: i64 },
}

/// Where a container route names its rig and agent: the path first, else the
/// `X-Gastown-Rig-Id` / `X-Gastown-Agent-Id` headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerScope<'a> {
    pub route_rig: Option<&'a RigId>,
    pub route_agent: Option<&'a AgentId>,
    pub header_rig: Option<&'a str>,
    pub header_agent: Option<&'a str>,
}

/// The API error for a refused token: 401, except a missing secret, which is our fault (500).
pub fn auth_error(err: AuthError) -> ApiError {
    match err {
        AuthError::NotConfigured => ApiError::internal("a token secret is not configured"),
        other => ApiError::Unauthorized(other.message()),
    }
}

/// Container routes take a container token (`scope: "container"`) or, failing that kind, a
/// legacy agent token, and only for the route's town. A legacy token names its own rig and
/// agent, which must agree with the path.
///
/// # Errors
/// 401 for a token that is neither kind or does not verify; 403 for another town's token or a
/// legacy token used for another rig or agent; 400 for a malformed id header.
pub fn container(
    keys: &Keys,
    token: &str,
    now: i64,
    town: &TownId,
    scope: ContainerScope<'_>,
) -> Result<ContainerCaller, ApiError> {
    let other_town = || ApiError::Forbidden("this token belongs to another town".into());
    match keys.verify_container(token, now) {
        Ok(claims) => {
            if &claims.town_id != town {
                return Err(other_town());
            }
            let rig = match (scope.route_rig, scope.header_rig) {
                (Some(r), _) => Some(r.clone()),
                (None, Some(h)) => Some(
                    RigId::parse(h)
                        .map_err(|e| ApiError::BadRequest(format!("X-Gastown-Rig-Id {e}")))?,
                ),
                (None, None) => None,
            };
            let agent = match (scope.route_agent, scope.header_agent) {
                (Some(a), _) => Some(a.clone()),
                (None, Some(h)) => Some(
                    AgentId::parse(h)
                        .map_err(|e| ApiError::BadRequest(format!("X-Gastown-Agent-Id {e}")))?,
                ),
                (None, None) => None,
            };
            Ok(ContainerCaller {
                town_id: claims.town_id,
                user_id: claims.user_id,
                rig_id: rig,
                agent_id: agent,
                credential: ContainerCredential::Container {
                    generation: claims.generation,
                },
            })
        }
        Err(AuthError::WrongKind) => {
            let claims = keys.verify_agent(token, now).map_err(auth_error)?;
            if &claims.town_id != town {
                return Err(other_town());
            }
            // A legacy token speaks for its own agent only: on routes whose path names that
            // rig and agent, never on town-wide routes (and so never to mint a container token).
            match (scope.route_rig, scope.route_agent) {
                (Some(rig), Some(agent)) if rig == &claims.rig_id && agent == &claims.agent_id => {}
                (Some(_), Some(_)) => {
                    return Err(ApiError::Forbidden(
                        "this agent token belongs to another rig or agent".into(),
                    ))
                }
                _ => {
                    return Err(ApiError::Forbidden(
                        "an agent token is accepted only on its own agent's routes".into(),
                    ))
                }
            }
            Ok(ContainerCaller {
                town_id: claims.town_id,
                user_id: claims.user_id,
                rig_id: Some(claims.rig_id),
                agent_id: Some(claims.agent_id),
                credential: ContainerCredential::Agent {
                    issued_at: claims.issued_at,
                },
            })
        }
        Err(other) => Err(auth_error(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::OrgMembership;
    use crate::ids::TownId;
    use crate::model::NewTown;

    fn member(user: &str, orgs: &[(&str, OrgRole)]) -> UserClaims {
        UserClaims {
            user_id: UserId::parse(user).unwrap(),
            org_memberships: orgs
                .iter()
                .map(|(o, r)| OrgMembership {
                    org_id: OrgId::parse(o).unwrap(),
                    role: *r,
                })
                .collect(),
            gastown_access: None,
            is_admin: false,
            expires_at: 0,
        }
    }

    #[test]
    fn org_routes_need_owner_or_member() {
        let org = OrgId::parse("o1").unwrap();
        assert_eq!(
            org_member(&member("u", &[("o1", OrgRole::Owner)]), &org),
            Ok(OrgRole::Owner)
        );
        assert_eq!(
            org_member(&member("u", &[("o1", OrgRole::Member)]), &org),
            Ok(OrgRole::Member)
        );
        for claims in [
            member("u", &[("o1", OrgRole::BillingManager)]),
            member("u", &[("o1", OrgRole::Other)]),
            member("u", &[("o2", OrgRole::Owner)]),
            member("u", &[]),
        ] {
            assert_eq!(org_member(&claims, &org).unwrap_err().status(), 403);
            assert_eq!(org_owner(&claims, &org).unwrap_err().status(), 403);
        }
        assert!(org_owner(&member("u", &[("o1", OrgRole::Owner)]), &org).is_ok());
        assert_eq!(
            org_owner(&member("u", &[("o1", OrgRole::Member)]), &org)
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn town_roles() {
        let town_id = TownId::parse("t").unwrap();
        let new = || NewTown { name: "n".into() };
        let personal_town = Town::personal(
            town_id.clone(),
            new(),
            &UserId::parse("alice").unwrap(),
            String::new(),
        );
        let org_town = Town::for_org(
            town_id,
            new(),
            &OrgId::parse("o1").unwrap(),
            &UserId::parse("bob").unwrap(),
            String::new(),
        );
        let alice = member("alice", &[("o1", OrgRole::Owner)]);
        let bob = member("bob", &[("o1", OrgRole::Member)]);
        let carol = member("carol", &[("o1", OrgRole::Member)]);
        let dave = member("dave", &[("o1", OrgRole::BillingManager)]);
        let erin = member("erin", &[("o2", OrgRole::Owner)]);
        assert_eq!(
            town_role(&alice, &personal_town),
            Ok(TownRole::PersonalOwner)
        );
        assert_eq!(town_role(&bob, &personal_town).unwrap_err().status(), 403);
        assert_eq!(town_role(&alice, &org_town), Ok(TownRole::OrgOwner));
        assert_eq!(town_role(&bob, &org_town), Ok(TownRole::Creator));
        assert_eq!(town_role(&carol, &org_town), Ok(TownRole::OrgMember));
        assert_eq!(town_role(&dave, &org_town).unwrap_err().status(), 403);
        assert_eq!(town_role(&erin, &org_town).unwrap_err().status(), 403);
        let bob_left = member("bob", &[]);
        assert_eq!(
            town_role(&bob_left, &org_town).unwrap_err().status(),
            403,
            "a creator who left the org"
        );
        assert!(TownRole::Creator.manages_town() && TownRole::OrgOwner.manages_town());
        assert!(!TownRole::OrgMember.manages_town());
    }

    fn claims(user: &str, access: Option<bool>) -> UserClaims {
        UserClaims {
            user_id: UserId::parse(user).unwrap(),
            org_memberships: vec![],
            gastown_access: access,
            is_admin: false,
            expires_at: 0,
        }
    }

    #[test]
    fn personal_routes_are_for_their_user() {
        let u1 = UserId::parse("u1").unwrap();
        assert!(personal(&claims("u1", None), &u1).is_ok());
        assert!(personal(&claims("u1", Some(true)), &u1).is_ok());
        assert_eq!(
            personal(&claims("u2", None), &u1).unwrap_err().status(),
            403
        );
        assert_eq!(
            personal(&claims("U1", None), &u1).unwrap_err().status(),
            403
        );
        assert_eq!(
            personal(&claims("u1", Some(false)), &u1)
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn admins_get_no_shortcut_into_personal_routes() {
        let mut admin = claims("admin", None);
        admin.is_admin = true;
        assert_eq!(
            personal(&admin, &UserId::parse("u1").unwrap())
                .unwrap_err()
                .status(),
            403
        );
    }

    mod container_auth {
        use super::super::*;
        use crate::auth::{sign_container, sign_sandbox};

        const NOW: i64 = 1_800_000_000;

        fn keys() -> Keys {
            Keys::new(
                Some("nextauth-secret-for-tests-0123"),
                Some("gastown-secret-for-tests-0123"),
            )
        }

        fn town(s: &str) -> TownId {
            TownId::parse(s).unwrap()
        }

        #[test]
        fn container_token_is_scoped_to_its_town() {
            let k = keys();
            let (token, _) = sign_container(
                &k,
                &town("t1"),
                "owner",
                1,
                NOW,
                crate::auth::CONTAINER_TOKEN_TTL_SECS,
            )
            .unwrap();
            let ok = container(&k, &token, NOW, &town("t1"), ContainerScope::default()).unwrap();
            assert_eq!(ok.user_id.as_str(), "owner");
            assert_eq!(
                ok.credential,
                ContainerCredential::Container {
                    generation: Some(1)
                }
            );
            assert_eq!(
                container(&k, &token, NOW, &town("t2"), ContainerScope::default())
                    .unwrap_err()
                    .status(),
                403
            );
        }

        #[test]
        fn rig_and_agent_come_from_path_then_headers() {
            let k = keys();
            let (token, _) = sign_container(
                &k,
                &town("t1"),
                "owner",
                1,
                NOW,
                crate::auth::CONTAINER_TOKEN_TTL_SECS,
            )
            .unwrap();
            let rig = RigId::parse("r-path").unwrap();
            let scope = ContainerScope {
                route_rig: Some(&rig),
                header_rig: Some("r-header"),
                header_agent: Some("a-header"),
                ..Default::default()
            };
            let c = container(&k, &token, NOW, &town("t1"), scope).unwrap();
            assert_eq!(c.rig_id.unwrap().as_str(), "r-path");
            assert_eq!(c.agent_id.unwrap().as_str(), "a-header");
            let bad = ContainerScope {
                header_agent: Some("bad id"),
                ..Default::default()
            };
            assert_eq!(
                container(&k, &token, NOW, &town("t1"), bad)
                    .unwrap_err()
                    .status(),
                400
            );
        }

        #[test]
        fn other_kinds_are_refused() {
            let k = keys();
            let (sandbox, _) = sign_sandbox(
                &k,
                "u",
                &town("t1"),
                None,
                NOW,
                crate::auth::SANDBOX_TOKEN_TTL_SECS,
            )
            .unwrap();
            assert_eq!(
                container(&k, &sandbox, NOW, &town("t1"), ContainerScope::default())
                    .unwrap_err()
                    .status(),
                401
            );
            assert_eq!(
                container(&k, "garbage", NOW, &town("t1"), ContainerScope::default())
                    .unwrap_err()
                    .status(),
                401
            );
            let (token, _) = sign_container(
                &k,
                &town("t1"),
                "owner",
                1,
                NOW,
                crate::auth::CONTAINER_TOKEN_TTL_SECS,
            )
            .unwrap();
            assert_eq!(
                container(
                    &k,
                    &token,
                    NOW + 9 * 3600,
                    &town("t1"),
                    ContainerScope::default()
                )
                .unwrap_err()
                .status(),
                401,
                "expired"
            );
        }
    }
}

//! Authorization decisions over verified claims: plain functions, so every rule has a native
//! test. The router calls these before it touches any Durable Object.

use crate::auth::{OrgRole, UserClaims};
use crate::error::ApiError;
use crate::ids::{OrgId, UserId};
use crate::model::{OwnerType, Town};

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
    require_gastown_access(claims)?;
    let refused = || ApiError::Forbidden("not allowed on this town".into());
    match town.owner_type {
        OwnerType::User if claims.user_id.as_str() == town.owner_user_id => {
            Ok(TownRole::PersonalOwner)
        }
        OwnerType::User => Err(refused()),
        OwnerType::Org => {
            let org = town.organization_id.as_ref().ok_or_else(refused)?;
            match claims.role_in(org) {
                Some(OrgRole::Owner) => Ok(TownRole::OrgOwner),
                Some(OrgRole::Member) if claims.user_id == town.created_by_user_id => {
                    Ok(TownRole::Creator)
                }
                Some(OrgRole::Member) => Ok(TownRole::OrgMember),
                _ => Err(refused()),
            }
        }
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
}

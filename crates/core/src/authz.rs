//! Authorization decisions over verified claims: plain functions, so every rule has a native
//! test. The router calls these before it touches any Durable Object.

use crate::auth::UserClaims;
use crate::error::ApiError;
use crate::ids::UserId;

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

#[cfg(test)]
mod tests {
    use super::*;

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

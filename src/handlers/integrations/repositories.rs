//! An owner's integrations: listing them, the repository picker of one, and deleting one. Members
//! read; the user, or an org's owners, change.

use crate::http::{json, Params};
use crate::platforms::{self, store};
use gastown_core::auth::UserClaims;
use gastown_core::authz;
use gastown_core::error::ApiError;
use gastown_core::ids::{IntegrationId, OrgId};
use gastown_core::integrations::Repository;
use gastown_core::model::Owner;
use serde::Serialize;
use worker::{Env, Request, Response};

type Handled = Result<Response, ApiError>;

/// An owner's integrations (members read).
pub async fn list(env: &Env, owner: &Owner) -> Handled {
    Ok(json(200, &store::list(env, owner).await?))
}

/// The integration, if the caller may act on it: read as the user or an org member, change as
/// the user or an org owner.
async fn owned_row(
    env: &Env,
    claims: &UserClaims,
    id: &IntegrationId,
    changes: bool,
) -> Result<store::Row, ApiError> {
    authz::require_gastown_access(claims)?;
    let row = store::get(env, id.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound("integration not found".into()))?;
    let integration = row.public();
    let owner = match integration.owner_type {
        gastown_core::model::OwnerType::User => Owner::User(
            gastown_core::ids::UserId::parse(&integration.owner_id).map_err(ApiError::internal)?,
        ),
        gastown_core::model::OwnerType::Org => {
            Owner::Org(OrgId::parse(&integration.owner_id).map_err(ApiError::internal)?)
        }
    };
    authz::owned(claims, &owner, changes)
        .map_err(|_| ApiError::Forbidden("this integration belongs to another owner".into()))?;
    Ok(row)
}

/// `DELETE /api/integrations/:id`.
pub async fn delete(env: &Env, claims: &UserClaims, id: &IntegrationId) -> Handled {
    let row = owned_row(env, claims, id, true).await?;
    store::delete(env, &row.id).await?;
    #[derive(Serialize)]
    struct Deleted<'a> {
        id: &'a str,
        deleted: bool,
    }
    Ok(json(
        200,
        &Deleted {
            id: &row.id,
            deleted: true,
        },
    ))
}

/// `GET /api/integrations/:id/repositories?q=&refresh=1`.
pub async fn repositories(
    req: &Request,
    env: &Env,
    claims: &UserClaims,
    id: &IntegrationId,
) -> Handled {
    let row = owned_row(env, claims, id, false).await?;
    let params = Params::of(req);
    let refresh = matches!(params.get("refresh"), Some("1" | "true"));
    let q = params.get("q").map(str::to_lowercase);
    let repos = platforms::repositories::of(env, row, refresh).await?;
    let shown: Vec<&Repository> = repos
        .iter()
        .filter(|r| {
            q.as_ref()
                .is_none_or(|q| r.full_name.to_lowercase().contains(q.as_str()))
        })
        .collect();
    Ok(json(200, &shown))
}

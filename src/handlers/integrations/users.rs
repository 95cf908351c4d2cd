//! Personal data deletion of one user: their GitHub grants and token rows, their personal
//! integrations and their personal towns; and the org towns acting as them stop and act as no
//! one (`creator_deleted`) until an org owner claims one, so no token is minted for the user
//! again. Each step is idempotent, so a retry finishes the job.

use crate::http::json;
use crate::platforms::{store, user_tokens};
use gastown_core::error::ApiError;
use gastown_core::model::Owner;
use serde::Serialize;
use worker::{Env, Response};

type Handled = Result<Response, ApiError>;

/// `DELETE /api/internal/users/:userId`: personal data deletion. The user's GitHub grants are
/// revoked (best effort) and their token rows deleted; their personal integrations and personal
/// towns (containers stopped, DO storage wiped) go; org towns acting as them stop (their work
/// handed back) and show `creator_deleted`. Idempotent.
pub async fn delete_user(env: &Env, user: &gastown_core::ids::UserId) -> Handled {
    user_tokens::delete_user(env, user.as_str()).await?;
    let owner = Owner::User(user.clone());
    let integrations = store::list(env, &owner).await?;
    for i in &integrations {
        store::delete(env, &i.id).await?;
    }
    let mut towns = 0u32;
    loop {
        let page = crate::dos::owner::stub(env, &owner)?
            .call(gastown_core::protocol::owner::ListTowns::default())
            .await?
            .parse()?;
        if page.is_empty() {
            break;
        }
        for town in page {
            let delete = gastown_core::protocol::owner::DeleteTown { town_id: town.id };
            match crate::dos::owner::stub(env, &owner)?.call(delete).await {
                Ok(_) | Err(ApiError::NotFound(_)) => towns += 1,
                Err(e) => return Err(e),
            }
        }
    }
    // Org towns acting as the user stop and act as no one, until an org owner claims them.
    let mut org_towns = 0u32;
    for (town_id, org) in crate::org_towns::of_user(env, user).await? {
        let forget = gastown_core::protocol::owner::ForgetTownUser {
            town_id: town_id.clone(),
            user_id: user.clone(),
        };
        match crate::dos::owner::stub(env, &Owner::Org(org))?
            .call(forget)
            .await
        {
            Ok(_) => org_towns += 1,
            // A row the org's DO does not back: drop it.
            Err(ApiError::NotFound(_)) => crate::org_towns::remove(env, &town_id).await?,
            Err(e) => return Err(e),
        }
    }
    #[derive(Serialize)]
    struct Out {
        deleted: bool,
        towns: u32,
        org_towns: u32,
        integrations: usize,
    }
    Ok(json(
        200,
        &Out {
            deleted: true,
            towns,
            org_towns,
            integrations: integrations.len(),
        },
    ))
}

//! The D1 index of org towns by the user they act as (`org_town_users`): deleting a user's
//! account finds here every org town minting tokens as them. The org's DO is the truth; it
//! writes a row when a town is created or claimed, drops it when the town is deleted or its
//! user is, and its watchdog makes the rows agree with its towns.

use crate::d1::{self, s};
use gastown_core::error::ApiError;
use gastown_core::ids::{OrgId, TownId, UserId};
use gastown_core::model::{Owner, Town, TownStatus};
use serde::Deserialize;
use worker::Env;

/// Records who an org town acts as (dropping its row when it acts as no one: its user was
/// deleted); a personal town has no row.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn record(env: &Env, town: &Town) -> Result<(), ApiError> {
    let (org, user) = match (&town.owner, acting_user(town)) {
        (Owner::User(_), _) => return Ok(()),
        (Owner::Org(_), None) => return remove(env, &town.id).await,
        (Owner::Org(org), Some(user)) => (org, user),
    };
    d1::run(
        env,
        "INSERT OR REPLACE INTO org_town_users (town_id, org_id, user_id) VALUES (?1, ?2, ?3)",
        &[s(town.id.as_str()), s(org.as_str()), s(user.as_str())],
    )
    .await?;
    Ok(())
}

/// The user a town mints tokens as, if any.
fn acting_user(town: &Town) -> Option<&UserId> {
    if town.status == TownStatus::CreatorDeleted {
        return None;
    }
    town.owner_user_id.as_ref()
}

/// Forgets a town.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn remove(env: &Env, town: &TownId) -> Result<(), ApiError> {
    d1::run(
        env,
        "DELETE FROM org_town_users WHERE town_id = ?1",
        &[s(town.as_str())],
    )
    .await?;
    Ok(())
}

/// The org towns acting as `user`, with their org.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn of_user(env: &Env, user: &UserId) -> Result<Vec<(TownId, OrgId)>, ApiError> {
    #[derive(Deserialize)]
    struct Row {
        town_id: TownId,
        org_id: OrgId,
    }
    let rows: Vec<Row> = d1::all(
        env,
        "SELECT town_id, org_id FROM org_town_users WHERE user_id = ?1 ORDER BY town_id",
        &[s(user.as_str())],
    )
    .await?;
    Ok(rows.into_iter().map(|r| (r.town_id, r.org_id)).collect())
}

/// Makes `org`'s rows say what its DO holds: `towns` are all of them.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn reconcile(env: &Env, org: &OrgId, towns: &[Town]) -> Result<(), ApiError> {
    #[derive(Deserialize)]
    struct Row {
        town_id: TownId,
        user_id: UserId,
    }
    let rows: Vec<Row> = d1::all(
        env,
        "SELECT town_id, user_id FROM org_town_users WHERE org_id = ?1",
        &[s(org.as_str())],
    )
    .await?;
    for row in &rows {
        let held = towns
            .iter()
            .find(|t| t.id == row.town_id)
            .and_then(acting_user);
        if held != Some(&row.user_id) {
            remove(env, &row.town_id).await?;
        }
    }
    for town in towns {
        let user = acting_user(town);
        let indexed = rows
            .iter()
            .any(|r| r.town_id == town.id && Some(&r.user_id) == user);
        if !indexed && user.is_some() {
            record(env, town).await?;
        }
    }
    Ok(())
}

//! The D1 rig index: which town and owner DO hold a rig. Internal services that know only a rig
//! id (git-token requests, webhooks) resolve it here instead of fanning out over DOs.
//!
//! The owner DO is the truth; the index converges on it. A lookup checks the owner DO and
//! drops a row whose rig is gone (a rig created while its town was deleted, or a delete whose
//! index step failed), and the owner's watchdog reconciles all of the owner's rows.

use crate::d1::{self, s};
use gastown_core::error::ApiError;
use gastown_core::ids::{OrgId, UserId};
use gastown_core::ids::{RigId, TownId};
use gastown_core::model::{Owner, OwnerType, Rig, Town};
use serde::{Deserialize, Serialize};
use worker::Env;

#[derive(Debug, Serialize, Deserialize)]
pub struct RigLocation {
    pub rig_id: RigId,
    pub town_id: TownId,
    pub owner_type: OwnerType,
    /// The user id of a personal town's owner, or the org id of an org town.
    pub owner_id: String,
    pub created_at: String,
}

impl RigLocation {
    /// The owner DO that holds the rig.
    ///
    /// # Errors
    /// Internal, for a row whose owner id does not parse (never written by this worker).
    pub fn owner(&self) -> Result<Owner, ApiError> {
        match self.owner_type {
            OwnerType::User => UserId::parse(&self.owner_id).map(Owner::User),
            OwnerType::Org => OrgId::parse(&self.owner_id).map(Owner::Org),
        }
        .map_err(|e| ApiError::internal(format!("rig index owner: {e}")))
    }
}

/// Records where `rig` lives.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn insert(env: &Env, rig: &Rig, town: &Town) -> Result<(), ApiError> {
    d1::run(
        env,
        "INSERT OR REPLACE INTO rig_index (rig_id, town_id, owner_type, owner_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[
            s(rig.id.as_str()),
            s(rig.town_id.as_str()),
            s(town.owner.kind().as_str()),
            s(town.owner.id()),
            s(&rig.created_at),
        ],
    )
    .await?;
    Ok(())
}

/// Forgets rigs.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn remove(env: &Env, rig_ids: &[RigId]) -> Result<(), ApiError> {
    if rig_ids.is_empty() {
        return Ok(());
    }
    let statements = rig_ids
        .iter()
        .map(|id| {
            d1::stmt(
                env,
                "DELETE FROM rig_index WHERE rig_id = ?1",
                &[s(id.as_str())],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    d1::db(env)?
        .batch(statements)
        .await
        .map_err(ApiError::internal)?;
    Ok(())
}

/// Where `rig` lives, if it exists.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn find(env: &Env, rig: &RigId) -> Result<Option<RigLocation>, ApiError> {
    d1::first(
        env,
        "SELECT rig_id, town_id, owner_type, owner_id, created_at FROM rig_index WHERE rig_id = ?1",
        &[s(rig.as_str())],
    )
    .await
}

/// The rigs the index places with `owner`.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn rigs_of(env: &Env, owner: &Owner) -> Result<Vec<RigId>, ApiError> {
    #[derive(Deserialize)]
    struct Row {
        rig_id: RigId,
    }
    let rows: Vec<Row> = d1::all(
        env,
        "SELECT rig_id FROM rig_index WHERE owner_type = ?1 AND owner_id = ?2",
        &[s(owner.kind().as_str()), s(owner.id())],
    )
    .await?;
    Ok(rows.into_iter().map(|r| r.rig_id).collect())
}

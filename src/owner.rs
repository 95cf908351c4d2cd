//! Which owner DO holds a town's records. Handlers work with an [`Owner`] and never branch on
//! whether a town is personal or an org's.

use crate::{org_do, user_do};
use gastown_core::error::ApiError;
use gastown_core::ids::{OrgId, UserId};
use gastown_core::model::{OwnerType, Town};
use worker::{Env, Stub};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    User(UserId),
    Org(OrgId),
}

impl Owner {
    /// The owner recorded in a town's identity.
    ///
    /// # Errors
    /// Internal, for an org town without an org id (never written by this worker).
    pub fn of(town: &Town) -> Result<Owner, ApiError> {
        match town.owner_type {
            OwnerType::User => UserId::parse(&town.owner_user_id)
                .map(Owner::User)
                .map_err(|e| ApiError::internal(format!("town {} owner id: {e}", town.id))),
            OwnerType::Org => town.organization_id.clone().map(Owner::Org).ok_or_else(|| {
                ApiError::internal(format!("org town {} has no organization_id", town.id))
            }),
        }
    }

    /// The owner's DO.
    ///
    /// # Errors
    /// Internal, when the binding is missing.
    pub fn stub(&self, env: &Env) -> Result<Stub, ApiError> {
        match self {
            Owner::User(user) => user_do::stub(env, user),
            Owner::Org(org) => org_do::stub(env, org),
        }
    }

    /// The id recorded in the rig index.
    pub fn id(&self) -> &str {
        match self {
            Owner::User(user) => user.as_str(),
            Owner::Org(org) => org.as_str(),
        }
    }
}

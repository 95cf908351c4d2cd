//! `GastownUserDO`: one per user id, holding the user's personal towns and their rigs, with the
//! watchdog alarm. All behaviour is in [`OwnerCore`], shared with `GastownOrgDO`.

use crate::owner_store::OwnerCore;
use gastown_core::error::ApiError;
use gastown_core::ids::UserId;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State, Stub};

pub const BINDING: &str = "GASTOWN_USER";

/// The DO of `user`.
///
/// # Errors
/// Internal, when the binding is missing.
pub fn stub(env: &Env, user: &UserId) -> std::result::Result<Stub, ApiError> {
    env.durable_object(BINDING)
        .and_then(|ns| ns.get_by_name(user.as_str()))
        .map_err(ApiError::internal)
}

#[durable_object]
pub struct GastownUserDO {
    core: OwnerCore,
}

impl DurableObject for GastownUserDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            core: OwnerCore::new(state, env),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.core.fetch(req).await
    }

    async fn alarm(&self) -> Result<Response> {
        self.core.alarm().await
    }
}

//! `GastownOrgDO`: one per organisation id, holding the org-owned towns (each with its `created_by_user_id`) and their rigs, with the
//! watchdog alarm. All behaviour is in [`OwnerCore`], shared with `GastownUserDO`.

use crate::owner_store::OwnerCore;
use gastown_core::error::ApiError;
use gastown_core::ids::OrgId;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State, Stub};

pub const BINDING: &str = "GASTOWN_ORG";

/// The DO of `org`.
///
/// # Errors
/// Internal, when the binding is missing.
pub fn stub(env: &Env, org: &OrgId) -> std::result::Result<Stub, ApiError> {
    env.durable_object(BINDING)
        .and_then(|ns| ns.get_by_name(org.as_str()))
        .map_err(ApiError::internal)
}

#[durable_object]
pub struct GastownOrgDO {
    core: OwnerCore,
}

impl DurableObject for GastownOrgDO {
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

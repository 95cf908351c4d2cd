//! Typed claims of each token kind, as handlers receive them after verification.

use crate::ids::{AgentId, OrgId, RigId, TownId, UserId};
use serde::{Deserialize, Serialize};

/// The four token kinds of DESIGN.md §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Dashboard user token (`NEXTAUTH_SECRET`).
    User,
    /// Per-town container token, `scope: "container"` (`GASTOWN_JWT_SECRET`).
    Container,
    /// Legacy per-agent token, no `scope` (`GASTOWN_JWT_SECRET`).
    Agent,
    /// Container → LLM gateway token, `type: "gastown_sandbox"` (`NEXTAUTH_SECRET`).
    Sandbox,
}

/// Longest lifetime (`exp - iat`) of a dashboard user token: 1 h.
pub const USER_TOKEN_MAX_LIFETIME_SECS: i64 = 60 * 60;
/// Longest lifetime (`exp - iat`) of a container token: 8 h.
pub const CONTAINER_TOKEN_MAX_LIFETIME_SECS: i64 = 8 * 60 * 60;
/// Longest lifetime (`exp - iat`) of a legacy agent token: 8 h.
pub const AGENT_TOKEN_MAX_LIFETIME_SECS: i64 = 8 * 60 * 60;
/// Longest lifetime (`exp - iat`) of a sandbox (gateway) token: 24 h.
pub const SANDBOX_TOKEN_MAX_LIFETIME_SECS: i64 = 24 * 60 * 60;

impl TokenKind {
    /// The longest lifetime a token of this kind may have, measured from its `iat` (and, with
    /// clock skew, from now): DESIGN.md §3.
    pub fn max_lifetime_secs(self) -> i64 {
        match self {
            TokenKind::User => USER_TOKEN_MAX_LIFETIME_SECS,
            TokenKind::Container => CONTAINER_TOKEN_MAX_LIFETIME_SECS,
            TokenKind::Agent => AGENT_TOKEN_MAX_LIFETIME_SECS,
            TokenKind::Sandbox => SANDBOX_TOKEN_MAX_LIFETIME_SECS,
        }
    }
}

/// A role in an organisation, as the user token states it. Roles this worker does not know are
/// kept as `Other` so that a new dashboard role never breaks sign-in, and never grants access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgRole {
    Owner,
    Member,
    BillingManager,
    #[serde(other)]
    Other,
}

impl OrgRole {
    /// Owners and members use Gastown; billing managers and unknown roles do not.
    pub fn is_gastown_member(self) -> bool {
        matches!(self, OrgRole::Owner | OrgRole::Member)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgMembership {
    pub org_id: OrgId,
    pub role: OrgRole,
}

/// A verified dashboard user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserClaims {
    pub user_id: UserId,
    pub org_memberships: Vec<OrgMembership>,
    /// `Some(false)` means the dashboard says this user may not use Gastown.
    pub gastown_access: Option<bool>,
    pub is_admin: bool,
    pub expires_at: i64,
}

impl UserClaims {
    /// The caller's role in `org`, if the token names one.
    pub fn role_in(&self, org: &OrgId) -> Option<OrgRole> {
        self.org_memberships
            .iter()
            .find(|m| &m.org_id == org)
            .map(|m| m.role)
    }
}

/// A verified container token: one per town, shared by all its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerClaims {
    pub town_id: TownId,
    pub user_id: String,
    /// The town's token generation when it was minted; `None` for a token minted before
    /// generations existed, which no town honours.
    pub generation: Option<u64>,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// A verified legacy agent token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentClaims {
    pub agent_id: AgentId,
    pub rig_id: RigId,
    pub town_id: TownId,
    pub user_id: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// A verified sandbox (gateway) token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxClaims {
    pub user_id: String,
    pub town_id: TownId,
    pub organization_id: Option<String>,
    pub expires_at: i64,
}

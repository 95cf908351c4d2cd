//! How a town config is shown: every secret masked, ownership taken from the town.
//!
//! [`TownConfig::masked`] is the one place that lists the secrets (the `town_config` module doc
//! names them) for display, so a secret field added to the config must be masked here, and
//! resolved from its mask in `patch`, or it would be shown in clear.

use super::types::{GitAuth, TownConfig};
use crate::ids::{OrgId, UserId};
use crate::model::{OwnerType, Town};
use serde::{Deserialize, Serialize};

pub const MASK: &str = "****";
/// Secrets shorter than this are shown as `****` alone.
pub const MASK_MIN_LEN: usize = 12;

/// The config as the API shows it: secrets masked, ownership from the town's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigView {
    #[serde(flatten)]
    pub config: TownConfig,
    pub owner_user_id: Option<UserId>,
    pub owner_type: OwnerType,
    pub organization_id: Option<OrgId>,
    pub created_by_user_id: UserId,
}

/// `****` + last four characters, or `****` alone for short values.
pub fn mask(secret: &str) -> String {
    let n = secret.chars().count();
    if n < MASK_MIN_LEN {
        return MASK.to_owned();
    }
    let tail: String = secret.chars().skip(n - 4).collect();
    format!("{MASK}{tail}")
}

impl TownConfig {
    /// A copy with every secret masked.
    pub fn masked(&self) -> TownConfig {
        let m = |s: &Option<String>| s.as_deref().map(mask);
        TownConfig {
            env_vars: self
                .env_vars
                .iter()
                .map(|(k, v)| (k.clone(), mask(v)))
                .collect(),
            git_auth: GitAuth {
                github_token: m(&self.git_auth.github_token),
                gitlab_token: m(&self.git_auth.gitlab_token),
                ..self.git_auth.clone()
            },
            kilocode_token: m(&self.kilocode_token),
            github_cli_pat: m(&self.github_cli_pat),
            ..self.clone()
        }
    }

    /// The API view of this config for `town`.
    pub fn view(&self, town: &Town) -> ConfigView {
        ConfigView {
            config: self.masked(),
            owner_user_id: town.owner_user_id.clone(),
            owner_type: town.owner.kind(),
            organization_id: town.owner.org().cloned(),
            created_by_user_id: town.created_by_user_id.clone(),
        }
    }
}

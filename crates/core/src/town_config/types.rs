//! The stored town config (DESIGN.md §6): its types and their JSON.
//!
//! A stored row must always read back: every field added after the first rows were written
//! carries `#[serde(default)]`, and the tests pin the serialized shape. Nothing here checks a
//! value; what a config may hold is decided by `patch`, the only way a config changes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitAuth {
    #[serde(default)]
    pub github_token: Option<String>,
    #[serde(default)]
    pub gitlab_token: Option<String>,
    #[serde(default)]
    pub gitlab_instance_url: Option<String>,
    #[serde(default)]
    pub platform_integration_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleModels {
    #[serde(default)]
    pub mayor: Option<String>,
    #[serde(default)]
    pub polecat: Option<String>,
    #[serde(default)]
    pub refinery: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeStrategy {
    /// The refinery merges to the default branch itself.
    Direct,
    /// The refinery opens a pull / merge request.
    PullRequest,
}

/// Per-rig settings that take precedence over the town's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RigOverride {
    #[serde(default)]
    pub default_model: Option<String>,
    #[serde(default)]
    pub role_models: RoleModels,
    #[serde(default)]
    pub max_polecats: Option<u32>,
    #[serde(default)]
    pub merge_strategy: Option<MergeStrategy>,
}

/// The stored config. Fields added later carry `#[serde(default)]` so old rows still read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TownConfig {
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub git_auth: GitAuth,
    #[serde(default)]
    pub kilocode_token: Option<String>,
    #[serde(default)]
    pub default_model: Option<String>,
    #[serde(default)]
    pub role_models: RoleModels,
    #[serde(default)]
    pub small_model: Option<String>,
    #[serde(default)]
    pub github_cli_pat: Option<String>,
    #[serde(default)]
    pub git_author_name: Option<String>,
    #[serde(default)]
    pub git_author_email: Option<String>,
    #[serde(default)]
    pub disable_ai_coauthor: bool,
    /// Agents commit and push as the town's owner (their GitHub App user token) when it works
    /// for the repository; the App's bot otherwise.
    #[serde(default)]
    pub commit_as_user: bool,
    #[serde(default)]
    pub max_polecats_per_rig: Option<u32>,
    #[serde(default)]
    pub merge_strategy: Option<MergeStrategy>,
    /// Keyed by rig id; every key names a rig of the town (checked by the town's DO).
    #[serde(default)]
    pub rig_overrides: BTreeMap<String, RigOverride>,
}

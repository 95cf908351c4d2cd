//! Town config (DESIGN.md §6): what it holds, how a PATCH changes it, and how it is shown.
//!
//! Secrets are `kilocode_token`, `github_cli_pat`, `git_auth.github_token`,
//! `git_auth.gitlab_token` and every `env_vars` value. They are never shown in clear: every
//! caller sees `****` plus the last four characters (or only `****` for a value shorter than
//! [`MASK_MIN_LEN`], whose last four characters would give most of it away). This is stricter
//! than showing them to owners: no route but a token-issuing one returns a secret.
//!
//! A PATCH is a JSON object of the fields to change. `null` clears a field; a secret sent back
//! exactly as it was shown keeps the stored value; ownership fields are ignored; unknown fields
//! are refused (422), so a misspelt field is not silently dropped.

use crate::body::parse_object;
use crate::error::ApiError;
use crate::model::Town;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub const MASK: &str = "****";
/// Secrets shorter than this are shown as `****` alone.
pub const MASK_MIN_LEN: usize = 12;
pub const MAX_ENV_VARS: usize = 100;
pub const MAX_ENV_KEY: usize = 128;
pub const MAX_ENV_VALUE: usize = 8 * 1024;
pub const MAX_SECRET: usize = 4 * 1024;
pub const MAX_MODEL: usize = 200;
pub const MAX_AUTHOR_NAME: usize = 200;
pub const MAX_EMAIL: usize = 254;
pub const MAX_URL: usize = 2048;
pub const MAX_POLECATS: u64 = 50;
pub const MAX_RIG_OVERRIDES: usize = 100;

/// Env var names the platform sets; users may not override them.
const RESERVED_ENV: &[&str] = &[
    "GIT_TOKEN",
    "GITHUB_TOKEN",
    "GITLAB_TOKEN",
    "GITLAB_INSTANCE_URL",
    "GITHUB_CLI_PAT",
    "GH_TOKEN",
    "KILOCODE_TOKEN",
    "KILO_JWT",
    "GASTOWN_CONTAINER_TOKEN",
    "PATH",
    "HOME",
];
/// Prefixes the platform owns.
const RESERVED_ENV_PREFIXES: &[&str] = &["GASTOWN_", "KILO_"];

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
    #[serde(default)]
    pub max_polecats_per_rig: Option<u32>,
    #[serde(default)]
    pub merge_strategy: Option<MergeStrategy>,
    /// Keyed by rig id; every key names a rig of the town (checked by the town's DO).
    #[serde(default)]
    pub rig_overrides: BTreeMap<String, RigOverride>,
}

/// The config as the API shows it: secrets masked, ownership from the town's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigView {
    #[serde(flatten)]
    pub config: TownConfig,
    pub owner_user_id: String,
    pub owner_type: crate::model::OwnerType,
    pub organization_id: Option<crate::ids::OrgId>,
    pub created_by_user_id: crate::ids::UserId,
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
            owner_type: town.owner_type,
            organization_id: town.organization_id.clone(),
            created_by_user_id: town.created_by_user_id.clone(),
        }
    }

    /// Applies a PATCH body to a copy of this config.
    ///
    /// # Errors
    /// 400 for a body that is not a JSON object; 422 naming the first invalid field. The stored
    /// config is untouched either way: the caller writes the result only on success.
    pub fn patched(&self, body: &[u8]) -> Result<TownConfig, ApiError> {
        let map = parse_object(body)?;
        let mut next = self.clone();
        for (key, value) in &map {
            match key.as_str() {
                "owner_user_id" | "owner_type" | "organization_id" | "created_by_user_id" => {}
                "env_vars" => next.env_vars = env_vars(value, &self.env_vars)?,
                "git_auth" => next.git_auth = git_auth(value, &self.git_auth)?,
                "kilocode_token" => next.kilocode_token = secret(key, value, &self.kilocode_token)?,
                "github_cli_pat" => next.github_cli_pat = secret(key, value, &self.github_cli_pat)?,
                "default_model" => next.default_model = text(key, value, MAX_MODEL)?,
                "small_model" => next.small_model = text(key, value, MAX_MODEL)?,
                "role_models" => next.role_models = role_models(value, &self.role_models)?,
                "git_author_name" => next.git_author_name = text(key, value, MAX_AUTHOR_NAME)?,
                "git_author_email" => {
                    next.git_author_email = text(key, value, MAX_EMAIL)?;
                    if let Some(email) = &next.git_author_email {
                        check_email(email)?;
                    }
                }
                "disable_ai_coauthor" => {
                    next.disable_ai_coauthor = match value {
                        Value::Bool(b) => *b,
                        Value::Null => false,
                        _ => return Err(ApiError::invalid(key, "must be true or false")),
                    }
                }
                "max_polecats_per_rig" => next.max_polecats_per_rig = polecats(key, value)?,
                "merge_strategy" => next.merge_strategy = merge_strategy(key, value)?,
                "rig_overrides" => next.rig_overrides = rig_overrides(value, &self.rig_overrides)?,
                other => return Err(ApiError::invalid(other, "is not a config field")),
            }
        }
        Ok(next)
    }
}

fn polecats(field: &str, value: &Value) -> Result<Option<u32>, ApiError> {
    let bad = || {
        ApiError::invalid(
            field,
            format!("must be a whole number from 1 to {MAX_POLECATS}"),
        )
    };
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .filter(|n| (1..=MAX_POLECATS).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn merge_strategy(field: &str, value: &Value) -> Result<Option<MergeStrategy>, ApiError> {
    match value {
        Value::Null => Ok(None),
        other => serde_json::from_value(other.clone())
            .map(Some)
            .map_err(|_| ApiError::invalid(field, "must be \"direct\" or \"pull_request\"")),
    }
}

/// Merges per rig: an object replaces that rig's override, `null` removes it; `null` for the
/// whole field removes them all.
fn rig_overrides(
    value: &Value,
    stored: &BTreeMap<String, RigOverride>,
) -> Result<BTreeMap<String, RigOverride>, ApiError> {
    let Some(map) = object("rig_overrides", value)? else {
        return Ok(BTreeMap::new());
    };
    let mut next = stored.clone();
    for (rig, value) in map {
        let field = format!("rig_overrides.{rig}");
        crate::ids::RigId::parse(rig).map_err(|e| ApiError::invalid(&field, format!("key {e}")))?;
        let Some(fields) = object(&field, value)? else {
            next.remove(rig);
            continue;
        };
        let mut o = RigOverride::default();
        for (key, value) in fields {
            let sub = format!("{field}.{key}");
            match key.as_str() {
                "default_model" => o.default_model = text(&sub, value, MAX_MODEL)?,
                "role_models" => {
                    o.role_models =
                        role_models(value, &RoleModels::default()).map_err(|e| rename(e, &sub))?
                }
                "max_polecats" => o.max_polecats = polecats(&sub, value)?,
                "merge_strategy" => o.merge_strategy = merge_strategy(&sub, value)?,
                _ => return Err(ApiError::invalid(sub, "is not a rig override field")),
            }
        }
        next.insert(rig.clone(), o);
    }
    if next.len() > MAX_RIG_OVERRIDES {
        return Err(ApiError::invalid(
            "rig_overrides",
            format!("may name at most {MAX_RIG_OVERRIDES} rigs"),
        ));
    }
    Ok(next)
}

/// Prefixes a nested 422's field with where it was nested.
fn rename(err: ApiError, prefix: &str) -> ApiError {
    match err {
        ApiError::Invalid { field, message } => {
            let tail = field.strip_prefix("role_models").unwrap_or(&field);
            ApiError::invalid(format!("{prefix}{tail}"), message)
        }
        other => other,
    }
}

/// An optional plain string: `null` clears, a string is trimmed and capped.
fn text(field: &str, value: &Value, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            if s.chars().count() > max {
                return Err(ApiError::invalid(
                    field,
                    format!("must be at most {max} characters"),
                ));
            }
            if s.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    field,
                    "must not contain control characters",
                ));
            }
            Ok(Some(s.to_owned()))
        }
        _ => Err(ApiError::invalid(field, "must be a string or null")),
    }
}

/// A secret: like [`text`], but the masked form of the stored value keeps the stored value, and
/// any other masked-looking value is refused rather than stored as a broken secret.
fn secret(field: &str, value: &Value, stored: &Option<String>) -> Result<Option<String>, ApiError> {
    let next = text(field, value, MAX_SECRET)?;
    match (&next, stored) {
        (Some(new), Some(old)) if *new == mask(old) => Ok(Some(old.clone())),
        (Some(new), _) if new.starts_with(MASK) => Err(ApiError::invalid(
            field,
            "is a masked value that does not match the stored one; send the real value or null",
        )),
        _ => Ok(next),
    }
}

fn object<'a>(field: &str, value: &'a Value) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        _ => Err(ApiError::invalid(field, "must be an object or null")),
    }
}

/// Replaces the whole map. A masked value for a key that exists keeps that key's stored value.
fn env_vars(
    value: &Value,
    stored: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(map) = object("env_vars", value)? else {
        return Ok(BTreeMap::new());
    };
    if map.len() > MAX_ENV_VARS {
        return Err(ApiError::invalid(
            "env_vars",
            format!("may hold at most {MAX_ENV_VARS} variables"),
        ));
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let field = format!("env_vars.{key}");
        check_env_key(key, &field)?;
        let Value::String(v) = value else {
            return Err(ApiError::invalid(field, "must be a string"));
        };
        if v.chars().count() > MAX_ENV_VALUE {
            return Err(ApiError::invalid(
                field,
                format!("must be at most {MAX_ENV_VALUE} characters"),
            ));
        }
        if v.contains('\0') {
            return Err(ApiError::invalid(field, "must not contain NUL"));
        }
        let kept = match stored.get(key) {
            Some(old) if *v == mask(old) => old.clone(),
            _ if v.starts_with(MASK) => {
                return Err(ApiError::invalid(
                    field,
                    "is a masked value that does not match the stored one",
                ))
            }
            _ => v.clone(),
        };
        out.insert(key.clone(), kept);
    }
    Ok(out)
}

fn check_env_key(key: &str, field: &str) -> Result<(), ApiError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_ENV_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(ApiError::invalid(
            field,
            "names must be A-Z, 0-9 and _, not starting with a digit",
        ));
    }
    if RESERVED_ENV.contains(&key) || RESERVED_ENV_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Err(ApiError::invalid(field, "is reserved by the platform"));
    }
    Ok(())
}

/// Merges the fields present.
fn git_auth(value: &Value, stored: &GitAuth) -> Result<GitAuth, ApiError> {
    let Some(map) = object("git_auth", value)? else {
        return Ok(GitAuth::default());
    };
    let mut next = stored.clone();
    for (key, value) in map {
        let field = format!("git_auth.{key}");
        match key.as_str() {
            "github_token" => next.github_token = secret(&field, value, &stored.github_token)?,
            "gitlab_token" => next.gitlab_token = secret(&field, value, &stored.gitlab_token)?,
            "gitlab_instance_url" => {
                next.gitlab_instance_url = text(&field, value, MAX_URL)?;
                if let Some(url) = &next.gitlab_instance_url {
                    check_https_url(url, &field)?;
                }
            }
            "platform_integration_id" => next.platform_integration_id = text(&field, value, 128)?,
            _ => return Err(ApiError::invalid(field, "is not a git_auth field")),
        }
    }
    Ok(next)
}

/// Merges the roles present.
fn role_models(value: &Value, stored: &RoleModels) -> Result<RoleModels, ApiError> {
    let Some(map) = object("role_models", value)? else {
        return Ok(RoleModels::default());
    };
    let mut next = stored.clone();
    for (key, value) in map {
        let field = format!("role_models.{key}");
        let slot = match key.as_str() {
            "mayor" => &mut next.mayor,
            "polecat" => &mut next.polecat,
            "refinery" => &mut next.refinery,
            _ => {
                return Err(ApiError::invalid(
                    field,
                    "is not a role (mayor, polecat, refinery)",
                ))
            }
        };
        *slot = text(&field, value, MAX_MODEL)?;
    }
    Ok(next)
}

fn check_email(email: &str) -> Result<(), ApiError> {
    let bad = || ApiError::invalid("git_author_email", "must be an email address");
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '<' | '>' | '"' | ',' | ';'));
    ok.then_some(()).ok_or_else(bad)
}

fn check_https_url(url: &str, field: &str) -> Result<(), ApiError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ApiError::invalid(field, "must be an https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || url.chars().any(char::is_whitespace) {
        return Err(ApiError::invalid(
            field,
            "must be an https:// URL with a host and no credentials",
        ));
    }
    Ok(())
}

/// The env a town's container runs with, derived from its config. A key whose setting is
/// cleared is absent here, so the container side deletes it rather than keeping a stale value.
pub fn container_env(config: &TownConfig) -> BTreeMap<String, String> {
    let mut env = config.env_vars.clone();
    let mut put = |key: &str, value: Option<&String>| {
        if let Some(v) = value {
            env.insert(key.to_owned(), v.clone());
        }
    };
    put(
        "GIT_TOKEN",
        config
            .git_auth
            .github_token
            .as_ref()
            .or(config.git_auth.gitlab_token.as_ref()),
    );
    put("GITLAB_TOKEN", config.git_auth.gitlab_token.as_ref());
    put(
        "GITLAB_INSTANCE_URL",
        config.git_auth.gitlab_instance_url.as_ref(),
    );
    put("GITHUB_CLI_PAT", config.github_cli_pat.as_ref());
    put("KILOCODE_TOKEN", config.kilocode_token.as_ref());
    put("GASTOWN_GIT_AUTHOR_NAME", config.git_author_name.as_ref());
    put("GASTOWN_GIT_AUTHOR_EMAIL", config.git_author_email.as_ref());
    put("GASTOWN_DEFAULT_MODEL", config.default_model.as_ref());
    put("GASTOWN_SMALL_MODEL", config.small_model.as_ref());
    put("GASTOWN_MAYOR_MODEL", config.role_models.mayor.as_ref());
    put("GASTOWN_POLECAT_MODEL", config.role_models.polecat.as_ref());
    put(
        "GASTOWN_REFINERY_MODEL",
        config.role_models.refinery.as_ref(),
    );
    if config.disable_ai_coauthor {
        env.insert("GASTOWN_DISABLE_AI_COAUTHOR".to_owned(), "1".to_owned());
    }
    if let Some(n) = config.max_polecats_per_rig {
        env.insert("GASTOWN_MAX_POLECATS_PER_RIG".to_owned(), n.to_string());
    }
    if let Some(strategy) = config.merge_strategy {
        let s = match strategy {
            MergeStrategy::Direct => "direct",
            MergeStrategy::PullRequest => "pull_request",
        };
        env.insert("GASTOWN_MERGE_STRATEGY".to_owned(), s.to_owned());
    }
    if !config.rig_overrides.is_empty() {
        if let Ok(json) = serde_json::to_string(&config.rig_overrides) {
            env.insert("GASTOWN_RIG_OVERRIDES".to_owned(), json);
        }
    }
    env
}

#[cfg(test)]
#[path = "town_config_tests.rs"]
mod tests;

//! A PATCH of the town config: the body walked by hand into a typed [`ConfigPatch`]
//! ([`ConfigPatch::parse`]), the checks the patch alone allows ([`ConfigPatch::validate`]), and
//! applying it to the stored config ([`TownConfig::apply`]), with the limits they enforce.
//!
//! Every check of a field's value belongs in `validate`: `apply` re-runs it, which is what keeps
//! a patch deserialized by the town's Durable Object from storing what `parse` would refuse.

use super::env::check_env_key;
use super::masking::{mask, MASK};
use super::types::{GitAuth, MergeStrategy, RigOverride, RoleModels, TownConfig};
use crate::body::parse_object;
use crate::error::ApiError;
use crate::ids::RigId;
use crate::text::{self, Lines};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub const MAX_ENV_VARS: usize = 100;
pub const MAX_ENV_VALUE: usize = 8 * 1024;
pub const MAX_SECRET: usize = 4 * 1024;
pub const MAX_MODEL: usize = 200;
pub const MAX_AUTHOR_NAME: usize = 200;
pub const MAX_EMAIL: usize = 254;
pub const MAX_URL: usize = 2048;
pub const MAX_POLECATS: u64 = 50;
pub const MAX_RIG_OVERRIDES: usize = 100;

/// Secrets bound to their destination: `(destination field, secret field)`. A PATCH that
/// changes the destination (to another value, or to `null`) clears the secret too, unless the
/// same PATCH sends a new value for the secret; sending back its mask does not keep it. Without
/// this, a PATCH of `gitlab_instance_url` alone would hand the stored `gitlab_token` to
/// whichever host it names. A destination sent again unchanged is no change.
pub const SECRET_DESTINATIONS: &[(&str, &str)] =
    &[("git_auth.gitlab_instance_url", "git_auth.gitlab_token")];

/// How [`GitAuthPatch::apply`] reads and clears each pair of [`SECRET_DESTINATIONS`], in order.
pub(super) struct Binding {
    dest: fn(&GitAuth) -> &Option<String>,
    token: fn(&mut GitAuth) -> &mut Option<String>,
    sent: fn(&GitAuthPatch) -> &Change<Secret>,
}

pub(super) const BINDINGS: [Binding; SECRET_DESTINATIONS.len()] = [Binding {
    dest: |g| &g.gitlab_instance_url,
    token: |g| &mut g.gitlab_token,
    sent: |p| &p.gitlab_token,
}];

impl TownConfig {
    /// Applies a PATCH body to a copy of this config: [`ConfigPatch::parse`] then
    /// [`TownConfig::apply`].
    ///
    /// # Errors
    /// As those two.
    pub fn patched(&self, body: &[u8]) -> Result<TownConfig, ApiError> {
        self.apply(&ConfigPatch::parse(body)?)
    }

    /// The config after `patch`, checked against this (stored) config: a masked secret keeps the
    /// stored value only if it is that value's mask, and a secret whose destination changes is
    /// cleared unless the patch sends a new value for it ([`SECRET_DESTINATIONS`]).
    ///
    /// # Errors
    /// 422 naming the field: whatever [`ConfigPatch::validate`] refuses, a mask that does not
    /// match the stored secret, more than [`MAX_RIG_OVERRIDES`] rig overrides. Nothing is
    /// changed either way: the caller stores the result only on success.
    pub fn apply(&self, patch: &ConfigPatch) -> Result<TownConfig, ApiError> {
        patch.validate()?;
        let mut next = self.clone();
        match &patch.env_vars {
            Change::Keep => {}
            Change::Clear => next.env_vars.clear(),
            Change::Set(vars) => next.env_vars = apply_env_vars(vars, &self.env_vars)?,
        }
        match &patch.git_auth {
            Change::Keep => {}
            Change::Clear => next.git_auth = GitAuth::default(),
            Change::Set(g) => next.git_auth = g.apply(&self.git_auth)?,
        }
        next.kilocode_token = minted_secret(
            "kilocode_token",
            &patch.kilocode_token,
            &self.kilocode_token,
        )?;
        next.github_cli_pat = resolve_secret(
            "github_cli_pat",
            &patch.github_cli_pat,
            &self.github_cli_pat,
        )?;
        next.default_model = patch.default_model.applied(&self.default_model);
        next.small_model = patch.small_model.applied(&self.small_model);
        match &patch.role_models {
            Change::Keep => {}
            Change::Clear => next.role_models = RoleModels::default(),
            Change::Set(r) => next.role_models = r.apply(&self.role_models),
        }
        next.git_author_name = patch.git_author_name.applied(&self.git_author_name);
        next.git_author_email = patch.git_author_email.applied(&self.git_author_email);
        match patch.disable_ai_coauthor {
            Change::Keep => {}
            Change::Clear => next.disable_ai_coauthor = false,
            Change::Set(b) => next.disable_ai_coauthor = b,
        }
        match patch.commit_as_user {
            Change::Keep => {}
            Change::Clear => next.commit_as_user = false,
            Change::Set(b) => next.commit_as_user = b,
        }
        next.max_polecats_per_rig = patch
            .max_polecats_per_rig
            .applied(&self.max_polecats_per_rig);
        next.merge_strategy = patch.merge_strategy.applied(&self.merge_strategy);
        match &patch.rig_overrides {
            Change::Keep => {}
            Change::Clear => next.rig_overrides.clear(),
            Change::Set(per_rig) => {
                for (rig, o) in per_rig {
                    match o {
                        Some(o) => next.rig_overrides.insert(rig.clone(), o.clone()),
                        None => next.rig_overrides.remove(rig),
                    };
                }
                if next.rig_overrides.len() > MAX_RIG_OVERRIDES {
                    return Err(ApiError::invalid(
                        "rig_overrides",
                        format!("may name at most {MAX_RIG_OVERRIDES} rigs"),
                    ));
                }
            }
        }
        Ok(next)
    }
}

/// What a PATCH does to one field: nothing (the field was absent), clear it (`null`), or set it.
///
/// As JSON: `Keep` is left out (every field carries
/// `#[serde(default, skip_serializing_if = "Change::is_keep")]`), `Clear` is `"clear"`, and
/// `Set(v)` is `{"set": v}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<T> Change<T> {
    pub fn is_keep(&self) -> bool {
        matches!(self, Change::Keep)
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> Change<U> {
        match self {
            Change::Keep => Change::Keep,
            Change::Clear => Change::Clear,
            Change::Set(v) => Change::Set(f(v)),
        }
    }

    fn set(&self) -> Option<&T> {
        match self {
            Change::Set(v) => Some(v),
            _ => None,
        }
    }
}

impl<T: Clone> Change<T> {
    /// The value after this change to `stored`.
    fn applied(&self, stored: &Option<T>) -> Option<T> {
        match self {
            Change::Keep => stored.clone(),
            Change::Clear => None,
            Change::Set(v) => Some(v.clone()),
        }
    }
}

/// A secret as a PATCH sends it: a new value, or the mask it was shown (`****…`), which keeps
/// the stored value only if it is that value's mask. `Debug` never prints a value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Secret {
    Value(String),
    Mask(String),
}

impl Secret {
    /// What a string in a PATCH body is: anything starting with `****` is a mask.
    pub fn from_sent(s: String) -> Secret {
        if s.starts_with(MASK) {
            Secret::Mask(s)
        } else {
            Secret::Value(s)
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Secret::Value(s) | Secret::Mask(s) => s,
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Value(****)"),
            Secret::Mask(m) => write!(f, "Mask({m:?})"),
        }
    }
}

/// The `git_auth` part of a PATCH; it merges field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitAuthPatch {
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub github_token: Change<Secret>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub gitlab_token: Change<Secret>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub gitlab_instance_url: Change<String>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub platform_integration_id: Change<String>,
}

impl GitAuthPatch {
    fn apply(&self, stored: &GitAuth) -> Result<GitAuth, ApiError> {
        let mut next = GitAuth {
            github_token: resolve_secret(
                "git_auth.github_token",
                &self.github_token,
                &stored.github_token,
            )?,
            gitlab_token: resolve_secret(
                "git_auth.gitlab_token",
                &self.gitlab_token,
                &stored.gitlab_token,
            )?,
            gitlab_instance_url: self
                .gitlab_instance_url
                .applied(&stored.gitlab_instance_url),
            platform_integration_id: self
                .platform_integration_id
                .applied(&stored.platform_integration_id),
        };
        for b in BINDINGS {
            let moved = (b.dest)(&next) != (b.dest)(stored);
            let resent = matches!((b.sent)(self), Change::Set(Secret::Value(_)));
            if moved && !resent {
                *(b.token)(&mut next) = None;
            }
        }
        Ok(next)
    }
}

/// The `role_models` part of a PATCH; it merges role by role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleModelsPatch {
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub mayor: Change<String>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub polecat: Change<String>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub refinery: Change<String>,
}

impl RoleModelsPatch {
    fn apply(&self, stored: &RoleModels) -> RoleModels {
        RoleModels {
            mayor: self.mayor.applied(&stored.mayor),
            polecat: self.polecat.applied(&stored.polecat),
            refinery: self.refinery.applied(&stored.refinery),
        }
    }
}

/// A validated PATCH of the town config, as the worker hands it to the town's Durable Object.
///
/// Each field is [`Change::Keep`] when the body did not name it. `env_vars` replaces the whole
/// map; `git_auth` and `role_models` merge field by field; `rig_overrides` merges rig by rig
/// (`None` removes that rig's override). Ownership fields of the body are not represented: they
/// are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub env_vars: Change<BTreeMap<String, Secret>>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub git_auth: Change<GitAuthPatch>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub kilocode_token: Change<Secret>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub default_model: Change<String>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub role_models: Change<RoleModelsPatch>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub small_model: Change<String>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub github_cli_pat: Change<Secret>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub git_author_name: Change<String>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub git_author_email: Change<String>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub disable_ai_coauthor: Change<bool>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub commit_as_user: Change<bool>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub max_polecats_per_rig: Change<u32>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub merge_strategy: Change<MergeStrategy>,
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub rig_overrides: Change<BTreeMap<String, Option<RigOverride>>>,
}

impl ConfigPatch {
    /// Parses and validates a PATCH body. Strings are trimmed and an empty one clears the field
    /// (env var values are kept as sent); a secret starting with `****` is a [`Secret::Mask`].
    ///
    /// # Errors
    /// 413 for an oversized body, 400 for a body that is not a JSON object, 422 naming the first
    /// invalid field (unknown fields included; ownership fields are ignored).
    pub fn parse(body: &[u8]) -> Result<ConfigPatch, ApiError> {
        let map = parse_object(body)?;
        let mut p = ConfigPatch::default();
        for (key, value) in &map {
            match key.as_str() {
                "owner_user_id" | "owner_type" | "organization_id" | "created_by_user_id" => {}
                "env_vars" => p.env_vars = env_vars_change(value)?,
                "git_auth" => p.git_auth = git_auth_change(value)?,
                "kilocode_token" => p.kilocode_token = secret_change(key, value)?,
                "github_cli_pat" => p.github_cli_pat = secret_change(key, value)?,
                "default_model" => p.default_model = text_change(key, value)?,
                "small_model" => p.small_model = text_change(key, value)?,
                "role_models" => p.role_models = role_models_change(key, value)?,
                "git_author_name" => p.git_author_name = text_change(key, value)?,
                "git_author_email" => p.git_author_email = text_change(key, value)?,
                "disable_ai_coauthor" => p.disable_ai_coauthor = bool_change(key, value)?,
                "commit_as_user" => p.commit_as_user = bool_change(key, value)?,
                "max_polecats_per_rig" => p.max_polecats_per_rig = polecats_change(key, value)?,
                "merge_strategy" => p.merge_strategy = merge_strategy_change(key, value)?,
                "rig_overrides" => p.rig_overrides = rig_overrides_change(value)?,
                other => return Err(ApiError::invalid(other, "is not a config field")),
            }
        }
        p.validate()?;
        Ok(p)
    }

    /// The checks that need no stored config: lengths, control characters, env var names and
    /// values, URLs, email, ranges, rig ids. [`ConfigPatch::parse`] and [`TownConfig::apply`]
    /// both run it.
    ///
    /// # Errors
    /// 422 naming the first invalid field.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Change::Set(vars) = &self.env_vars {
            check_env_vars(vars)?;
        }
        if let Change::Set(g) = &self.git_auth {
            check_secret_change("git_auth.github_token", &g.github_token)?;
            check_secret_change("git_auth.gitlab_token", &g.gitlab_token)?;
            let url = "git_auth.gitlab_instance_url";
            if let Some(u) = g.gitlab_instance_url.set() {
                check_trimmed_text(url, u, MAX_URL)?;
                check_https_url(u, url)?;
            }
            check_text_change(
                "git_auth.platform_integration_id",
                &g.platform_integration_id,
                MAX_INTEGRATION_ID,
            )?;
        }
        check_secret_change("kilocode_token", &self.kilocode_token)?;
        check_secret_change("github_cli_pat", &self.github_cli_pat)?;
        check_text_change("default_model", &self.default_model, MAX_MODEL)?;
        check_text_change("small_model", &self.small_model, MAX_MODEL)?;
        if let Change::Set(r) = &self.role_models {
            check_role_models("role_models", r)?;
        }
        check_text_change("git_author_name", &self.git_author_name, MAX_AUTHOR_NAME)?;
        check_text_change("git_author_email", &self.git_author_email, MAX_EMAIL)?;
        if let Some(email) = self.git_author_email.set() {
            check_email(email)?;
        }
        if let Some(n) = self.max_polecats_per_rig.set() {
            check_polecats("max_polecats_per_rig", *n)?;
        }
        if let Change::Set(per_rig) = &self.rig_overrides {
            for (rig, o) in per_rig {
                let field = format!("rig_overrides.{rig}");
                RigId::parse(rig).map_err(|e| ApiError::invalid(&field, format!("key {e}")))?;
                let Some(o) = o else { continue };
                if let Some(m) = &o.default_model {
                    check_trimmed_text(&format!("{field}.default_model"), m, MAX_MODEL)?;
                }
                for (role, m) in [
                    ("mayor", &o.role_models.mayor),
                    ("polecat", &o.role_models.polecat),
                    ("refinery", &o.role_models.refinery),
                ] {
                    if let Some(m) = m {
                        check_trimmed_text(&format!("{field}.role_models.{role}"), m, MAX_MODEL)?;
                    }
                }
                if let Some(n) = o.max_polecats {
                    check_polecats(&format!("{field}.max_polecats"), n)?;
                }
            }
        }
        Ok(())
    }
}

const MAX_INTEGRATION_ID: usize = 128;

/// `null` clears; a string is trimmed, and an empty one clears.
fn text_change(field: &str, value: &Value) -> Result<Change<String>, ApiError> {
    match value {
        Value::Null => Ok(Change::Clear),
        Value::String(s) => {
            let s = s.trim();
            Ok(if s.is_empty() {
                Change::Clear
            } else {
                Change::Set(s.to_owned())
            })
        }
        _ => Err(ApiError::invalid(field, "must be a string or null")),
    }
}

fn secret_change(field: &str, value: &Value) -> Result<Change<Secret>, ApiError> {
    Ok(text_change(field, value)?.map(Secret::from_sent))
}

fn object<'a>(field: &str, value: &'a Value) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        _ => Err(ApiError::invalid(field, "must be an object or null")),
    }
}

fn env_vars_change(value: &Value) -> Result<Change<BTreeMap<String, Secret>>, ApiError> {
    let Some(map) = object("env_vars", value)? else {
        return Ok(Change::Clear);
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
        out.insert(key.clone(), Secret::from_sent(v.clone()));
    }
    Ok(Change::Set(out))
}

fn git_auth_change(value: &Value) -> Result<Change<GitAuthPatch>, ApiError> {
    let Some(map) = object("git_auth", value)? else {
        return Ok(Change::Clear);
    };
    let mut g = GitAuthPatch::default();
    for (key, value) in map {
        let field = format!("git_auth.{key}");
        match key.as_str() {
            "github_token" => g.github_token = secret_change(&field, value)?,
            "gitlab_token" => g.gitlab_token = secret_change(&field, value)?,
            "gitlab_instance_url" => g.gitlab_instance_url = text_change(&field, value)?,
            "platform_integration_id" => g.platform_integration_id = text_change(&field, value)?,
            _ => return Err(ApiError::invalid(field, "is not a git_auth field")),
        }
    }
    Ok(Change::Set(g))
}

fn role_models_change(field: &str, value: &Value) -> Result<Change<RoleModelsPatch>, ApiError> {
    let Some(map) = object(field, value)? else {
        return Ok(Change::Clear);
    };
    let mut r = RoleModelsPatch::default();
    for (key, value) in map {
        let sub = format!("{field}.{key}");
        let slot = match key.as_str() {
            "mayor" => &mut r.mayor,
            "polecat" => &mut r.polecat,
            "refinery" => &mut r.refinery,
            _ => {
                return Err(ApiError::invalid(
                    sub,
                    "is not a role (mayor, polecat, refinery)",
                ))
            }
        };
        *slot = text_change(&sub, value)?;
    }
    Ok(Change::Set(r))
}

fn polecats_change(field: &str, value: &Value) -> Result<Change<u32>, ApiError> {
    match value {
        Value::Null => Ok(Change::Clear),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Change::Set)
            .ok_or_else(|| polecats_error(field)),
        _ => Err(polecats_error(field)),
    }
}

fn polecats_error(field: &str) -> ApiError {
    ApiError::invalid(
        field,
        format!("must be a whole number from 1 to {MAX_POLECATS}"),
    )
}

fn check_polecats(field: &str, n: u32) -> Result<(), ApiError> {
    if (1..=MAX_POLECATS).contains(&u64::from(n)) {
        Ok(())
    } else {
        Err(polecats_error(field))
    }
}

fn merge_strategy_change(field: &str, value: &Value) -> Result<Change<MergeStrategy>, ApiError> {
    match value {
        Value::Null => Ok(Change::Clear),
        other => serde_json::from_value(other.clone())
            .map(Change::Set)
            .map_err(|_| ApiError::invalid(field, "must be \"direct\" or \"pull_request\"")),
    }
}

/// Per rig: an object replaces that rig's override, `null` removes it; `null` for the whole
/// field removes them all.
fn rig_overrides_change(
    value: &Value,
) -> Result<Change<BTreeMap<String, Option<RigOverride>>>, ApiError> {
    let Some(map) = object("rig_overrides", value)? else {
        return Ok(Change::Clear);
    };
    let mut out = BTreeMap::new();
    for (rig, value) in map {
        let field = format!("rig_overrides.{rig}");
        RigId::parse(rig).map_err(|e| ApiError::invalid(&field, format!("key {e}")))?;
        let Some(fields) = object(&field, value)? else {
            out.insert(rig.clone(), None);
            continue;
        };
        let mut o = RigOverride::default();
        for (key, value) in fields {
            let sub = format!("{field}.{key}");
            match key.as_str() {
                "default_model" => o.default_model = text_change(&sub, value)?.applied(&None),
                "role_models" => {
                    o.role_models = match role_models_change(&sub, value)? {
                        Change::Set(r) => r.apply(&RoleModels::default()),
                        _ => RoleModels::default(),
                    }
                }
                "max_polecats" => o.max_polecats = polecats_change(&sub, value)?.applied(&None),
                "merge_strategy" => {
                    o.merge_strategy = merge_strategy_change(&sub, value)?.applied(&None)
                }
                _ => return Err(ApiError::invalid(sub, "is not a rig override field")),
            }
        }
        out.insert(rig.clone(), Some(o));
    }
    Ok(Change::Set(out))
}

/// A plain string as stored: non-blank, trimmed, capped, no control characters.
fn check_trimmed_text(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.is_empty() || s.trim() != s {
        return Err(ApiError::invalid(
            field,
            "must not be blank or start or end with whitespace",
        ));
    }
    text::check_text(field, s, max, Lines::One)
}

fn check_text_change(field: &str, change: &Change<String>, max: usize) -> Result<(), ApiError> {
    change
        .set()
        .map_or(Ok(()), |s| check_trimmed_text(field, s, max))
}

/// A secret is text like any other; a value may not look like a mask, nor a mask like a value.
fn check_secret_change(field: &str, change: &Change<Secret>) -> Result<(), ApiError> {
    let Some(secret) = change.set() else {
        return Ok(());
    };
    check_trimmed_text(field, secret.as_str(), MAX_SECRET)?;
    if secret != &Secret::from_sent(secret.as_str().to_owned()) {
        return Err(ApiError::invalid(
            field,
            "is a masked value that does not match the stored one; send the real value or null",
        ));
    }
    Ok(())
}

fn check_role_models(field: &str, r: &RoleModelsPatch) -> Result<(), ApiError> {
    for (role, change) in [
        ("mayor", &r.mayor),
        ("polecat", &r.polecat),
        ("refinery", &r.refinery),
    ] {
        check_text_change(&format!("{field}.{role}"), change, MAX_MODEL)?;
    }
    Ok(())
}

/// Names per [`check_env_key`]; values capped and free of control characters (`\n` and `\t`
/// included: a value is one line). A mask is only capped here: it must match a stored value,
/// which [`TownConfig::apply`] checks.
fn check_env_vars(vars: &BTreeMap<String, Secret>) -> Result<(), ApiError> {
    if vars.len() > MAX_ENV_VARS {
        return Err(ApiError::invalid(
            "env_vars",
            format!("may hold at most {MAX_ENV_VARS} variables"),
        ));
    }
    for (key, value) in vars {
        let field = format!("env_vars.{key}");
        check_env_key(key, &field)?;
        let v = value.as_str();
        if v.chars().count() > MAX_ENV_VALUE {
            return Err(ApiError::invalid(
                field,
                format!("must be at most {MAX_ENV_VALUE} characters"),
            ));
        }
        match value {
            Secret::Value(v) if v.starts_with(MASK) => {
                return Err(ApiError::invalid(
                    field,
                    "is a masked value that does not match the stored one",
                ))
            }
            Secret::Value(v) if v.chars().any(|c| c.is_ascii_control()) => {
                return Err(ApiError::invalid(
                    field,
                    "must not contain control characters (newline and tab included)",
                ))
            }
            Secret::Mask(m) if !m.starts_with(MASK) => {
                return Err(ApiError::invalid(field, "is not a masked value"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Replaces the whole map. A masked value for a key that exists keeps that key's stored value.
fn apply_env_vars(
    vars: &BTreeMap<String, Secret>,
    stored: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    vars.iter()
        .map(|(key, value)| {
            let kept = match (value, stored.get(key)) {
                (Secret::Value(v), _) => v.clone(),
                (Secret::Mask(m), Some(old)) if *m == mask(old) => old.clone(),
                (Secret::Mask(_), _) => {
                    return Err(ApiError::invalid(
                        format!("env_vars.{key}"),
                        "is a masked value that does not match the stored one",
                    ))
                }
            };
            Ok((key.clone(), kept))
        })
        .collect()
}

/// The value of a secret after `change`: a mask keeps the stored value only if it is its mask.
fn resolve_secret(
    field: &str,
    change: &Change<Secret>,
    stored: &Option<String>,
) -> Result<Option<String>, ApiError> {
    match change {
        Change::Keep => Ok(stored.clone()),
        Change::Clear => Ok(None),
        Change::Set(Secret::Value(v)) => Ok(Some(v.clone())),
        Change::Set(Secret::Mask(m)) => match stored {
            Some(old) if *m == mask(old) => Ok(Some(old.clone())),
            _ => Err(ApiError::invalid(
                field,
                "is a masked value that does not match the stored one; send the real value or null",
            )),
        },
    }
}

fn bool_change(key: &str, value: &Value) -> Result<Change<bool>, ApiError> {
    match value {
        Value::Bool(b) => Ok(Change::Set(*b)),
        Value::Null => Ok(Change::Clear),
        _ => Err(ApiError::invalid(key, "must be true or false")),
    }
}

/// A secret the town mints itself (the gateway token): a PATCH may send back what it was shown
/// (the mask, or `null` while there is none), which changes nothing, and nothing else.
fn minted_secret(
    field: &str,
    change: &Change<Secret>,
    stored: &Option<String>,
) -> Result<Option<String>, ApiError> {
    match change {
        Change::Set(Secret::Mask(m)) if stored.as_deref().is_some_and(|old| *m == mask(old)) => {
            Ok(stored.clone())
        }
        Change::Keep => Ok(stored.clone()),
        Change::Clear if stored.is_none() => Ok(None),
        _ => Err(ApiError::invalid(
            field,
            "is minted by the town and cannot be set or cleared",
        )),
    }
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

//! Env vars: which names a town's `env_vars` may not hold (the platform's reserved names and
//! the deny-list of issue 9), and the env a town's container runs with ([`container_env`]).
//!
//! Every name [`container_env`] derives from a config setting is one [`check_env_key`] refuses,
//! so a user variable can never shadow what the platform sets.
//!
//! `GITHUB_CLI_PAT` (the town's `github_cli_pat`) is read in the container by the control
//! server's `gh` shim, which hands it to each run of the GitHub CLI as `GH_TOKEN`; `GH_TOKEN`
//! itself is never derived here, so no agent holds a copy that could go stale.

use super::types::{MergeStrategy, TownConfig};
use crate::error::ApiError;
use crate::vocab::{GATEWAY_TOKEN_ENV, GH_TOKEN_ENV, GITHUB_CLI_PAT_ENV};
use std::collections::BTreeMap;

pub const MAX_ENV_KEY: usize = 128;

/// Env var names the platform sets; users may not override them.
const RESERVED_ENV: &[&str] = &[
    "GIT_TOKEN",
    "GITHUB_TOKEN",
    "GITLAB_TOKEN",
    "GITLAB_INSTANCE_URL",
    GITHUB_CLI_PAT_ENV,
    GH_TOKEN_ENV,
    "KILOCODE_TOKEN",
    GATEWAY_TOKEN_ENV,
    "GASTOWN_CONTAINER_TOKEN",
    "PATH",
    "HOME",
];
/// Prefixes the platform owns.
const RESERVED_ENV_PREFIXES: &[&str] = &["GASTOWN_", "KILO_"];

/// A family of env var names users may not set, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedEnvFamily {
    pub family: &'static str,
    pub why: &'static str,
    /// Exact names; a name ending in `*` is a prefix (`LD_*` is every name starting `LD_`).
    pub names: &'static [&'static str],
}

/// Env var names a town's `env_vars` may not hold (issue 9), on top of the platform's reserved
/// names (`GIT_TOKEN`, `GITHUB_TOKEN`, `GITLAB_TOKEN`, `GITLAB_INSTANCE_URL`, `GITHUB_CLI_PAT`,
/// `GH_TOKEN`, `KILOCODE_TOKEN`, `KILO_JWT`, `GASTOWN_CONTAINER_TOKEN`, `PATH`, `HOME`, `GASTOWN_*`,
/// `KILO_*`). Each of these makes a program in the container load code, run a command, or trust
/// another server than the one it was told to, so setting one would let a config writer take
/// over the processes that hold the town's tokens.
///
/// Every name must also match `^[A-Z_][A-Z0-9_]{0,127}$`, so lower-case spellings
/// (`https_proxy`, `ld_preload`, `path`) are refused before this table is consulted. A refused
/// name answers 422 with the field `env_vars.<NAME>`. A stored variable that these rules now
/// refuse (from before them) is left out of [`container_env`].
pub const DENIED_ENV_VARS: &[DeniedEnvFamily] = &[
    DeniedEnvFamily {
        family: "dynamic loader",
        why: "loads code into every program",
        names: &["LD_*", "DYLD_*", "GCONV_PATH"],
    },
    DeniedEnvFamily {
        family: "shell start-up",
        why: "runs commands when a shell starts or prints a prompt",
        names: &[
            "BASH_ENV",
            "ENV",
            "BASH_FUNC_*",
            "SHELLOPTS",
            "BASHOPTS",
            "PS4",
            "PROMPT_COMMAND",
            "IFS",
            "ZDOTDIR",
        ],
    },
    DeniedEnvFamily {
        family: "interpreter start-up",
        why: "loads code when node, python, perl, ruby or java starts",
        names: &[
            "NODE_OPTIONS",
            "NODE_PATH",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "PYTHONHOME",
            "PYTHONINSPECT",
            "PERL5LIB",
            "PERL5OPT",
            "PERLLIB",
            "RUBYOPT",
            "RUBYLIB",
            "JAVA_TOOL_OPTIONS",
            "_JAVA_OPTIONS",
            "JDK_JAVA_OPTIONS",
        ],
    },
    DeniedEnvFamily {
        family: "git",
        why: "git runs commands, reads config and sends credentials as these say \
              (GIT_SSH_COMMAND, GIT_ASKPASS, GIT_CONFIG_*, GIT_SSL_NO_VERIFY, GIT_EXEC_PATH, ...)",
        names: &["GIT_*"],
    },
    DeniedEnvFamily {
        family: "ssh",
        why: "ssh runs the askpass program and uses the agent these name",
        names: &["SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "SSH_AUTH_SOCK"],
    },
    DeniedEnvFamily {
        family: "TLS and proxy",
        why: "sends traffic, tokens included, through another server or trusts other certificates",
        names: &[
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "FTP_PROXY",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "NODE_TLS_REJECT_UNAUTHORIZED",
            "NODE_EXTRA_CA_CERTS",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
        ],
    },
];

/// The family of [`DENIED_ENV_VARS`] that `key` falls in, if any.
pub fn denied_env_family(key: &str) -> Option<&'static DeniedEnvFamily> {
    DENIED_ENV_VARS.iter().find(|f| {
        f.names.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == *p,
        })
    })
}

/// Env var names: `^[A-Z_][A-Z0-9_]{0,127}$`, not reserved by the platform, not in
/// [`DENIED_ENV_VARS`].
pub(super) fn check_env_key(key: &str, field: &str) -> Result<(), ApiError> {
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
    if let Some(f) = denied_env_family(key) {
        return Err(ApiError::invalid(
            field,
            format!("is not allowed ({} variables: {})", f.family, f.why),
        ));
    }
    Ok(())
}

/// The env a town's container runs with, derived from its config. A key whose setting is
/// cleared is absent here, so the container side deletes it rather than keeping a stale value.
///
/// User variables that today's rules refuse (stored before those rules: a denied or reserved
/// name, a value with control characters) are left out.
pub fn container_env(config: &TownConfig) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = config
        .env_vars
        .iter()
        .filter(|(k, v)| check_env_key(k, k).is_ok() && !v.chars().any(|c| c.is_ascii_control()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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
    put(GITHUB_CLI_PAT_ENV, config.github_cli_pat.as_ref());
    put(GATEWAY_TOKEN_ENV, config.kilocode_token.as_ref());
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

//! The town config end to end: each test drives a PATCH body through `patched` (or a typed
//! patch through `apply`) and checks the stored, shown and container-env results.

use super::env::check_env_key;
use super::patch::BINDINGS;
use super::*;
use crate::error::ApiError;
use serde_json::{json, Map, Value};

const PAT: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123";
const KILO: &str = "kilo-token-0123456789-wxyz";

fn patch(config: &TownConfig, body: Value) -> Result<TownConfig, ApiError> {
    config.patched(body.to_string().as_bytes())
}

fn field_of(err: ApiError) -> String {
    match err {
        ApiError::Invalid { field, .. } => field,
        other => panic!("expected 422, got {other:?}"),
    }
}

/// The gateway token is minted by the town, never patched: the stored config holds one.
fn stored() -> TownConfig {
    let minted = TownConfig {
        kilocode_token: Some(KILO.into()),
        ..TownConfig::default()
    };
    patch(
        &minted,
        json!({
            "github_cli_pat": PAT,
            "git_auth": {"github_token": "gho_0123456789abcdef", "gitlab_instance_url": "https://gitlab.example.com"},
            "env_vars": {"API_KEY": "sk-live-abcdefghijkl", "SHORT": "abc"},
            "default_model": "anthropic/claude",
            "git_author_email": "dev@example.com",
        }),
    )
    .unwrap()
}

#[test]
fn masks_every_secret() {
    assert_eq!(mask(PAT), "****0123");
    assert_eq!(mask("short"), "****");
    assert_eq!(mask(""), "****");
    let masked = stored().masked();
    assert_eq!(masked.github_cli_pat.as_deref(), Some("****0123"));
    assert_eq!(masked.kilocode_token.as_deref(), Some("****wxyz"));
    assert_eq!(masked.git_auth.github_token.as_deref(), Some("****cdef"));
    assert_eq!(masked.env_vars["API_KEY"], "****ijkl");
    assert_eq!(masked.env_vars["SHORT"], "****");
    assert_eq!(masked.default_model.as_deref(), Some("anthropic/claude"));
    assert_eq!(
        masked.git_auth.gitlab_instance_url.as_deref(),
        Some("https://gitlab.example.com")
    );
    let json = serde_json::to_string(&masked).unwrap();
    for secret in [PAT, KILO, "gho_0123456789abcdef", "sk-live-abcdefghijkl"] {
        assert!(!json.contains(secret), "{secret} leaked");
    }
}

#[test]
fn masked_round_trip_keeps_secrets() {
    let config = stored();
    let shown = serde_json::to_value(config.masked()).unwrap();
    let back = config.patched(shown.to_string().as_bytes()).unwrap();
    assert_eq!(back, config);
}

#[test]
fn null_clears_and_values_replace() {
    let config = stored();
    let next = patch(&config, json!({"github_cli_pat": null})).unwrap();
    assert_eq!(next.github_cli_pat, None);
    assert_eq!(next.git_auth, config.git_auth, "fields not sent stay");
    let next = patch(&config, json!({"git_auth": {"github_token": null}})).unwrap();
    assert_eq!(next.git_auth.github_token, None);
    assert_eq!(
        next.git_auth.gitlab_instance_url, config.git_auth.gitlab_instance_url,
        "git_auth merges"
    );
    let next = patch(&config, json!({"env_vars": {"ONLY": "one"}})).unwrap();
    assert_eq!(next.env_vars.len(), 1, "env_vars replaces the whole map");
}

#[test]
fn a_wrong_masked_value_is_refused() {
    let config = stored();
    assert_eq!(
        field_of(patch(&config, json!({"github_cli_pat": "****9999"})).unwrap_err()),
        "github_cli_pat"
    );
    assert_eq!(
        field_of(patch(&config, json!({"env_vars": {"NEW": "****"}})).unwrap_err()),
        "env_vars.NEW"
    );
    assert_eq!(
        field_of(patch(&TownConfig::default(), json!({"kilocode_token": "****"})).unwrap_err()),
        "kilocode_token"
    );
}

#[test]
fn the_gateway_token_is_minted_never_patched() {
    let config = stored();
    for body in [
        json!({"kilocode_token": "new-kilo-token-000000"}),
        json!({"kilocode_token": null}),
        json!({"kilocode_token": "****9999"}),
    ] {
        assert_eq!(
            field_of(patch(&config, body.clone()).unwrap_err()),
            "kilocode_token",
            "{body}"
        );
    }
    let same = patch(&config, json!({"kilocode_token": mask(KILO)})).unwrap();
    assert_eq!(same, config, "its own mask sent back changes nothing");
}

#[test]
fn ownership_fields_are_ignored() {
    let config = stored();
    let next = patch(&config, json!({"owner_user_id": "evil", "owner_type": "user", "organization_id": "o9", "created_by_user_id": "evil"})).unwrap();
    assert_eq!(next, config);
}

#[test]
fn invalid_fields_are_named() {
    let c = TownConfig::default();
    let cases = [
        (json!({"nope": 1}), "nope"),
        (json!({"default_model": 5}), "default_model"),
        (
            json!({"default_model": "m".repeat(MAX_MODEL + 1)}),
            "default_model",
        ),
        (
            json!({"git_author_email": "not-an-email"}),
            "git_author_email",
        ),
        (json!({"git_author_email": "a@b"}), "git_author_email"),
        (json!({"git_author_email": "a b@c.com"}), "git_author_email"),
        (json!({"disable_ai_coauthor": "yes"}), "disable_ai_coauthor"),
        (json!({"max_polecats_per_rig": 0}), "max_polecats_per_rig"),
        (json!({"max_polecats_per_rig": 51}), "max_polecats_per_rig"),
        (json!({"max_polecats_per_rig": 1.5}), "max_polecats_per_rig"),
        (json!({"merge_strategy": "yolo"}), "merge_strategy"),
        (
            json!({"role_models": {"janitor": "m"}}),
            "role_models.janitor",
        ),
        (json!({"role_models": []}), "role_models"),
        (
            json!({"git_auth": {"gitlab_instance_url": "http://gitlab.example.com"}}),
            "git_auth.gitlab_instance_url",
        ),
        (
            json!({"git_auth": {"gitlab_instance_url": "https://u:p@gitlab.example.com"}}),
            "git_auth.gitlab_instance_url",
        ),
        (json!({"git_auth": {"unknown": "x"}}), "git_auth.unknown"),
        (json!({"env_vars": {"lower": "x"}}), "env_vars.lower"),
        (json!({"env_vars": {"1ABC": "x"}}), "env_vars.1ABC"),
        (
            json!({"env_vars": {"GIT_TOKEN": "x"}}),
            "env_vars.GIT_TOKEN",
        ),
        (
            json!({"env_vars": {"GITHUB_CLI_PAT": "x"}}),
            "env_vars.GITHUB_CLI_PAT",
        ),
        (
            json!({"env_vars": {"GASTOWN_GIT_AUTHOR_NAME": "x"}}),
            "env_vars.GASTOWN_GIT_AUTHOR_NAME",
        ),
        (json!({"env_vars": {"A": 1}}), "env_vars.A"),
        (json!({"env_vars": "A=1"}), "env_vars"),
        (json!({"github_cli_pat": {"v": 1}}), "github_cli_pat"),
    ];
    for (body, field) in cases {
        assert_eq!(
            field_of(patch(&c, body.clone()).unwrap_err()),
            field,
            "{body}"
        );
    }
    let many: Map<String, Value> = (0..=MAX_ENV_VARS)
        .map(|i| (format!("V{i}"), json!("x")))
        .collect();
    assert_eq!(
        field_of(patch(&c, json!({"env_vars": many})).unwrap_err()),
        "env_vars"
    );
    assert!(matches!(c.patched(b"[]"), Err(ApiError::InvalidJson(_))));
}

#[test]
fn valid_values_are_stored() {
    let next = patch(
        &TownConfig::default(),
        json!({
            "role_models": {"mayor": "m1", "polecat": "m2"},
            "small_model": "s",
            "git_author_name": "Dev Eloper",
            "disable_ai_coauthor": true,
            "max_polecats_per_rig": 5,
            "merge_strategy": "pull_request",
            "git_auth": {"platform_integration_id": "pi-1"},
        }),
    )
    .unwrap();
    assert_eq!(next.role_models.mayor.as_deref(), Some("m1"));
    assert_eq!(next.role_models.refinery, None);
    assert_eq!(next.max_polecats_per_rig, Some(5));
    assert_eq!(next.merge_strategy, Some(MergeStrategy::PullRequest));
    assert!(next.disable_ai_coauthor);
}

#[test]
fn stored_json_is_pinned_and_old_rows_read() {
    assert_eq!(
        serde_json::to_string(&TownConfig::default()).unwrap(),
        r#"{"env_vars":{},"git_auth":{"github_token":null,"gitlab_token":null,"gitlab_instance_url":null,"platform_integration_id":null},"kilocode_token":null,"default_model":null,"role_models":{"mayor":null,"polecat":null,"refinery":null},"small_model":null,"github_cli_pat":null,"git_author_name":null,"git_author_email":null,"disable_ai_coauthor":false,"commit_as_user":false,"max_polecats_per_rig":null,"merge_strategy":null,"rig_overrides":{}}"#
    );
    let old: TownConfig = serde_json::from_str(r#"{"default_model":"m"}"#).unwrap();
    assert_eq!(old.default_model.as_deref(), Some("m"));
}

#[test]
fn container_env_follows_config_and_drops_cleared_values() {
    let config = stored();
    let env = container_env(&config);
    assert_eq!(env["GITHUB_CLI_PAT"], PAT);
    assert_eq!(env["KILO_JWT"], KILO);
    assert!(!env.contains_key("KILOCODE_TOKEN"), "no alias nobody reads");
    assert_eq!(env["GIT_TOKEN"], "gho_0123456789abcdef");
    assert_eq!(env["API_KEY"], "sk-live-abcdefghijkl");
    assert_eq!(env["GASTOWN_DEFAULT_MODEL"], "anthropic/claude");
    assert_eq!(env["GASTOWN_GIT_AUTHOR_EMAIL"], "dev@example.com");
    assert!(!env.contains_key("GASTOWN_DISABLE_AI_COAUTHOR"));
    let cleared = patch(
        &config,
        json!({"github_cli_pat": null, "disable_ai_coauthor": true, "max_polecats_per_rig": 3}),
    )
    .unwrap();
    let env = container_env(&cleared);
    assert!(
        !env.contains_key("GITHUB_CLI_PAT"),
        "a cleared PAT leaves the env"
    );
    assert_eq!(env["GASTOWN_DISABLE_AI_COAUTHOR"], "1");
    assert_eq!(env["GASTOWN_MAX_POLECATS_PER_RIG"], "3");
    for key in env.keys() {
        if config.env_vars.contains_key(key) {
            continue;
        }
        assert!(
            check_env_key(key, key).is_err(),
            "derived key {key} must be reserved"
        );
    }
}

#[test]
fn the_cli_pat_reaches_the_container_under_its_name_and_gh_token_never_does() {
    use crate::vocab::{GH_TOKEN_ENV, GITHUB_CLI_PAT_ENV};
    // Every credential set: still no GH_TOKEN (nor GITHUB_TOKEN) for a process to keep a stale
    // copy of; the control server's `gh` shim reads GITHUB_CLI_PAT per run of gh instead.
    let config = patch(
        &stored(),
        json!({"git_auth": {"github_token": "ghp_town_github_token_0123456789"}}),
    )
    .unwrap();
    let env = container_env(&config);
    assert_eq!(env[GITHUB_CLI_PAT_ENV], PAT);
    for absent in [GH_TOKEN_ENV, "GITHUB_TOKEN"] {
        assert!(!env.contains_key(absent), "{absent}");
        assert!(
            check_env_key(absent, absent).is_err(),
            "{absent} is reserved"
        );
    }
    assert!(check_env_key(GITHUB_CLI_PAT_ENV, GITHUB_CLI_PAT_ENV).is_err());
}

#[test]
fn rig_overrides_merge_per_rig() {
    let c = patch(
        &TownConfig::default(),
        json!({"rig_overrides": {"r1": {"default_model": "m1", "max_polecats": 2}, "r2": {"merge_strategy": "direct", "role_models": {"mayor": "x"}}}}),
    )
    .unwrap();
    assert_eq!(c.rig_overrides["r1"].max_polecats, Some(2));
    assert_eq!(
        c.rig_overrides["r2"].role_models.mayor.as_deref(),
        Some("x")
    );
    let c2 = patch(&c, json!({"rig_overrides": {"r1": null}})).unwrap();
    assert!(!c2.rig_overrides.contains_key("r1"));
    assert!(c2.rig_overrides.contains_key("r2"), "other rigs are kept");
    assert!(patch(&c, json!({"rig_overrides": null}))
        .unwrap()
        .rig_overrides
        .is_empty());
    let env = container_env(&c);
    let parsed: Value = serde_json::from_str(&env["GASTOWN_RIG_OVERRIDES"]).unwrap();
    assert_eq!(parsed["r1"]["default_model"], "m1");
    for (body, field) in [
        (
            json!({"rig_overrides": {"r1": {"max_polecats": 0}}}),
            "rig_overrides.r1.max_polecats",
        ),
        (
            json!({"rig_overrides": {"r1": {"nope": 1}}}),
            "rig_overrides.r1.nope",
        ),
        (
            json!({"rig_overrides": {"r1": {"role_models": {"janitor": "m"}}}}),
            "rig_overrides.r1.role_models.janitor",
        ),
        (json!({"rig_overrides": {"r1": 5}}), "rig_overrides.r1"),
        (
            json!({"rig_overrides": {"bad id": {}}}),
            "rig_overrides.bad id",
        ),
        (json!({"rig_overrides": []}), "rig_overrides"),
    ] {
        assert_eq!(
            field_of(patch(&c, body.clone()).unwrap_err()),
            field,
            "{body}"
        );
    }
}

/// A name that falls in a deny-list entry: the entry itself, with `*` filled in.
fn example(name: &str) -> String {
    name.replace('*', "X")
}

#[test]
fn dangerous_env_var_names_are_refused() {
    let c = TownConfig::default();
    let mut names: Vec<String> = DENIED_ENV_VARS
        .iter()
        .flat_map(|f| f.names.iter().map(|n| example(n)))
        .collect();
    // The issue-9 examples and more members of the prefix families.
    names.extend(
        [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "DYLD_INSERT_LIBRARIES",
            "BASH_FUNC_X",
            "GIT_SSH_COMMAND",
            "GIT_SSH",
            "GIT_ASKPASS",
            "GIT_CONFIG_COUNT",
            "GIT_CONFIG_KEY_0",
            "GIT_CONFIG_VALUE_0",
            "GIT_CONFIG_GLOBAL",
            "GIT_SSL_NO_VERIFY",
            "GIT_EXEC_PATH",
            "GIT_PROXY_COMMAND",
            "GIT_TERMINAL_PROMPT",
        ]
        .map(String::from),
    );
    for name in &names {
        let err = patch(&c, json!({"env_vars": {name.as_str(): "x"}})).unwrap_err();
        assert_eq!(field_of(err), format!("env_vars.{name}"), "{name}");
    }
    for name in [
        "https_proxy",
        "http_proxy",
        "no_proxy",
        "all_proxy",
        "ld_preload",
        "path",
        "Path",
        "node_options",
        "git_ssh_command",
    ] {
        let err = patch(&c, json!({"env_vars": {name: "x"}})).unwrap_err();
        assert_eq!(
            field_of(err),
            format!("env_vars.{name}"),
            "lower-case {name}"
        );
    }
    let message = match patch(&c, json!({"env_vars": {"LD_PRELOAD": "/tmp/x.so"}})) {
        Err(ApiError::Invalid { message, .. }) => message,
        other => panic!("{other:?}"),
    };
    assert!(message.contains("dynamic loader"), "{message}");
    assert!(!message.contains("/tmp/x.so"), "the value is not echoed");
}

#[test]
fn ordinary_env_var_names_are_kept() {
    let c = TownConfig::default();
    let long = format!("A{}", "B".repeat(MAX_ENV_KEY - 1));
    let names = [
        "NODE_ENV",
        "PYTHONUNBUFFERED",
        "ENVIRONMENT",
        "MY_GIT_THING",
        "LD",
        "LDFLAGS",
        "GITHUB_ORG",
        "PROXY_MODE",
        "_PRIVATE",
        "A1",
        long.as_str(),
    ];
    for name in names {
        let next = patch(&c, json!({"env_vars": {name: "value with spaces, é"}})).unwrap();
        assert_eq!(next.env_vars[name], "value with spaces, é", "{name}");
    }
    let too_long = format!("{long}C");
    assert_eq!(
        field_of(patch(&c, json!({"env_vars": {too_long.as_str(): "x"}})).unwrap_err()),
        format!("env_vars.{too_long}")
    );
    assert!(denied_env_family("LD_PRELOAD").is_some());
    assert!(denied_env_family("LDFLAGS").is_none());
}

#[test]
fn env_var_values_refuse_control_characters() {
    let c = TownConfig::default();
    for bad in [
        "a\nb",
        "a\tb",
        "a\rb",
        "\u{1b}[31m",
        "a\u{7f}",
        "a\u{0}b",
        "\n",
    ] {
        let err = patch(&c, json!({"env_vars": {"FEATURE": bad}})).unwrap_err();
        assert_eq!(field_of(err), "env_vars.FEATURE", "{bad:?}");
    }
    let next = patch(&c, json!({"env_vars": {"EMPTY": "", "SPACES": "  a b  "}})).unwrap();
    assert_eq!(next.env_vars["EMPTY"], "");
    assert_eq!(
        next.env_vars["SPACES"], "  a b  ",
        "values are kept as sent"
    );
}

#[test]
fn container_env_leaves_out_variables_stored_before_the_rules() {
    let mut config = TownConfig::default();
    config.env_vars.insert("LD_PRELOAD".into(), "/x.so".into());
    config
        .env_vars
        .insert("HTTPS_PROXY".into(), "http://evil".into());
    config.env_vars.insert("MULTI".into(), "a\nb".into());
    config.env_vars.insert("GOOD".into(), "ok".into());
    let env = container_env(&config);
    assert_eq!(env.get("GOOD").map(String::as_str), Some("ok"));
    for gone in ["LD_PRELOAD", "HTTPS_PROXY", "MULTI"] {
        assert!(!env.contains_key(gone), "{gone}");
    }
}

const GL_TOKEN: &str = "glpat-owner-token-0123456789";
const GL_URL: &str = "https://gitlab.example.com";

fn with_gitlab() -> TownConfig {
    patch(
        &TownConfig::default(),
        json!({"git_auth": {"gitlab_token": GL_TOKEN, "gitlab_instance_url": GL_URL}}),
    )
    .unwrap()
}

#[test]
fn changing_the_gitlab_host_drops_the_token() {
    let config = with_gitlab();
    let moved = patch(
        &config,
        json!({"git_auth": {"gitlab_instance_url": "https://attacker.example"}}),
    )
    .unwrap();
    assert_eq!(
        moved.git_auth.gitlab_instance_url.as_deref(),
        Some("https://attacker.example")
    );
    assert_eq!(
        moved.git_auth.gitlab_token, None,
        "the token does not follow"
    );
    let env = container_env(&moved);
    assert!(!env.contains_key("GITLAB_TOKEN"));
    assert!(!env.contains_key("GIT_TOKEN"));
    assert_eq!(env["GITLAB_INSTANCE_URL"], "https://attacker.example");

    let masked = mask(GL_TOKEN);
    let with_mask = patch(
        &config,
        json!({"git_auth": {"gitlab_instance_url": "https://attacker.example", "gitlab_token": masked}}),
    )
    .unwrap();
    assert_eq!(
        with_mask.git_auth.gitlab_token, None,
        "sending the mask back does not keep it"
    );

    let resent = patch(
        &config,
        json!({"git_auth": {"gitlab_instance_url": "https://gitlab.other.example", "gitlab_token": "glpat-new-0123456789"}}),
    )
    .unwrap();
    assert_eq!(
        resent.git_auth.gitlab_token.as_deref(),
        Some("glpat-new-0123456789"),
        "host and token set together"
    );

    let cleared = patch(&config, json!({"git_auth": {"gitlab_instance_url": null}})).unwrap();
    assert_eq!(
        cleared.git_auth,
        GitAuth::default(),
        "clearing the host clears the token"
    );
    let cleared_resent = patch(
        &config,
        json!({"git_auth": {"gitlab_instance_url": null, "gitlab_token": "glpat-new-0123456789"}}),
    )
    .unwrap();
    assert_eq!(
        cleared_resent.git_auth.gitlab_token.as_deref(),
        Some("glpat-new-0123456789")
    );

    let fresh_host = patch(
        &patch(
            &TownConfig::default(),
            json!({"git_auth": {"gitlab_token": GL_TOKEN}}),
        )
        .unwrap(),
        json!({"git_auth": {"gitlab_instance_url": "https://attacker.example"}}),
    )
    .unwrap();
    assert_eq!(
        fresh_host.git_auth.gitlab_token, None,
        "a token stored without a host does not follow a new host either"
    );
}

#[test]
fn the_gitlab_token_stays_when_its_host_does() {
    let config = with_gitlab();
    for body in [
        json!({"git_auth": {"gitlab_instance_url": GL_URL}}),
        json!({"git_auth": {"gitlab_instance_url": format!("  {GL_URL}  ")}}),
        json!({"git_auth": {"github_token": "gho_other_0123456789"}}),
        json!({"git_auth": {"gitlab_token": mask(GL_TOKEN), "gitlab_instance_url": GL_URL}}),
        json!({"default_model": "m"}),
    ] {
        let next = patch(&config, body.clone()).unwrap();
        assert_eq!(
            next.git_auth.gitlab_token.as_deref(),
            Some(GL_TOKEN),
            "{body}"
        );
    }
    // A wrong mask is still refused, host change or not.
    let wrong = json!({"git_auth": {"gitlab_instance_url": "https://x.example", "gitlab_token": "****9999"}});
    assert_eq!(
        field_of(patch(&config, wrong).unwrap_err()),
        "git_auth.gitlab_token"
    );
}

#[test]
fn destination_binding_over_every_combination() {
    let config = with_gitlab();
    let tokens = [
        ("absent", None),
        ("null", Some(json!(null))),
        ("mask", Some(json!(mask(GL_TOKEN)))),
        ("new", Some(json!("glpat-new-0123456789"))),
    ];
    let urls = [
        ("absent", None),
        ("null", Some(json!(null))),
        ("same", Some(json!(GL_URL))),
        ("other", Some(json!("https://attacker.example"))),
    ];
    for (tname, token) in &tokens {
        for (uname, url) in &urls {
            let mut g = Map::new();
            if let Some(t) = token {
                g.insert("gitlab_token".into(), t.clone());
            }
            if let Some(u) = url {
                g.insert("gitlab_instance_url".into(), u.clone());
            }
            let next = patch(&config, json!({ "git_auth": g })).unwrap();
            let moved = matches!(*uname, "null" | "other");
            let want = match *tname {
                "new" => Some("glpat-new-0123456789"),
                "null" => None,
                _ if moved => None,
                _ => Some(GL_TOKEN),
            };
            assert_eq!(
                next.git_auth.gitlab_token.as_deref(),
                want,
                "token {tname}, url {uname}"
            );
        }
    }
    assert_eq!(SECRET_DESTINATIONS.len(), BINDINGS.len());
}

#[test]
fn config_patch_json_is_pinned_and_round_trips() {
    assert_eq!(
        serde_json::to_string(&ConfigPatch::default()).unwrap(),
        "{}"
    );
    let body = json!({
        "env_vars": {"API_KEY": "v", "OLD": "****ijkl"},
        "git_auth": {"gitlab_token": null, "gitlab_instance_url": "https://g.example"},
        "kilocode_token": "k",
        "github_cli_pat": "****0123",
        "default_model": null,
        "small_model": "",
        "role_models": {"mayor": "m"},
        "git_author_name": " Ada ",
        "disable_ai_coauthor": true,
        "max_polecats_per_rig": 3,
        "merge_strategy": "direct",
        "rig_overrides": {"r1": {"default_model": "m1"}, "r2": null},
        "owner_user_id": "ignored",
    });
    let p = ConfigPatch::parse(body.to_string().as_bytes()).unwrap();
    let pinned = concat!(
        r#"{"env_vars":{"set":{"API_KEY":{"value":"v"},"OLD":{"mask":"****ijkl"}}},"#,
        r#""git_auth":{"set":{"gitlab_token":"clear","gitlab_instance_url":{"set":"https://g.example"}}},"#,
        r#""kilocode_token":{"set":{"value":"k"}},"default_model":"clear","#,
        r#""role_models":{"set":{"mayor":{"set":"m"}}},"small_model":"clear","#,
        r#""github_cli_pat":{"set":{"mask":"****0123"}},"git_author_name":{"set":"Ada"},"#,
        r#""disable_ai_coauthor":{"set":true},"max_polecats_per_rig":{"set":3},"#,
        r#""merge_strategy":{"set":"direct"},"#,
        r#""rig_overrides":{"set":{"r1":{"default_model":"m1","role_models":{"mayor":null,"polecat":null,"refinery":null},"max_polecats":null,"merge_strategy":null},"r2":null}}}"#,
    );
    assert_eq!(serde_json::to_string(&p).unwrap(), pinned);
    let back: ConfigPatch = serde_json::from_str(pinned).unwrap();
    assert_eq!(back, p);

    // Absent, null and a value are three different things.
    let absent = ConfigPatch::parse(b"{}").unwrap();
    let null = ConfigPatch::parse(br#"{"default_model":null,"github_cli_pat":null}"#).unwrap();
    let set = ConfigPatch::parse(br#"{"default_model":"m","github_cli_pat":"p"}"#).unwrap();
    assert_eq!(absent, ConfigPatch::default());
    assert_eq!(
        (null.default_model, null.github_cli_pat),
        (Change::Clear, Change::Clear)
    );
    assert_eq!(set.default_model, Change::Set("m".into()));
    assert_eq!(set.github_cli_pat, Change::Set(Secret::Value("p".into())));

    // What travels to the Durable Object carries no field the worker did not check.
    assert!(serde_json::from_str::<ConfigPatch>(r#"{"owner_user_id":{"set":"x"}}"#).is_err());
    assert!(
        serde_json::from_str::<ConfigPatch>(r#"{"git_auth":{"set":{"host":"clear"}}}"#).is_err()
    );
}

#[test]
fn apply_checks_a_patch_that_did_not_come_from_parse() {
    let c = stored();
    let cases = [
        (
            r#"{"env_vars":{"set":{"LD_PRELOAD":{"value":"/x.so"}}}}"#,
            "env_vars.LD_PRELOAD",
        ),
        (
            r#"{"env_vars":{"set":{"A":{"value":"a\nb"}}}}"#,
            "env_vars.A",
        ),
        (
            r#"{"env_vars":{"set":{"A":{"value":"****ijkl"}}}}"#,
            "env_vars.A",
        ),
        (
            r#"{"github_cli_pat":{"set":{"value":"****0123"}}}"#,
            "github_cli_pat",
        ),
        (
            r#"{"github_cli_pat":{"set":{"mask":"plain"}}}"#,
            "github_cli_pat",
        ),
        (r#"{"default_model":{"set":" padded "}}"#, "default_model"),
        (r#"{"default_model":{"set":""}}"#, "default_model"),
        (
            r#"{"max_polecats_per_rig":{"set":0}}"#,
            "max_polecats_per_rig",
        ),
        (
            r#"{"git_auth":{"set":{"gitlab_instance_url":{"set":"http://x"}}}}"#,
            "git_auth.gitlab_instance_url",
        ),
        (r#"{"git_author_email":{"set":"nope"}}"#, "git_author_email"),
        (
            r#"{"rig_overrides":{"set":{"bad id":null}}}"#,
            "rig_overrides.bad id",
        ),
        (
            r#"{"rig_overrides":{"set":{"r1":{"max_polecats":99}}}}"#,
            "rig_overrides.r1.max_polecats",
        ),
    ];
    for (json, field) in cases {
        let p: ConfigPatch = serde_json::from_str(json).unwrap();
        assert_eq!(field_of(c.apply(&p).unwrap_err()), field, "{json}");
    }
}

#[test]
fn apply_and_patched_agree() {
    let config = stored();
    let body = json!({"env_vars": {"API_KEY": "****ijkl", "NEW": "n"}, "github_cli_pat": "****0123", "git_auth": {"github_token": null}});
    let p = ConfigPatch::parse(body.to_string().as_bytes()).unwrap();
    let via_json: ConfigPatch = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    let next = config.apply(&via_json).unwrap();
    assert_eq!(next, config.patched(body.to_string().as_bytes()).unwrap());
    assert_eq!(next.env_vars["API_KEY"], "sk-live-abcdefghijkl");
    assert_eq!(next.github_cli_pat.as_deref(), Some(PAT));
    assert_eq!(next.git_auth.github_token, None);
}

#[test]
fn secrets_in_a_patch_never_reach_debug_output() {
    let p = ConfigPatch::parse(
        json!({"github_cli_pat": PAT, "env_vars": {"K": "sk-live-abcdefghijkl"}, "git_auth": {"gitlab_token": GL_TOKEN}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let debug = format!("{p:?}");
    for secret in [PAT, "sk-live-abcdefghijkl", GL_TOKEN] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

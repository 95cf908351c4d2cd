use super::*;
use serde_json::json;

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

fn stored() -> TownConfig {
    patch(
        &TownConfig::default(),
        json!({
            "github_cli_pat": PAT,
            "kilocode_token": KILO,
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
    let next = patch(
        &config,
        json!({"github_cli_pat": null, "kilocode_token": "new-kilo-token-000000"}),
    )
    .unwrap();
    assert_eq!(next.github_cli_pat, None);
    assert_eq!(
        next.kilocode_token.as_deref(),
        Some("new-kilo-token-000000")
    );
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
        r#"{"env_vars":{},"git_auth":{"github_token":null,"gitlab_token":null,"gitlab_instance_url":null,"platform_integration_id":null},"kilocode_token":null,"default_model":null,"role_models":{"mayor":null,"polecat":null,"refinery":null},"small_model":null,"github_cli_pat":null,"git_author_name":null,"git_author_email":null,"disable_ai_coauthor":false,"max_polecats_per_rig":null,"merge_strategy":null,"rig_overrides":{}}"#
    );
    let old: TownConfig = serde_json::from_str(r#"{"default_model":"m"}"#).unwrap();
    assert_eq!(old.default_model.as_deref(), Some("m"));
}

#[test]
fn container_env_follows_config_and_drops_cleared_values() {
    let config = stored();
    let env = container_env(&config);
    assert_eq!(env["GITHUB_CLI_PAT"], PAT);
    assert_eq!(env["KILOCODE_TOKEN"], KILO);
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

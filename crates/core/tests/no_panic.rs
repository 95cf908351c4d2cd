//! Property tests: whatever arrives from outside (tokens, bodies, paths, query strings), the pure
//! layer answers with a value or an error, never a panic. A panic in the worker is a 500 and, in
//! wasm, an aborted isolate.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use gastown_core::auth::Keys;
use gastown_core::model::{NewRig, NewTown};
use gastown_core::page::Page;
use gastown_core::routes::{match_route, Method};
use gastown_core::town_config::{denied_env_family, mask, ConfigPatch, TownConfig};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const SECRET: &str = "property-test-secret-0123456789abcdef";
const NOW: i64 = 1_800_000_000;

fn keys() -> Keys {
    Keys::new(Some(SECRET), Some(SECRET))
}

fn sign(header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(header).unwrap()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "\\*{4}[a-z0-9]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[A-Za-z_]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const CLAIM_NAMES: &[&str] = &[
    "kiloUserId",
    "orgMemberships",
    "gastownAccess",
    "isAdmin",
    "aud",
    "townId",
    "userId",
    "agentId",
    "rigId",
    "scope",
    "type",
    "sub",
    "town_id",
    "organization_id",
    "exp",
    "nbf",
    "iat",
];
const CONFIG_FIELDS: &[&str] = &[
    "env_vars",
    "git_auth",
    "kilocode_token",
    "default_model",
    "role_models",
    "small_model",
    "github_cli_pat",
    "git_author_name",
    "git_author_email",
    "disable_ai_coauthor",
    "max_polecats_per_rig",
    "merge_strategy",
    "rig_overrides",
    "owner_user_id",
    "unknown_field",
];

/// Claims objects that mix the names every token kind uses with arbitrary values.
fn claims() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(CLAIM_NAMES), json_value()), 0..10).prop_map(
        |pairs| {
            let mut map: Map<String, Value> =
                pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Some(Value::Number(_)) = map.get("exp") {
            } else if map.len().is_multiple_of(2) {
                map.insert("exp".into(), json!(NOW + 600));
            }
            Value::Object(map)
        },
    )
}

fn config_patch() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(CONFIG_FIELDS), json_value()), 0..8).prop_map(
        |pairs| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn verifiers_never_panic_on_any_string(token in ".{0,300}") {
        let k = keys();
        let _ = k.verify_user(&token, NOW);
        let _ = k.verify_container(&token, NOW);
        let _ = k.verify_agent(&token, NOW);
        let _ = k.verify_sandbox(&token, NOW);
    }

    #[test]
    fn verifiers_never_panic_on_signed_arbitrary_claims(claims in claims(), alg in prop::sample::select(vec!["HS256", "none", "HS512", "RS256"]), typ in prop::sample::select(vec![Some("JWT"), None, Some("at+jwt")])) {
        let mut header = json!({"alg": alg});
        if let Some(typ) = typ {
            header["typ"] = json!(typ);
        }
        let token = sign(&header, &claims);
        let k = keys();
        let user = k.verify_user(&token, NOW);
        let container = k.verify_container(&token, NOW);
        let agent = k.verify_agent(&token, NOW);
        let sandbox = k.verify_sandbox(&token, NOW);
        // One token is never two kinds at once.
        let accepted = [user.is_ok(), container.is_ok(), agent.is_ok(), sandbox.is_ok()].iter().filter(|ok| **ok).count();
        prop_assert!(accepted <= 1, "{claims}");
        if alg != "HS256" || typ == Some("at+jwt") || !claims["iat"].is_number() {
            prop_assert_eq!(accepted, 0);
        }
    }

    #[test]
    fn config_patch_never_panics_and_never_stores_a_mask(body in config_patch()) {
        let base = TownConfig::default()
            .patched(br#"{"github_cli_pat":"ghp_stored_secret_value_0000","env_vars":{"KEEP":"stored-value-12345"}}"#)
            .unwrap();
        if let Ok(next) = base.patched(body.to_string().as_bytes()) {
            // A stored secret is either the old one, a new real value, or gone: never a mask
            // string that did not match.
            if let Some(pat) = &next.github_cli_pat {
                prop_assert!(pat == "ghp_stored_secret_value_0000" || !pat.starts_with("****"));
            }
            let shown = serde_json::to_value(next.masked()).unwrap();
            prop_assert_eq!(next.patched(shown.to_string().as_bytes()).ok(), Some(next.clone()), "masked round trip");
            for (k, v) in &next.env_vars {
                prop_assert!(!v.starts_with("****") || Some(v) == base.env_vars.get(k), "{}", k);
            }
        }
    }

    #[test]
    fn config_patch_travels_as_json_and_applies_the_same(body in config_patch()) {
        let base = TownConfig::default()
            .patched(br#"{"github_cli_pat":"ghp_stored_secret_value_0000","env_vars":{"KEEP":"stored-value-12345"}}"#)
            .unwrap();
        if let Ok(patch) = ConfigPatch::parse(body.to_string().as_bytes()) {
            let wire = serde_json::to_string(&patch).unwrap();
            let back: ConfigPatch = serde_json::from_str(&wire).unwrap();
            prop_assert_eq!(&back, &patch);
            prop_assert_eq!(base.apply(&back), base.apply(&patch));
            prop_assert_eq!(base.apply(&patch), base.patched(body.to_string().as_bytes()));
            if let Ok(next) = base.apply(&patch) {
                for (k, v) in &next.env_vars {
                    prop_assert!(denied_env_family(k).is_none(), "{}", k);
                    prop_assert!(!v.chars().any(|c| c.is_ascii_control()), "{}", k);
                }
            }
        } else {
            prop_assert!(base.patched(body.to_string().as_bytes()).is_err());
        }
    }

    #[test]
    fn config_patch_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = TownConfig::default().patched(&bytes);
        let _ = ConfigPatch::parse(&bytes);
        let _ = serde_json::from_slice::<ConfigPatch>(&bytes).map(|p| TownConfig::default().apply(&p));
        let _ = NewTown::parse(&bytes);
        let _ = NewRig::parse(&bytes);
    }

    #[test]
    fn bodies_never_panic_on_json(body in json_value()) {
        let text = body.to_string();
        let _ = NewTown::parse(text.as_bytes());
        let _ = NewRig::parse(text.as_bytes());
        let _ = TownConfig::default().patched(text.as_bytes());
    }

    #[test]
    fn routing_never_panics(method in "[A-Z]{0,8}", path in "(/[a-z%0-9:._{}-]{0,12}){0,8}", query in ".{0,60}") {
        let _ = match_route(Method::parse(&method), &path);
        let _ = Page::parse(Some(&query));
    }

    #[test]
    fn mask_never_reveals_more_than_four_characters(secret in ".{0,64}") {
        let shown = mask(&secret);
        prop_assert!(shown.starts_with("****"));
        prop_assert!(shown.chars().count() <= 8);
        if secret.chars().count() < 12 {
            prop_assert_eq!(shown, "****");
        }
    }
}

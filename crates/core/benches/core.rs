//! Native microbenchmarks (`cargo bench -p gastown-core`), std only: each figure is the median
//! of 31 timed batches, and each token kind is reported as a ratio to one raw HMAC-SHA256
//! over the same signing input, the cost no verifier can avoid.

use gastown_core::auth::{sign_container, sign_sandbox, Keys, OrgMembership, OrgRole, UserClaims};
use gastown_core::authz;
use gastown_core::ids::{OrgId, TownId, UserId};
use gastown_core::model::{NewTown, Town};
use gastown_core::town_config::TownConfig;
use hmac::{Hmac, Mac};
use std::hint::black_box;
use std::time::Instant;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

/// Median ns per call over `batches` batches of `iters` calls.
fn bench(iters: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters / 10 {
        f();
    }
    let mut samples: Vec<f64> = (0..31)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn raw_hmac_ns(token: &str) -> f64 {
    let input = &token[..token.rfind('.').unwrap()];
    bench(20_000, || {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(black_box(input.as_bytes()));
        black_box(mac.finalize().into_bytes());
    })
}

fn sign_hs256(claims: &serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let input = format!(
        "{}.{}",
        B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        B64.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

fn main() {
    let keys = Keys::new(Some(SECRET), Some(SECRET));
    let now = 1_800_000_000;
    let town = TownId::parse("3f2b1c9e-0d4a-4c1b-9e7f-2a6b8c0d1e2f").unwrap();
    let user_token = sign_hs256(&serde_json::json!({
        "kiloUserId": "user-123", "orgMemberships": [{"orgId": "org-1", "role": "owner"}, {"orgId": "org-2", "role": "member"}],
        "iat": now, "exp": now + 3000,
    }));
    let agent_token = sign_hs256(&serde_json::json!({
        "agentId": "a-1", "rigId": "r-1", "townId": town.as_str(), "userId": "user-123", "iat": now, "exp": now + 3000,
    }));
    let (container_token, _) = sign_container(
        &keys,
        &town,
        "user-123",
        1,
        now,
        gastown_core::auth::CONTAINER_TOKEN_TTL_SECS,
    )
    .unwrap();
    let (sandbox_token, _) = sign_sandbox(
        &keys,
        "user-123",
        &town,
        None,
        now,
        gastown_core::auth::SANDBOX_TOKEN_TTL_SECS,
    )
    .unwrap();

    println!("{:<34} {:>10} {:>12}", "benchmark", "ns/op", "vs raw HMAC");
    let row = |name: &str, ns: f64, base: Option<f64>| {
        let ratio = base.map_or(String::from("-"), |b| format!("{:.2}x", ns / b));
        println!("{name:<34} {ns:>10.0} {ratio:>12}");
    };
    for (name, token) in [
        ("verify user token", &user_token),
        ("verify container token", &container_token),
        ("verify agent token", &agent_token),
        ("verify sandbox token", &sandbox_token),
    ] {
        let base = raw_hmac_ns(token);
        let ns = match name {
            "verify user token" => bench(20_000, || {
                drop(black_box(keys.verify_user(black_box(token), now)))
            }),
            "verify container token" => bench(20_000, || {
                drop(black_box(keys.verify_container(black_box(token), now)))
            }),
            "verify agent token" => bench(20_000, || {
                drop(black_box(keys.verify_agent(black_box(token), now)))
            }),
            _ => bench(20_000, || {
                drop(black_box(keys.verify_sandbox(black_box(token), now)))
            }),
        };
        assert!(match name {
            "verify user token" => keys.verify_user(token, now).is_ok(),
            "verify container token" => keys.verify_container(token, now).is_ok(),
            "verify agent token" => keys.verify_agent(token, now).is_ok(),
            _ => keys.verify_sandbox(token, now).is_ok(),
        });
        row(&format!("raw HMAC-SHA256 ({name})"), base, None);
        row(name, ns, Some(base));
    }

    let config = TownConfig::default()
        .patched(br#"{"github_cli_pat":"ghp_0123456789abcdefghijklmnop","kilocode_token":"kilo-0123456789abcdef",
            "git_auth":{"github_token":"gho_0123456789abcdef"},
            "env_vars":{"A_KEY":"value-0123456789","B_KEY":"value-0123456789","C_KEY":"value-0123456789"}}"#)
        .unwrap();
    row(
        "mask a config (3 env vars)",
        bench(20_000, || drop(black_box(black_box(&config).masked()))),
        None,
    );

    let claims = UserClaims {
        user_id: UserId::parse("user-123").unwrap(),
        org_memberships: (0..5)
            .map(|i| OrgMembership {
                org_id: OrgId::parse(&format!("org-{i}")).unwrap(),
                role: OrgRole::Member,
            })
            .collect(),
        gastown_access: None,
        is_admin: false,
        expires_at: now + 3000,
    };
    let user = UserId::parse("user-123").unwrap();
    let org = OrgId::parse("org-4").unwrap();
    let org_town = Town::for_org(
        town.clone(),
        NewTown { name: "t".into() },
        &org,
        &user,
        String::new(),
    );
    row(
        "authorize personal route",
        bench(200_000, || {
            drop(black_box(authz::personal(black_box(&claims), &user)))
        }),
        None,
    );
    row(
        "authorize org route (5 orgs)",
        bench(200_000, || {
            drop(black_box(authz::org_member(black_box(&claims), &org)))
        }),
        None,
    );
    row(
        "authorize town route (org town)",
        bench(200_000, || {
            drop(black_box(authz::town_role(black_box(&claims), &org_town)))
        }),
        None,
    );
}

//! Settings and secrets, read from the environment once per isolate.
//!
//! Building HMAC keys and hashing the internal key is work that never changes between requests,
//! so it happens on first use and the result is shared.

use gastown_core::auth::{InternalKey, Keys};
use gastown_core::policy::{self, Lifetimes};
use gastown_core::sealed::Sealer;
use std::cell::OnceCell;
use std::rc::Rc;
use worker::Env;

/// Default period of the TownDO main loop when it has nothing to do.
const DEFAULT_TOWN_ALARM_MS: u64 = 5 * 60 * 1000;
/// Default period of the owner DOs' watchdog.
const DEFAULT_WATCHDOG_MS: u64 = 5 * 60 * 1000;
/// Default grace of the container-token generation a rotation leaves.
const DEFAULT_TOKEN_GRACE_MS: u64 = 2 * 60 * 1000;
/// Floor for the periods, so a misconfiguration cannot spin an alarm.
const MIN_ALARM_MS: u64 = 500;

/// The work loop's settings (`[vars]` of these names, milliseconds).
#[derive(Debug, Clone)]
pub struct Work {
    /// `TOWN_ALARM_ACTIVE_MS`: the main loop's period while the town has work (default 5 s).
    pub active_alarm_ms: u64,
    /// `AGENT_STALL_MS`: a working agent without a heartbeat this long is stalled (5 min).
    pub stall_ms: u64,
    /// `CONTAINER_IDLE_STOP_MS`: an idle town's container is stopped after this long (30 min).
    pub idle_stop_ms: u64,
    /// `DISPATCH_RETRY_BASE_MS` / `DISPATCH_RETRY_MAX_MS`: a failed dispatch is retried after
    /// the base, doubled per attempt, capped (10 s, 5 min).
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// `DISPATCH_BREAKER_MS`: how long the town's breaker holds dispatch once open (60 s).
    pub breaker_ms: u64,
    /// `DEFAULT_MAX_POLECATS_PER_RIG`: when neither the town nor the rig sets one (3).
    pub default_max_polecats: u32,
    /// `AGENT_CALLBACK_URL`: the origin agents call back (default `PUBLIC_URL`).
    pub callback_url: String,
    /// `GASTOWN_ALLOW_LOCAL_GIT=1`: rigs may be `file://` repositories, and agents are told
    /// they may clone them. Development only; never set in production.
    pub allow_local_git: bool,
    /// `PR_POLL_MS`: how often the refinery reads a pull request it follows, webhooks or not
    /// (60 s). Only towns with a pull request open are polled.
    pub pr_poll_ms: u64,
    /// `PR_FEEDBACK_ROUNDS`: feedback beads per pull request before the next review or failing
    /// check is escalated to a human instead (3).
    pub pr_feedback_rounds: u32,
    /// `CONTAINER_HEALTH_INTERVAL_MS`: how often the loop asks a running container for its
    /// health (30 s), and `CONTAINER_HEALTH_TIMEOUT_MS` how long one answer may take (5 s).
    pub health_interval_ms: u64,
    pub health_timeout_ms: u64,
    /// `CONTAINER_WEDGED_MS`: a running container that answered no health check for this long
    /// is stopped and started again with fresh tokens (3 min).
    pub wedged_ms: u64,
    /// `CONTAINER_RESTARTS_PER_HOUR`: restarts of a wedged container within an hour before the
    /// town's breaker opens instead (3).
    pub restarts_per_hour: u64,
    /// `EVICTION_HEARTBEAT_GUARD_MS`: an eviction reset spares agents heard from within this
    /// long (90 s; shortened only by tests).
    pub eviction_guard_ms: u64,
}

pub struct Config {
    pub keys: Keys,
    pub internal_key: InternalKey,
    /// Seals secrets at rest (`GASTOWN_ENCRYPTION_KEY`).
    pub sealer: Sealer,
    /// Derives each town's control-server secret (`GASTOWN_CONTROL_KEY`).
    pub control_key: Option<Vec<u8>>,
    /// Signs stream tickets: derived from `GASTOWN_JWT_SECRET` (`gastown_core::stream`).
    pub ticket_key: Option<Vec<u8>>,
    pub town_alarm_ms: u64,
    pub watchdog_ms: u64,
    /// How long minted container and gateway tokens live (`CONTAINER_TOKEN_TTL_S`,
    /// `GATEWAY_TOKEN_TTL_S`; 8 h and 24 h). The refresh settings below default to fractions
    /// of these, so compressing a lifetime compresses its refreshes.
    pub lifetimes: Lifetimes,
    /// `GIT_TOKEN_REFRESH_MARGIN_S`: a provider's token (installation, OAuth) is renewed, and
    /// the container's credential helper stops reusing one, once less than this remains (300).
    pub git_token_margin_s: i64,
    /// Least time between two container tokens pushed by the alarm (default an eighth of the
    /// container token's lifetime: hourly).
    pub token_refresh_ms: u64,
    /// How long the token generation left by a rotation keeps working.
    pub token_grace_ms: u64,
    /// The alarm re-mints the gateway token when less than this remains of it (default half
    /// its lifetime: 12 h).
    pub gateway_refresh_before_ms: u64,
    /// How often a production container's control server renews each gateway token itself
    /// (`GATEWAY_SELF_REFRESH_MS`, handed to it at start; at least 100 ms, as it requires;
    /// default half the gateway token's lifetime).
    pub gateway_self_refresh_ms: u64,
    /// `KILO_GATEWAY_URL`: where agents send model calls; handed to containers in their env.
    pub gateway_url: Option<String>,
    pub quotas: Quotas,
    pub platforms: Platforms,
    pub work: Work,
    /// Why these settings cannot run, if they cannot: the worker then refuses every request.
    pub refused: Option<String>,
}

/// The outside services (DESIGN.md §7a): base URLs with their real defaults, so tests point them
/// at a local stand-in, and the App / OAuth credentials.
#[derive(Debug, Clone)]
pub struct Platforms {
    pub github_api_url: String,
    pub github_web_url: String,
    pub gitlab_url: String,
    pub github_app_id: Option<String>,
    pub github_app_slug: Option<String>,
    /// PEM (PKCS#1 as GitHub issues it, or PKCS#8).
    pub github_app_private_key: Option<String>,
    pub github_webhook_secret: Option<String>,
    /// `GITLAB_WEBHOOK_SECRET`: the secret token GitLab sends as `X-Gitlab-Token` with the
    /// project's merge request hooks.
    pub gitlab_webhook_secret: Option<String>,
    pub gitlab_client_id: Option<String>,
    pub gitlab_client_secret: Option<String>,
    /// The GitHub App's OAuth credentials (user-to-server tokens: commits as the user).
    pub github_app_client_id: Option<String>,
    pub github_app_client_secret: Option<String>,
    /// `FEATURE_GITHUB_USER_TOKENS=true`: the user-connect routes exist and git tokens may be
    /// the user's. Off: those routes answer 404 and git tokens ignore user tokens.
    pub github_user_tokens: bool,
    /// Where the connect flows send the user back.
    pub dashboard_url: String,
    /// This worker's public origin (OAuth redirect URIs).
    pub public_url: String,
    /// Signs the connect flows' `state` (derived from `GASTOWN_ENCRYPTION_KEY`).
    pub state_key: Option<Vec<u8>>,
}

impl Platforms {
    /// The host a platform's repositories are cloned from: `GITHUB_WEB_URL`'s, or `GITLAB_URL`'s.
    /// An integration's tokens are only ever handed out for this host.
    pub fn git_host(&self, platform: gastown_core::integrations::Platform) -> Option<String> {
        use gastown_core::integrations::{git_host, Platform};
        match platform {
            Platform::Github => git_host(&self.github_web_url),
            Platform::Gitlab => git_host(&self.gitlab_url),
        }
    }
}

fn url(env: &Env, name: &str, default: &str) -> String {
    string(env, name)
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

fn platforms(env: &Env) -> Platforms {
    let set = |name: &str| string(env, name).filter(|v| !v.trim().is_empty());
    Platforms {
        github_api_url: url(env, "GITHUB_API_URL", "https://api.github.com"),
        github_web_url: url(env, "GITHUB_WEB_URL", "https://github.com"),
        gitlab_url: url(env, "GITLAB_URL", "https://gitlab.com"),
        github_app_id: set("GITHUB_APP_ID"),
        github_app_slug: set("GITHUB_APP_SLUG"),
        github_app_private_key: set("GITHUB_APP_PRIVATE_KEY"),
        github_webhook_secret: set("GITHUB_WEBHOOK_SECRET"),
        gitlab_webhook_secret: set("GITLAB_WEBHOOK_SECRET"),
        gitlab_client_id: set("GITLAB_CLIENT_ID"),
        gitlab_client_secret: set("GITLAB_CLIENT_SECRET"),
        github_app_client_id: set("GITHUB_APP_CLIENT_ID"),
        github_app_client_secret: set("GITHUB_APP_CLIENT_SECRET"),
        github_user_tokens: set("FEATURE_GITHUB_USER_TOKENS")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        dashboard_url: url(env, "DASHBOARD_URL", "http://localhost:3000"),
        public_url: url(env, "PUBLIC_URL", "http://127.0.0.1:8787"),
        state_key: set("GASTOWN_ENCRYPTION_KEY")
            .map(|k| gastown_core::integrations::state_key(k.as_bytes())),
    }
}

thread_local! {
    static CONFIG: OnceCell<Rc<Config>> = const { OnceCell::new() };
}

/// A string binding (secret or plain var), if set.
fn string(env: &Env, name: &str) -> Option<String> {
    env.secret(name).ok().map(|s| s.to_string())
}

fn millis(env: &Env, name: &str, default: u64) -> u64 {
    string(env, name)
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(default)
        .max(MIN_ALARM_MS)
}

/// Limits that keep one owner from creating Durable Objects, rows and alarms without end. Each
/// is a `[vars]` setting of the same name; going over one answers 409 `quota_exceeded`.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// `MAX_TOWNS_PER_OWNER`: towns of one user or one organisation.
    pub towns_per_owner: u64,
    /// `MAX_RIGS_PER_TOWN`.
    pub rigs_per_town: u64,
    /// `MAX_AGENTS_PER_TOWN`: agents a town has registered (the mayor, and every agent
    /// dispatch creates).
    pub agents_per_town: u64,
    /// `MAYOR_TRANSCRIPT_CAP`: messages a town keeps of its conversation with the mayor (the
    /// oldest it has heard are dropped, and counted).
    pub mayor_transcript: u64,
    /// `AGENT_EVENTS_CAP`: events a town keeps per agent (the oldest are dropped, and counted).
    pub agent_events: u64,
}

fn count(env: &Env, name: &str, default: u64) -> u64 {
    string(env, name)
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(default)
}

/// The sealing keys: `GASTOWN_ENCRYPTION_KEY`, of version `GASTOWN_ENCRYPTION_KEY_VERSION`
/// (default 1), and during a rotation `GASTOWN_ENCRYPTION_KEY_PREVIOUS`, of version
/// `GASTOWN_ENCRYPTION_KEY_PREVIOUS_VERSION` (default 1).
fn sealer(env: &Env) -> Sealer {
    let version = |name: &str| {
        string(env, name)
            .and_then(|v| v.trim().parse::<u8>().ok())
            .unwrap_or(gastown_core::sealed::DEFAULT_KEY_VERSION)
    };
    let previous = string(env, "GASTOWN_ENCRYPTION_KEY_PREVIOUS");
    Sealer::with_versions(
        string(env, "GASTOWN_ENCRYPTION_KEY").as_deref(),
        version("GASTOWN_ENCRYPTION_KEY_VERSION"),
        previous
            .as_deref()
            .map(|p| (p, version("GASTOWN_ENCRYPTION_KEY_PREVIOUS_VERSION"))),
    )
}

pub fn get(env: &Env) -> Rc<Config> {
    CONFIG.with(|cell| {
        cell.get_or_init(|| {
            let town_alarm_ms = millis(env, "TOWN_ALARM_INTERVAL_MS", DEFAULT_TOWN_ALARM_MS);
            let defaults = Lifetimes::default();
            let seconds = |name: &str, default: i64| {
                string(env, name)
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .unwrap_or(default)
            };
            let lifetimes = Lifetimes {
                container_s: seconds("CONTAINER_TOKEN_TTL_S", defaults.container_s),
                gateway_s: seconds("GATEWAY_TOKEN_TTL_S", defaults.gateway_s),
            };
            let token_refresh_ms = millis(
                env,
                "CONTAINER_TOKEN_REFRESH_MS",
                lifetimes.default_token_refresh_ms(),
            );
            let gateway_refresh_before_ms = millis(
                env,
                "GATEWAY_TOKEN_REFRESH_BEFORE_MS",
                lifetimes.default_gateway_refresh_before_ms(),
            );
            let refused = lifetimes
                .check()
                .and_then(|()| policy::check_intervals(town_alarm_ms, token_refresh_ms, &lifetimes))
                .and_then(|()| {
                    policy::check_gateway_threshold(gateway_refresh_before_ms, &lifetimes)
                })
                .err();
            let platforms = platforms(env);
            Rc::new(Config {
                refused,
                lifetimes,
                git_token_margin_s: seconds(
                    "GIT_TOKEN_REFRESH_MARGIN_S",
                    gastown_core::integrations::TOKEN_REFRESH_MARGIN_SECS,
                )
                .max(0),
                gateway_refresh_before_ms,
                gateway_self_refresh_ms: millis(
                    env,
                    "GATEWAY_SELF_REFRESH_MS",
                    lifetimes.default_gateway_refresh_before_ms(),
                )
                .max(100),
                gateway_url: string(env, "KILO_GATEWAY_URL").filter(|u| !u.trim().is_empty()),
                keys: Keys::new(
                    string(env, "NEXTAUTH_SECRET").as_deref(),
                    string(env, "GASTOWN_JWT_SECRET").as_deref(),
                ),
                internal_key: InternalKey::new(string(env, "INTERNAL_API_KEY").as_deref()),
                sealer: sealer(env),
                control_key: string(env, gastown_core::control::KEY_ENV)
                    .filter(|k| !k.is_empty())
                    .map(String::into_bytes),
                ticket_key: string(env, "GASTOWN_JWT_SECRET")
                    .filter(|k| !k.is_empty())
                    .map(|k| gastown_core::stream::ticket_key(k.as_bytes())),
                town_alarm_ms,
                watchdog_ms: millis(env, "WATCHDOG_INTERVAL_MS", DEFAULT_WATCHDOG_MS),
                token_refresh_ms,
                token_grace_ms: millis(env, "CONTAINER_TOKEN_GRACE_MS", DEFAULT_TOKEN_GRACE_MS),
                work: Work {
                    callback_url: url(env, "AGENT_CALLBACK_URL", &platforms.public_url),
                    active_alarm_ms: millis(env, "TOWN_ALARM_ACTIVE_MS", 5_000),
                    stall_ms: millis(env, "AGENT_STALL_MS", 5 * 60 * 1000),
                    idle_stop_ms: millis(env, "CONTAINER_IDLE_STOP_MS", 30 * 60 * 1000),
                    retry_base_ms: millis(env, "DISPATCH_RETRY_BASE_MS", 10_000),
                    retry_max_ms: millis(env, "DISPATCH_RETRY_MAX_MS", 5 * 60 * 1000),
                    breaker_ms: millis(env, "DISPATCH_BREAKER_MS", 60_000),
                    default_max_polecats: u32::try_from(count(
                        env,
                        "DEFAULT_MAX_POLECATS_PER_RIG",
                        3,
                    ))
                    .unwrap_or(3)
                    .max(1),
                    allow_local_git: string(env, gastown_core::control::ALLOW_LOCAL_GIT_ENV)
                        .is_some_and(|v| v.trim() == "1"),
                    pr_poll_ms: millis(env, "PR_POLL_MS", 60_000),
                    pr_feedback_rounds: u32::try_from(count(env, "PR_FEEDBACK_ROUNDS", 3))
                        .unwrap_or(3),
                    health_interval_ms: millis(env, "CONTAINER_HEALTH_INTERVAL_MS", 30_000),
                    health_timeout_ms: millis(env, "CONTAINER_HEALTH_TIMEOUT_MS", 5_000),
                    wedged_ms: millis(env, "CONTAINER_WEDGED_MS", 3 * 60 * 1000),
                    restarts_per_hour: count(env, "CONTAINER_RESTARTS_PER_HOUR", 3),
                    eviction_guard_ms: millis(
                        env,
                        "EVICTION_HEARTBEAT_GUARD_MS",
                        gastown_core::policy::EVICTION_HEARTBEAT_GUARD_MS,
                    ),
                },
                platforms,
                quotas: Quotas {
                    towns_per_owner: count(env, "MAX_TOWNS_PER_OWNER", 50),
                    rigs_per_town: count(env, "MAX_RIGS_PER_TOWN", 100),
                    agents_per_town: count(env, "MAX_AGENTS_PER_TOWN", 100),
                    mayor_transcript: count(
                        env,
                        "MAYOR_TRANSCRIPT_CAP",
                        gastown_core::mayor::TRANSCRIPT_CAP,
                    )
                    .max(1),
                    agent_events: count(env, "AGENT_EVENTS_CAP", gastown_core::events::DEFAULT_CAP)
                        .max(1),
                },
            })
        })
        .clone()
    })
}

/// Milliseconds since the epoch, from the runtime's clock (wasm32 has no system clock). The
/// static `Date.now()`: no `Date` object is built for it.
pub fn now_ms() -> u64 {
    worker::js_sys::Date::now() as u64
}

/// Seconds since the epoch, for token times.
pub fn now_s() -> i64 {
    i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX)
}

/// A fresh lowercase UUIDv4 from the runtime's CSPRNG.
///
/// # Errors
/// When the runtime refuses randomness (never expected).
pub fn new_id() -> Result<String, gastown_core::ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(gastown_core::ApiError::internal)?;
    Ok(gastown_core::ids::uuid_v4(bytes))
}

/// A fresh 12-byte nonce for sealing, from the runtime's CSPRNG.
///
/// # Errors
/// When the runtime refuses randomness (never expected).
pub fn nonce() -> Result<[u8; 12], gastown_core::ApiError> {
    let mut bytes = [0u8; 12];
    getrandom::getrandom(&mut bytes).map_err(gastown_core::ApiError::internal)?;
    Ok(bytes)
}

//! Decisions the Durable Objects act on, as plain functions over plain values: what a town's
//! alarm does on each tick, and when a container token is due. The DOs gather the inputs from
//! storage, call these, and apply the effects in the order given.

use crate::auth::{
    CONTAINER_TOKEN_MAX_LIFETIME_SECS, CONTAINER_TOKEN_TTL_SECS, SANDBOX_TOKEN_MAX_LIFETIME_SECS,
    SANDBOX_TOKEN_TTL_SECS,
};
use crate::authz::ContainerCredential;

/// What a town's DO knows when its alarm fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickInput {
    /// The town is initialised and not destroyed.
    pub town_exists: bool,
    /// The town is not stopped: a stopped town's alarm does no work at all.
    pub town_active: bool,
    /// The town's container has been started and accepted a token.
    pub container_started: bool,
    /// When the container last accepted a pushed token (ms since the epoch).
    pub token_accepted_at_ms: Option<u64>,
    /// The container's last accepted token is of an older generation than the current one (a
    /// rotation's push was refused): it is due at once, whatever the throttle says, because
    /// an older generation can never mint the current one itself.
    pub token_generation_behind: bool,
    pub now_ms: u64,
    /// Least time between two tokens pushed by the alarm.
    pub token_refresh_ms: u64,
    /// `exp` (seconds) of the gateway token the container last accepted, if any.
    pub gateway_expires_at_s: Option<i64>,
    /// Re-mint the gateway token when less than this remains of it.
    pub gateway_refresh_before_ms: u64,
    /// The town has work: an open issue bead awaiting dispatch, a bead in progress, or a
    /// working agent. A town without work is idle: it pushes nothing and pings nothing.
    pub has_work: bool,
    /// When the town last had work (or its container last started), ms since the epoch.
    pub work_seen_at_ms: Option<u64>,
    /// An idle town's running container is stopped after this long without work.
    pub idle_stop_ms: u64,
    /// The town follows a pull request (opening or open): the refinery runs, idle or not.
    pub follows_pull_requests: bool,
    /// When the running container was last asked for its health (ms), and how often to ask.
    pub container_probed_at_ms: Option<u64>,
    pub health_interval_ms: u64,
}

/// One thing a tick does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickEffect {
    /// The town is gone or stopped: delete the alarm (which the DO re-armed before anything
    /// else, so that no failure can end the loop of a live town) and do nothing else. Starting
    /// a stopped town arms it again.
    DeleteAlarm,
    /// Count the run and record when it happened.
    RecordRun,
    /// Mint a container token and push it; the throttle moves only if the container accepts.
    RefreshContainerToken,
    /// Mint a gateway token and push it in the env; its expiry is recorded only if the
    /// container accepts, so a refused push is retried on the next tick.
    RefreshGatewayToken,
    /// Find working agents without a recent heartbeat: they are stalled, their beads reopen
    /// (or fail into an escalation when they crash-loop).
    Patrol,
    /// Hand open issue beads to idle polecats in the container.
    Dispatch,
    /// The town has been idle past the idle timeout: stop its container.
    StopIdleContainer,
    /// Run again soon (the fast cadence): there is work.
    ArmFast,
    /// Open and read the pull requests that are due, and wake for the next one.
    Refine,
    /// Ask the running container's control server for its health (with a deadline); one that
    /// has answered none for too long is restarted ([`on_unhealthy`]).
    ProbeContainer,
}

/// The effects of one tick, in the order to apply them.
pub fn tick(input: &TickInput) -> Vec<TickEffect> {
    if !input.town_exists || !input.town_active {
        return vec![TickEffect::DeleteAlarm];
    }
    let mut effects = vec![TickEffect::RecordRun];
    if input.follows_pull_requests {
        effects.push(TickEffect::Refine);
    }
    if !input.has_work {
        // Idle: no dispatch, no patrol; only the idle timeout, once. A container still
        // running keeps its tokens fresh until it stops: a lifetime shorter than the idle
        // timeout must not lapse under a mayor waiting for its next message.
        let idle_for = input
            .work_seen_at_ms
            .map_or(u64::MAX, |seen| input.now_ms.saturating_sub(seen));
        if input.container_started && idle_for >= input.idle_stop_ms {
            effects.push(TickEffect::StopIdleContainer);
        } else if input.container_started {
            effects.extend(probe(input));
            effects.extend(refreshes(input));
        }
        return effects;
    }
    effects.push(TickEffect::ArmFast);
    effects.push(TickEffect::Patrol);
    if input.container_started {
        effects.extend(probe(input));
        effects.extend(refreshes(input));
    }
    effects.push(TickEffect::Dispatch);
    effects
}

/// A running container's health check, when one is due.
fn probe(input: &TickInput) -> Option<TickEffect> {
    input
        .container_probed_at_ms
        .is_none_or(|at| input.now_ms.saturating_sub(at) >= input.health_interval_ms)
        .then_some(TickEffect::ProbeContainer)
}

/// How long after its last heartbeat an agent is taken for gone when its container was evicted
/// or restarted: an agent heard from more recently is left working (patrol's stall time still
/// applies to it), so a restart noticed late never flaps a bead that is still being worked.
pub const EVICTION_HEARTBEAT_GUARD_MS: u64 = 90_000;

/// Restarts of a wedged container counted in one window of this length.
pub const RESTART_WINDOW_MS: u64 = 60 * 60 * 1000;

/// The restarts of a town's wedged container: how many in the window that began at
/// `window_start_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restarts {
    pub window_start_ms: u64,
    pub in_window: u64,
}

impl Restarts {
    /// The count as of `now_ms`: a window that has ended counts nothing.
    pub fn at(self, now_ms: u64) -> Restarts {
        if now_ms.saturating_sub(self.window_start_ms) >= RESTART_WINDOW_MS {
            Restarts {
                window_start_ms: now_ms,
                in_window: 0,
            }
        } else {
            self
        }
    }

    /// One more restart at `now_ms`.
    pub fn counted(self, now_ms: u64) -> Restarts {
        let current = self.at(now_ms);
        Restarts {
            in_window: current.in_window + 1,
            ..current
        }
    }
}

/// What a failed health check leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// Not yet wedged: it answered within `wedged_ms`.
    Wait,
    /// Wedged: stop it and start it again with fresh tokens.
    Restart,
    /// Wedged, and restarted `cap` times this window already: the town's breaker opens until
    /// `until_ms` with this reason for the owner.
    OpenBreaker { until_ms: u64, reason: String },
}

/// A container last heard from at `answered_at_ms` failed a health check at `now_ms`.
pub fn on_unhealthy(
    answered_at_ms: u64,
    now_ms: u64,
    wedged_ms: u64,
    restarts: Restarts,
    cap: u64,
) -> Unhealthy {
    let silent_ms = now_ms.saturating_sub(answered_at_ms);
    if silent_ms < wedged_ms {
        return Unhealthy::Wait;
    }
    let restarts = restarts.at(now_ms);
    if restarts.in_window < cap {
        return Unhealthy::Restart;
    }
    Unhealthy::OpenBreaker {
        until_ms: restarts.window_start_ms + RESTART_WINDOW_MS,
        reason: format!(
            "the container answered no health check for {} s and was restarted {} times within the hour; nothing is dispatched until the window ends or it answers again",
            silent_ms / 1000,
            restarts.in_window
        ),
    }
}

/// The token pushes a busy town's running container is due.
fn refreshes(input: &TickInput) -> Vec<TickEffect> {
    let mut effects = Vec::new();
    if input.token_generation_behind
        || token_refresh_due(
            input.token_accepted_at_ms,
            input.now_ms,
            input.token_refresh_ms,
        )
    {
        effects.push(TickEffect::RefreshContainerToken);
    }
    if gateway_refresh_due(
        input.gateway_expires_at_s,
        input.now_ms,
        input.gateway_refresh_before_ms,
    ) {
        effects.push(TickEffect::RefreshGatewayToken);
    }
    effects
}

/// A gateway token is re-minted once less than `before_ms` of it remains; a container that
/// never accepted one is due at once.
pub fn gateway_refresh_due(expires_at_s: Option<i64>, now_ms: u64, before_ms: u64) -> bool {
    expires_at_s.is_none_or(|exp| {
        let exp_ms = u64::try_from(exp).unwrap_or(0).saturating_mul(1000);
        exp_ms.saturating_sub(now_ms) < before_ms
    })
}

/// How long the tokens the worker mints live (seconds): `CONTAINER_TOKEN_TTL_S` and
/// `GATEWAY_TOKEN_TTL_S`, by default 8 h and 24 h. Compressed to about a minute, every refresh
/// path (the alarm's pushes, the control server's self-refresh) follows, because each of their
/// defaults is a fraction of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub container_s: i64,
    pub gateway_s: i64,
}

/// The shortest lifetime a deployment may set: below this, a refresh could not come round.
pub const MIN_TOKEN_TTL_SECS: i64 = 20;

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            container_s: CONTAINER_TOKEN_TTL_SECS,
            gateway_s: SANDBOX_TOKEN_TTL_SECS,
        }
    }
}

impl Lifetimes {
    /// Each lifetime between [`MIN_TOKEN_TTL_SECS`] and the longest our own validation accepts
    /// for its kind (DESIGN.md §3).
    ///
    /// # Errors
    /// Which setting is out of range, for the operator.
    pub fn check(&self) -> Result<(), String> {
        for (name, secs, max) in [
            (
                "CONTAINER_TOKEN_TTL_S",
                self.container_s,
                CONTAINER_TOKEN_MAX_LIFETIME_SECS,
            ),
            (
                "GATEWAY_TOKEN_TTL_S",
                self.gateway_s,
                SANDBOX_TOKEN_MAX_LIFETIME_SECS,
            ),
        ] {
            if !(MIN_TOKEN_TTL_SECS..=max).contains(&secs) {
                return Err(format!(
                    "{name} ({secs}) must be between {MIN_TOKEN_TTL_SECS} and {max} seconds"
                ));
            }
        }
        Ok(())
    }

    pub fn container_ms(&self) -> u64 {
        u64::try_from(self.container_s).unwrap_or(0) * 1000
    }

    pub fn gateway_ms(&self) -> u64 {
        u64::try_from(self.gateway_s).unwrap_or(0) * 1000
    }

    /// The default least time between two container tokens pushed: an eighth of the lifetime
    /// (hourly for 8 h), so seven pushes in a row may fail before one lapses.
    pub fn default_token_refresh_ms(&self) -> u64 {
        self.container_ms() / 8
    }

    /// The default gateway threshold: re-mint once half the token is spent (12 h of 24 h).
    /// The control server's self-refresh wakes as often.
    pub fn default_gateway_refresh_before_ms(&self) -> u64 {
        self.gateway_ms() / 2
    }
}

/// The gateway-token threshold must leave the token some life, or every tick would re-mint it.
///
/// # Errors
/// For the operator, when the threshold is not below the gateway token's lifetime.
pub fn check_gateway_threshold(before_ms: u64, lifetimes: &Lifetimes) -> Result<(), String> {
    let lifetime_ms = lifetimes.gateway_ms();
    if before_ms >= lifetime_ms {
        return Err(format!(
            "GATEWAY_TOKEN_REFRESH_BEFORE_MS ({before_ms}) must be below the gateway token lifetime ({lifetime_ms} ms)"
        ));
    }
    Ok(())
}

/// The container token is refreshed at most once per `throttle_ms`, counted from the last time
/// the container *accepted* one; a town that never had one accepted is due at once.
pub fn token_refresh_due(last_accepted_ms: Option<u64>, now_ms: u64, throttle_ms: u64) -> bool {
    last_accepted_ms.is_none_or(|last| now_ms.saturating_sub(last) >= throttle_ms)
}

/// The main loop and the token refresh must both come round well within a container token's
/// lifetime, or a running container is left holding an expired token: a push is due
/// `token_refresh_ms` after the last, and the loop notices it within `town_alarm_ms`, so the
/// two together must stay below the lifetime.
///
/// # Errors
/// Which setting is too long, for the operator.
pub fn check_intervals(
    town_alarm_ms: u64,
    token_refresh_ms: u64,
    lifetimes: &Lifetimes,
) -> Result<(), String> {
    let lifetime_ms = lifetimes.container_ms();
    for (name, ms) in [
        ("TOWN_ALARM_INTERVAL_MS", town_alarm_ms),
        ("CONTAINER_TOKEN_REFRESH_MS", token_refresh_ms),
    ] {
        if ms >= lifetime_ms {
            return Err(format!(
                "{name} ({ms}) must be below the container token lifetime ({lifetime_ms} ms)"
            ));
        }
    }
    if town_alarm_ms + token_refresh_ms >= lifetime_ms {
        return Err(format!(
            "TOWN_ALARM_INTERVAL_MS + CONTAINER_TOKEN_REFRESH_MS ({}) must be below the container token lifetime ({lifetime_ms} ms)",
            town_alarm_ms + token_refresh_ms
        ));
    }
    Ok(())
}

/// A town's container-token generation: every container token carries the generation it was
/// minted in. Rotation (an owner's forced refresh, a container or town stop) advances it, and
/// from then on tokens of older generations are refused; the generation just left keeps working
/// for `grace_ms`, so a refresh already under way when the rotation happened does not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGeneration {
    /// 0 until the container first starts: no container token is valid before that.
    pub current: u64,
    /// When `current` began (ms since the epoch); 0 if never advanced.
    pub since_ms: u64,
}

impl TokenGeneration {
    /// Whether a container caller's credential is still honoured.
    pub fn admits(&self, credential: ContainerCredential, now_ms: u64, grace_ms: u64) -> bool {
        match credential {
            ContainerCredential::Container { generation } => {
                let Some(generation) = generation else {
                    return false;
                };
                self.current > 0
                    && (generation == self.current
                        || (generation + 1 == self.current
                            && now_ms.saturating_sub(self.since_ms) < grace_ms))
            }
            // Legacy tokens carry no generation: those issued before the last rotation are
            // revoked by it (the same grace applies). `iat` has whole seconds, so a token of
            // the rotation's own second counts as issued after it.
            ContainerCredential::Agent { issued_at } => {
                let issued_ms = u64::try_from(issued_at).unwrap_or(0).saturating_mul(1000);
                issued_ms.saturating_add(999) >= self.since_ms
                    || now_ms.saturating_sub(self.since_ms) < grace_ms
            }
        }
    }

    /// Whether a container caller's credential may mint new tokens (a container token, a
    /// gateway token). Stricter than [`TokenGeneration::admits`]: the grace lets a previous
    /// generation finish its callbacks, but never mint, because a minted token carries the
    /// current generation and would outlive the rotation that was meant to evict a leaked
    /// one. The rotation has already pushed the new token to the container, and a container
    /// that missed the push is started again with fresh tokens.
    pub fn may_mint(&self, credential: ContainerCredential) -> bool {
        match credential {
            ContainerCredential::Container { generation } => {
                self.current > 0 && generation == Some(self.current)
            }
            ContainerCredential::Agent { issued_at } => {
                let issued_ms = u64::try_from(issued_at).unwrap_or(0).saturating_mul(1000);
                issued_ms.saturating_add(999) >= self.since_ms
            }
        }
    }

    /// The generation after a rotation at `now_ms`.
    pub fn advanced(self, now_ms: u64) -> TokenGeneration {
        TokenGeneration {
            current: self.current + 1,
            since_ms: now_ms,
        }
    }
}

/// Dispatches of one bead before it fails with a readable reason.
pub const MAX_DISPATCH_ATTEMPTS: u32 = 5;
/// Consecutive failed dispatches (of any bead) that open the town's breaker.
pub const BREAKER_THRESHOLD: u32 = 3;
/// Agent failures (stalls) of one bead within [`CRASH_LOOP_WINDOW_MS`] that make a crash loop.
pub const CRASH_LOOP_FAILURES: u64 = 3;
pub const CRASH_LOOP_WINDOW_MS: u64 = 30 * 60 * 1000;

/// When a bead whose dispatch just failed for the `attempts`-th time may be tried again:
/// `base_ms` doubled per earlier attempt, capped at `max_ms`.
pub fn retry_at(now_ms: u64, attempts: u32, base_ms: u64, max_ms: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(20);
    now_ms.saturating_add(base_ms.saturating_mul(1 << exp).min(max_ms))
}

/// The town-level breaker over dispatches into its container: after [`BREAKER_THRESHOLD`]
/// failures in a row it opens for `breaker_ms`, and nothing is dispatched until then; then one
/// dispatch probes (half-open): success closes it, failure opens it again. A container that is
/// down costs one request per `breaker_ms`, whatever the number of beads waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Breaker {
    /// Failed dispatches in a row.
    pub failures: u32,
    /// Dispatch is refused until then (ms since the epoch; 0 when closed).
    pub open_until_ms: u64,
}

impl Breaker {
    /// How many dispatches this tick may make: none while open, one to probe once it has been
    /// open, all otherwise.
    pub fn allowance(&self, now_ms: u64) -> Option<usize> {
        if self.failures < BREAKER_THRESHOLD {
            None
        } else if now_ms < self.open_until_ms {
            Some(0)
        } else {
            Some(1)
        }
    }

    #[must_use]
    pub fn failed(self, now_ms: u64, breaker_ms: u64) -> Breaker {
        let failures = self.failures.saturating_add(1);
        Breaker {
            failures,
            open_until_ms: if failures >= BREAKER_THRESHOLD {
                now_ms.saturating_add(breaker_ms)
            } else {
                0
            },
        }
    }

    #[must_use]
    pub fn succeeded(self) -> Breaker {
        Breaker::default()
    }
}

/// What becomes of a bead whose dispatch failed for the `attempts`-th time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchRetry {
    /// Open again, not to be tried before this time (ms).
    RetryAt(u64),
    /// Failed for good, with this reason.
    Fail(String),
}

pub fn after_dispatch_failure(
    attempts: u32,
    now_ms: u64,
    base_ms: u64,
    max_ms: u64,
    error: &str,
) -> DispatchRetry {
    if attempts >= MAX_DISPATCH_ATTEMPTS {
        DispatchRetry::Fail(format!(
            "dispatch failed {attempts} times; the last error: {error}. Reopen the bead to try again."
        ))
    } else {
        DispatchRetry::RetryAt(retry_at(now_ms, attempts, base_ms, max_ms))
    }
}

/// Whether a bead whose agent just failed, with `failures` agent failures inside the crash-loop
/// window (this one included), is in a crash loop: then it fails into an escalation instead of
/// being restarted.
pub fn is_crash_loop(failures_in_window: u64) -> bool {
    failures_in_window >= CRASH_LOOP_FAILURES
}

#[cfg(test)]
mod tests {
    use super::*;
    use TickEffect::*;

    fn input() -> TickInput {
        TickInput {
            town_exists: true,
            town_active: true,
            container_started: true,
            token_accepted_at_ms: Some(1_000),
            token_generation_behind: false,
            now_ms: 1_000 + 3_600_000,
            token_refresh_ms: 3_600_000,
            // 20 h left of the gateway token: not due with a 12 h threshold.
            gateway_expires_at_s: Some((1_000 + 3_600_000) / 1000 + 20 * 3600),
            gateway_refresh_before_ms: 12 * 3_600_000,
            has_work: true,
            work_seen_at_ms: Some(1_000 + 3_600_000),
            idle_stop_ms: 600_000,
            follows_pull_requests: false,
            container_probed_at_ms: Some(1_000 + 3_600_000),
            health_interval_ms: 30_000,
        }
    }

    #[test]
    fn refresh_throttle() {
        assert!(token_refresh_due(None, 0, 3_600_000));
        assert!(!token_refresh_due(
            Some(1_000),
            1_000 + 3_599_999,
            3_600_000
        ));
        assert!(token_refresh_due(Some(1_000), 1_000 + 3_600_000, 3_600_000));
        assert!(
            !token_refresh_due(Some(5_000), 1_000, 3_600_000),
            "a clock that went back does not refresh early"
        );
    }

    #[test]
    fn ticks() {
        const BUSY: [TickEffect; 3] = [RecordRun, ArmFast, Patrol];
        let with = |extra: &[TickEffect]| {
            let mut v = BUSY.to_vec();
            v.extend_from_slice(extra);
            v.push(Dispatch);
            v
        };
        assert_eq!(tick(&input()), with(&[RefreshContainerToken]));
        let gone = TickInput {
            town_exists: false,
            ..input()
        };
        assert_eq!(tick(&gone), [DeleteAlarm]);
        let stopped_town = TickInput {
            town_active: false,
            gateway_expires_at_s: None,
            ..input()
        };
        assert_eq!(
            tick(&stopped_town),
            [DeleteAlarm],
            "a stopped town does nothing"
        );
        let gateway_due = TickInput {
            gateway_expires_at_s: Some(input().now_ms as i64 / 1000 + 11 * 3600),
            ..input()
        };
        assert_eq!(
            tick(&gateway_due),
            with(&[RefreshContainerToken, RefreshGatewayToken])
        );
        let no_container = TickInput {
            container_started: false,
            gateway_expires_at_s: None,
            ..input()
        };
        assert_eq!(tick(&no_container), with(&[]), "nothing to push to");
        let fresh = TickInput {
            now_ms: 2_000,
            ..input()
        };
        assert_eq!(tick(&fresh), with(&[]));
        let rotated_unpushed = TickInput {
            token_generation_behind: true,
            ..fresh
        };
        assert_eq!(
            tick(&rotated_unpushed),
            with(&[RefreshContainerToken]),
            "a container behind the current generation is due whatever the throttle says"
        );
        let never = TickInput {
            token_accepted_at_ms: None,
            ..input()
        };
        assert_eq!(tick(&never), with(&[RefreshContainerToken]));
    }

    #[test]
    fn a_town_that_follows_a_pull_request_refines_idle_or_busy() {
        let idle = TickInput {
            has_work: false,
            container_started: false,
            follows_pull_requests: true,
            ..input()
        };
        assert_eq!(tick(&idle), [RecordRun, Refine], "no token, no dispatch");
        let busy = TickInput {
            follows_pull_requests: true,
            ..input()
        };
        assert_eq!(tick(&busy)[..2], [RecordRun, Refine]);
        let stopped = TickInput {
            town_active: false,
            ..busy
        };
        assert_eq!(
            tick(&stopped),
            [DeleteAlarm],
            "a stopped town reads nothing"
        );
        let none = TickInput {
            has_work: false,
            container_started: false,
            ..input()
        };
        assert_eq!(
            tick(&none),
            [RecordRun],
            "an idle town that follows none calls nothing"
        );
    }

    #[test]
    fn an_idle_town_pushes_only_what_is_due_and_stops_its_container_once_idle_long_enough() {
        let idle = TickInput {
            has_work: false,
            token_accepted_at_ms: None,
            gateway_expires_at_s: None,
            work_seen_at_ms: Some(input().now_ms - 1_000),
            ..input()
        };
        assert_eq!(
            tick(&idle),
            [RecordRun, RefreshContainerToken, RefreshGatewayToken],
            "a running container's tokens stay fresh while it is idle"
        );
        let fresh = TickInput {
            has_work: false,
            work_seen_at_ms: Some(input().now_ms - 1_000),
            token_accepted_at_ms: Some(input().now_ms - 1_000),
            ..input()
        };
        assert_eq!(tick(&fresh), [RecordRun], "nothing due: nothing pushed");
        let long_idle = TickInput {
            work_seen_at_ms: Some(input().now_ms - 600_000),
            ..idle
        };
        assert_eq!(tick(&long_idle), [RecordRun, StopIdleContainer]);
        let never_busy = TickInput {
            work_seen_at_ms: None,
            ..idle
        };
        assert_eq!(tick(&never_busy), [RecordRun, StopIdleContainer]);
        let stopped_container = TickInput {
            container_started: false,
            ..long_idle
        };
        assert_eq!(tick(&stopped_container), [RecordRun], "already stopped");
    }

    #[test]
    fn a_running_container_is_probed_when_due_busy_or_idle() {
        let due = TickInput {
            container_probed_at_ms: Some(input().now_ms - 30_000),
            ..input()
        };
        assert!(tick(&due).contains(&ProbeContainer));
        assert!(!tick(&input()).contains(&ProbeContainer), "probed just now");
        let never = TickInput {
            container_probed_at_ms: None,
            ..input()
        };
        assert!(tick(&never).contains(&ProbeContainer));
        let idle = TickInput {
            has_work: false,
            work_seen_at_ms: Some(input().now_ms - 1_000),
            ..due
        };
        assert!(tick(&idle).contains(&ProbeContainer));
        let stopped = TickInput {
            container_started: false,
            ..due
        };
        assert!(!tick(&stopped).contains(&ProbeContainer));
    }

    #[test]
    fn a_wedged_container_is_restarted_up_to_the_cap_then_the_breaker_opens() {
        let now = 10 * RESTART_WINDOW_MS;
        let none = Restarts::default();
        assert_eq!(
            on_unhealthy(now - 1_000, now, 180_000, none, 3),
            Unhealthy::Wait
        );
        assert_eq!(
            on_unhealthy(now - 180_000, now, 180_000, none, 3),
            Unhealthy::Restart
        );
        let three = none
            .counted(now - 3_000)
            .counted(now - 2_000)
            .counted(now - 1_000);
        assert_eq!(three.in_window, 3);
        match on_unhealthy(now - 200_000, now, 180_000, three, 3) {
            Unhealthy::OpenBreaker { until_ms, reason } => {
                assert_eq!(until_ms, now - 3_000 + RESTART_WINDOW_MS);
                assert!(
                    reason.contains("200 s") && reason.contains("3 times"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // An hour later the window has ended: restarts are allowed again.
        let later = now - 3_000 + RESTART_WINDOW_MS;
        assert_eq!(
            on_unhealthy(0, later, 180_000, three, 3),
            Unhealthy::Restart
        );
        assert_eq!(three.counted(later).in_window, 1);
    }

    #[test]
    fn retries_back_off_and_end() {
        assert_eq!(retry_at(1_000, 1, 100, 10_000), 1_100);
        assert_eq!(retry_at(1_000, 2, 100, 10_000), 1_200);
        assert_eq!(retry_at(1_000, 4, 100, 10_000), 1_800);
        assert_eq!(retry_at(1_000, 30, 100, 10_000), 11_000, "capped");
        assert_eq!(
            after_dispatch_failure(4, 0, 100, 10_000, "x"),
            DispatchRetry::RetryAt(800)
        );
        match after_dispatch_failure(MAX_DISPATCH_ATTEMPTS, 0, 100, 10_000, "503") {
            DispatchRetry::Fail(reason) => {
                assert!(reason.contains("5 times") && reason.contains("503"))
            }
            other => panic!("{other:?}"),
        }
        assert!(!is_crash_loop(2));
        assert!(is_crash_loop(3));
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_probes_once() {
        let b = Breaker::default();
        assert_eq!(b.allowance(0), None);
        let b = b.failed(0, 1_000).failed(10, 1_000);
        assert_eq!(b.allowance(20), None, "two failures: still closed");
        let b = b.failed(20, 1_000);
        assert_eq!(b.allowance(500), Some(0), "open: nothing");
        assert_eq!(b.allowance(1_020), Some(1), "then one probe");
        let b = b.failed(1_020, 1_000);
        assert_eq!(b.allowance(1_500), Some(0), "a failed probe opens it again");
        assert_eq!(b.succeeded().allowance(1_500), None);
    }

    #[test]
    fn gateway_threshold() {
        let h = 3_600_000u64;
        let now = 1_000_000 * 1000;
        assert!(
            gateway_refresh_due(None, now, 12 * h),
            "never accepted: due"
        );
        let exp = |ms_left: u64| Some(((now + ms_left) / 1000) as i64);
        assert!(!gateway_refresh_due(exp(12 * h), now, 12 * h));
        assert!(gateway_refresh_due(exp(12 * h - 1000), now, 12 * h));
        assert!(gateway_refresh_due(Some(0), now, 12 * h), "expired: due");
        let day = Lifetimes::default();
        assert!(check_gateway_threshold(12 * h, &day).is_ok());
        assert!(check_gateway_threshold(24 * h - 1, &day).is_ok());
        assert!(check_gateway_threshold(24 * h, &day).is_err());
        let minute = Lifetimes {
            container_s: 60,
            gateway_s: 60,
        };
        assert_eq!(minute.default_gateway_refresh_before_ms(), 30_000);
        assert!(check_gateway_threshold(30_000, &minute).is_ok());
        assert!(check_gateway_threshold(60_000, &minute).is_err());
    }

    #[test]
    fn intervals_stay_below_the_token_lifetime() {
        let eight = Lifetimes::default();
        assert_eq!(
            eight.default_token_refresh_ms(),
            3_600_000,
            "hourly, as before"
        );
        assert!(check_intervals(300_000, 3_600_000, &eight).is_ok());
        let eight_hours = 8 * 3_600_000;
        assert!(check_intervals(300_000, eight_hours - 300_001, &eight).is_ok());
        let e = check_intervals(300_000, eight_hours, &eight).unwrap_err();
        assert!(e.starts_with("CONTAINER_TOKEN_REFRESH_MS"), "{e}");
        let e = check_intervals(eight_hours, 1_000, &eight).unwrap_err();
        assert!(e.starts_with("TOWN_ALARM_INTERVAL_MS"), "{e}");
        let e = check_intervals(300_000, eight_hours - 300_000, &eight).unwrap_err();
        assert!(e.contains("+"), "the two together: {e}");
        // A minute's token: a push every 7.5 s, and a loop of a few seconds, fit.
        let minute = Lifetimes {
            container_s: 60,
            gateway_s: 60,
        };
        assert_eq!(minute.default_token_refresh_ms(), 7_500);
        assert!(check_intervals(5_000, 7_500, &minute).is_ok());
        assert!(check_intervals(300_000, 7_500, &minute).is_err());
    }

    #[test]
    fn lifetimes_are_bounded_by_what_validation_accepts() {
        assert!(Lifetimes::default().check().is_ok());
        let ok = Lifetimes {
            container_s: MIN_TOKEN_TTL_SECS,
            gateway_s: 60,
        };
        assert!(ok.check().is_ok());
        let short = Lifetimes {
            container_s: MIN_TOKEN_TTL_SECS - 1,
            ..ok
        };
        assert!(short
            .check()
            .unwrap_err()
            .starts_with("CONTAINER_TOKEN_TTL_S"));
        let long = Lifetimes {
            gateway_s: SANDBOX_TOKEN_MAX_LIFETIME_SECS + 1,
            ..ok
        };
        assert!(long.check().unwrap_err().starts_with("GATEWAY_TOKEN_TTL_S"));
    }

    #[test]
    fn generations() {
        let c = |g: Option<u64>| ContainerCredential::Container { generation: g };
        let never = TokenGeneration {
            current: 0,
            since_ms: 0,
        };
        assert!(
            !never.admits(c(Some(0)), 5, 1_000),
            "no token before the first start"
        );
        let g1 = never.advanced(10_000);
        assert!(g1.admits(c(Some(1)), 20_000, 1_000));
        assert!(
            !g1.admits(c(None), 20_000, 1_000),
            "tokens without a generation"
        );
        assert!(
            !g1.admits(c(Some(2)), 20_000, 1_000),
            "a generation not yet minted"
        );
        let g2 = g1.advanced(50_000);
        assert!(
            g2.admits(c(Some(1)), 50_500, 1_000),
            "the previous one, within the grace"
        );
        assert!(
            !g2.admits(c(Some(1)), 51_000, 1_000),
            "the previous one, after the grace"
        );
        assert!(!g2.admits(c(Some(0)), 50_001, 1_000), "older ones never");
        assert!(g2.admits(c(Some(2)), 99_000_000, 1_000));
    }

    #[test]
    fn only_the_current_generation_mints() {
        let c = |g: Option<u64>| ContainerCredential::Container { generation: g };
        let never = TokenGeneration {
            current: 0,
            since_ms: 0,
        };
        assert!(
            !never.may_mint(c(Some(0))),
            "nothing before the first start"
        );
        let g1 = never.advanced(10_000);
        assert!(g1.may_mint(c(Some(1))));
        assert!(!g1.may_mint(c(None)));
        assert!(!g1.may_mint(c(Some(2))), "a generation not yet minted");
        let g2 = g1.advanced(50_000);
        assert!(
            g2.admits(c(Some(1)), 50_001, 1_000) && !g2.may_mint(c(Some(1))),
            "the previous generation calls back within the grace, but never mints"
        );
        assert!(g2.may_mint(c(Some(2))));
        let a = |iat_s: i64| ContainerCredential::Agent { issued_at: iat_s };
        assert!(g2.may_mint(a(50)), "issued in the rotation's second");
        assert!(
            g2.admits(a(10), 50_001, 1_000) && !g2.may_mint(a(10)),
            "a legacy token from before the rotation calls back within the grace, never mints"
        );
    }

    #[test]
    fn legacy_tokens_are_revoked_by_rotation() {
        let a = |iat_s: i64| ContainerCredential::Agent { issued_at: iat_s };
        let never = TokenGeneration {
            current: 0,
            since_ms: 0,
        };
        assert!(never.admits(a(100), 200_000, 1_000));
        let g = never.advanced(300_000);
        assert!(g.admits(a(300), 400_000, 1_000), "issued at the rotation");
        assert!(
            !g.admits(a(100), 400_000, 1_000),
            "issued before it, after the grace"
        );
        assert!(
            g.admits(a(100), 300_500, 1_000),
            "issued before it, within the grace"
        );
    }
}

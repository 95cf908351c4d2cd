//! The gateway token's self-refresh: the "cron" that keeps `KILO_JWT` from lapsing.
//!
//! A sandbox token lives 24 h; the worker hands one over with each sync, but a town whose
//! config does not change would see it expire. So, when the server knows the worker's URL, a
//! thread wakes every interval and, for each town whose container token it holds, exchanges
//! that token for a fresh gateway token at the worker
//! ([`sandbox_token_path`]), then stores it in the town's env and its `.env.gateway`.
//!
//! Rules:
//!
//! * the state lock is never held across a call to the worker: the towns due are copied out,
//!   each call made without the lock, and its answer stored under it afterwards;
//! * a town stopped meanwhile is left stopped; a town synced meanwhile keeps what the worker
//!   synced (the worker's word is newer than the answer);
//! * every failure (unreachable worker, a status other than 200, an answer that is not a
//!   token) is one line on stderr with the status or the kind of failure, never a token, and
//!   the next wake, no later than [`RETRY_AFTER_FAILURE`], tries again (two failed 12-hour
//!   wakes in a row would otherwise let a 24-hour token lapse); nothing here can stop the
//!   server;
//! * attempts, successes and failures are counted per town (`/debug/towns/:id` shows them).

use crate::client::{self, post_to_worker, CallFailure};
use crate::state::Shared;
use crate::workdir;
use gastown_core::control::{sandbox_token_path, GATEWAY_TOKEN_ENV};
use gastown_core::protocol::town::IssuedToken;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// After a wake with a failure, the next comes this soon (or at the interval, if sooner).
pub(crate) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5 * 60);

/// One town's self-refresh so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) attempts: u64,
    pub(crate) successes: u64,
    pub(crate) failures: u64,
}

/// Starts the self-refresh thread when the configuration names a worker.
///
/// # Errors
/// When the thread cannot be started.
pub(crate) fn start(shared: &Arc<Shared>) -> io::Result<()> {
    let Some(worker) = shared.config.worker_url.clone() else {
        return Ok(());
    };
    let shared = Arc::clone(shared);
    let agent = client::agent();
    std::thread::Builder::new()
        .name("gastown-control-gateway-refresh".into())
        .spawn(move || {
            let interval = shared.config.gateway_refresh;
            let mut next = interval;
            loop {
                std::thread::sleep(next);
                next = next_wake(interval, refresh_all(&shared, &agent, &worker));
            }
        })
        .map(drop)
}

/// How long to sleep after a wake that `failed` (or not).
fn next_wake(interval: Duration, failed: bool) -> Duration {
    if failed {
        interval.min(RETRY_AFTER_FAILURE)
    } else {
        interval
    }
}

/// One wake: every town holding a container token, one after the other. True if any failed.
fn refresh_all(shared: &Shared, agent: &ureq::Agent, worker: &str) -> bool {
    let due: Vec<(String, String, u64)> = shared
        .state()
        .towns
        .iter()
        .filter_map(|(id, t)| Some((id.clone(), t.token.clone()?, t.env_updates)))
        .collect();
    let mut failed = false;
    for (town, container_token, synced) in due {
        let answer = fetch(agent, worker, &town, &container_token);
        failed |= !store(shared, &town, synced, answer);
    }
    failed
}

/// Why a refresh failed; shown in the log, so it never holds a token.
#[derive(Debug)]
enum Failure {
    Unreachable(String),
    Status(u16),
    BadAnswer,
    Write(io::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable(e) => write!(f, "worker not reached: {e}"),
            Failure::Status(status) => write!(f, "worker answered {status}"),
            Failure::BadAnswer => f.write_str("worker's answer is not a token"),
            Failure::Write(e) => write!(f, "cannot write the gateway env file: {e}"),
        }
    }
}

impl From<CallFailure> for Failure {
    fn from(f: CallFailure) -> Self {
        match f {
            CallFailure::Unreachable(e) => Failure::Unreachable(e),
            CallFailure::Status(s) => Failure::Status(s),
            CallFailure::BadAnswer => Failure::BadAnswer,
        }
    }
}

/// Asks the worker for a new gateway token for `town` with its container token.
fn fetch(
    agent: &ureq::Agent,
    worker: &str,
    town: &str,
    container_token: &str,
) -> Result<IssuedToken, Failure> {
    let url = format!("{worker}{}", sandbox_token_path(town));
    Ok(post_to_worker(
        agent,
        &url,
        container_token,
        "{}",
        |t: &IssuedToken| &t.token,
    )?)
}

/// Stores the outcome of one town's refresh, unless the town was stopped meanwhile. False
/// for a failure.
fn store(shared: &Shared, town: &str, synced: u64, answer: Result<IssuedToken, Failure>) -> bool {
    let Ok(dir) = shared.town_dir(town) else {
        return true;
    };
    let mut state = shared.state();
    let Some(entry) = state.towns.get_mut(town) else {
        return true;
    };
    entry.gateway_refresh.attempts += 1;
    let outcome = answer.and_then(|issued| {
        if entry.env_updates != synced {
            // A sync came in during the call: its env (with or without a token) stands.
            return Ok(());
        }
        workdir::write_gateway_env(&dir, Some(&issued.token), shared.config.agent_user)
            .map_err(Failure::Write)?;
        entry.env.insert(GATEWAY_TOKEN_ENV.to_owned(), issued.token);
        Ok(())
    });
    match outcome {
        Ok(()) => {
            entry.gateway_refresh.successes += 1;
            true
        }
        Err(failure) => {
            entry.gateway_refresh.failures += 1;
            eprintln!("gastown-control: gateway token refresh for town {town}: {failure}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_never_show_more_than_a_status_or_a_kind() {
        assert_eq!(Failure::Status(401).to_string(), "worker answered 401");
        assert_eq!(
            Failure::BadAnswer.to_string(),
            "worker's answer is not a token"
        );
    }

    #[test]
    fn a_failure_brings_the_next_wake_forward() {
        let twelve_hours = Duration::from_secs(12 * 3600);
        assert_eq!(next_wake(twelve_hours, false), twelve_hours);
        assert_eq!(next_wake(twelve_hours, true), RETRY_AFTER_FAILURE);
        let short = Duration::from_millis(200);
        assert_eq!(
            next_wake(short, true),
            short,
            "never later than the interval"
        );
    }

    #[test]
    fn an_unreachable_worker_is_a_failure_not_a_panic() {
        // A port nothing listens on: bind one, learn it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let worker = format!("http://127.0.0.1:{port}");
        let failure = fetch(&client::agent(), &worker, "town-a", "ctok").unwrap_err();
        assert!(matches!(failure, Failure::Unreachable(_)), "{failure:?}");
        assert!(!failure.to_string().contains("ctok"));
    }
}

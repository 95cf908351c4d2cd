//! The state transitions of a town's work loop, as plain functions over plain values: which
//! rig may take another polecat, what a claim writes, what an agent's `done` makes of its bead,
//! what a user's close or reopen does, what a silent agent's bead becomes (reopened, failed, or
//! a crash loop escalated), what a stop hands back, and when a town has work at all. `TownDO`
//! loads the inputs from its storage and writes the outcome; the decisions are tested here
//! natively. Backoff, the breaker and the alarm's cadence are `policy`'s.

use crate::beads::{BeadEventKind, BeadStatus, UserStatus};
use crate::control::{AgentDoneCallback, MAX_CALLBACK_TEXT};
use crate::error::ApiError;
use crate::model::AgentStatus;
use crate::policy::{is_crash_loop, CRASH_LOOP_WINDOW_MS, MAX_DISPATCH_ATTEMPTS};
use crate::text::{check_text, Lines};
use crate::town_config::{MergeStrategy, TownConfig};

/// A town has work while an issue waits or runs, or an agent works: then its loop runs at the
/// fast cadence, patrols, refreshes tokens and dispatches. Otherwise it is idle and pushes
/// nothing.
#[must_use]
pub fn has_work(open_or_running_issue: bool, working_agent: bool) -> bool {
    open_or_running_issue || working_agent
}

/// How many polecats may work on `rig` at once: the rig's override, else the town's setting,
/// else the deployment's default.
#[must_use]
pub fn polecat_limit(config: &TownConfig, rig: &str, default: u32) -> u32 {
    config
        .rig_overrides
        .get(rig)
        .and_then(|o| o.max_polecats)
        .or(config.max_polecats_per_rig)
        .unwrap_or(default)
}

/// Whether a rig with `working` polecats may take one more.
#[must_use]
pub fn rig_has_room(working: u64, limit: u32) -> bool {
    working < u64::from(limit)
}

/// A claim: the bead goes in progress with its agent, on its `attempts`-th dispatch since it
/// was last opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub status: BeadStatus,
    pub attempts: u32,
}

/// The claim of a bead dispatched `attempts_so_far` times before.
#[must_use]
pub fn claim(attempts_so_far: u32) -> Claim {
    Claim {
        status: BeadStatus::InProgress,
        attempts: attempts_so_far.saturating_add(1),
    }
}

/// The branch an agent pushes its work to.
#[must_use]
pub fn work_branch(agent_name: &str, bead_id: &str) -> String {
    let short: String = bead_id.chars().take(8).collect();
    format!("gastown/{agent_name}/{short}")
}

/// The merge strategy for a bead of `rig`: the rig's override, else the town's.
#[must_use]
pub fn merge_strategy(config: &TownConfig, rig: Option<&str>) -> Option<MergeStrategy> {
    rig.and_then(|r| config.rig_overrides.get(r))
        .and_then(|o| o.merge_strategy)
        .or(config.merge_strategy)
}

/// A callback's free text: at most [`MAX_CALLBACK_TEXT`] characters, printable but for line
/// breaks and tabs.
///
/// # Errors
/// 422 naming `field`.
pub fn check_callback_text(field: &str, text: &str) -> Result<(), ApiError> {
    check_text(field, text, MAX_CALLBACK_TEXT, Lines::Many)
}

/// An agent's `done`, checked before anything is written.
///
/// # Errors
/// 422 naming the bad field.
pub fn check_done(done: &AgentDoneCallback) -> Result<(), ApiError> {
    check_callback_text("summary", &done.summary)?;
    if let Some(branch) = &done.branch {
        if branch.is_empty()
            || branch.len() > 255
            || branch.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ApiError::invalid("branch", "must be a branch name"));
        }
    }
    if let Some(url) = &done.pr_url {
        if url.len() > 2000
            || !(url.starts_with("https://") || url.starts_with("http://"))
            || url.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ApiError::invalid("pr_url", "must be an http(s) URL"));
        }
    }
    Ok(())
}

/// What an agent's `done` makes of its bead. A finished branch goes to review: under the
/// `pull_request` strategy the refinery opens its pull request and follows it, under `direct`
/// it merges the branch itself; either way the bead waits `in_review` and closes only when the
/// code has landed (so a convoy's dependents wait for it). A pull request the agent reports
/// itself under `pull_request`, without a branch, is in review too, but not followed.
/// Otherwise the bead closes. The agent is freed either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub status: BeadStatus,
    pub event: BeadEventKind,
    /// Whether the bead records `closed_at` now.
    pub closes: bool,
    /// Whether the refinery takes the branch (`strategy`'s way).
    pub refine: bool,
}

#[must_use]
pub fn on_done(strategy: Option<MergeStrategy>, reports_pr: bool, has_branch: bool) -> Finished {
    let review = Finished {
        status: BeadStatus::InReview,
        event: BeadEventKind::InReview,
        closes: false,
        refine: has_branch,
    };
    match strategy {
        Some(MergeStrategy::PullRequest) if has_branch || reports_pr => review,
        Some(MergeStrategy::Direct) if has_branch => review,
        _ => Finished {
            status: BeadStatus::Closed,
            event: BeadEventKind::Done,
            closes: true,
            refine: false,
        },
    }
}

/// A user's status change of a bead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    /// Closed now; a bead in progress also has its agent stopped and freed.
    Close { stop_agent: bool },
    /// Open again for dispatch, its assignee, failure reason, attempts and backoff reset.
    Reopen,
}

/// What a user's `status` in a bead patch does to a bead that is `current` (`None`: nothing,
/// because the bead is already so).
///
/// # Errors
/// 409 for reopening a bead that is in progress (close it first).
pub fn user_status_change(
    current: BeadStatus,
    wanted: Option<UserStatus>,
) -> Result<Option<StatusChange>, ApiError> {
    Ok(match wanted {
        Some(UserStatus::Closed) if current != BeadStatus::Closed => Some(StatusChange::Close {
            stop_agent: current == BeadStatus::InProgress,
        }),
        Some(UserStatus::Open) if current == BeadStatus::InProgress => {
            return Err(ApiError::Conflict(
                "the bead is in progress; close it first".into(),
            ))
        }
        Some(UserStatus::Open) if current != BeadStatus::Open => Some(StatusChange::Reopen),
        _ => None,
    })
}

/// What becomes of the bead of an agent patrol found silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StallOutcome {
    /// Open again for the next dispatch.
    Reopen,
    /// Failed with this reason: every attempt's agent went silent.
    Fail(String),
    /// Failed with this reason, and an escalation bead is made for a human instead of another
    /// restart.
    Escalate(String),
}

/// The bead of a stalled agent, counting this stall among the `stalls_in_window` of the last
/// [`CRASH_LOOP_WINDOW_MS`], after `attempts` dispatches since it was opened.
#[must_use]
pub fn on_stall(stalls_in_window: u64, attempts: u32) -> StallOutcome {
    if is_crash_loop(stalls_in_window) {
        StallOutcome::Escalate(format!(
            "crash loop: its agent failed {stalls_in_window} times within {} minutes; escalated instead of restarted",
            CRASH_LOOP_WINDOW_MS / 60_000
        ))
    } else if attempts >= MAX_DISPATCH_ATTEMPTS {
        StallOutcome::Fail(format!(
            "its agent stopped reporting on each of {attempts} attempts. Reopen the bead to try again."
        ))
    } else {
        StallOutcome::Reopen
    }
}

/// What a town stop hands back: its agents stop with the container, so every bead in
/// `running` goes to `to` (an agent's failure is not counted: no crash loop grows from a stop)
/// with the `event`, and every agent in `agents` is `agents_to`, with no bead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandBack {
    pub running: BeadStatus,
    pub to: BeadStatus,
    pub event: BeadEventKind,
    pub agents: [AgentStatus; 2],
    pub agents_to: AgentStatus,
}

#[must_use]
pub fn on_stop() -> HandBack {
    HandBack {
        running: BeadStatus::InProgress,
        to: BeadStatus::Open,
        event: BeadEventKind::Reopened,
        agents: [AgentStatus::Working, AgentStatus::Stalled],
        agents_to: AgentStatus::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::town_config::RigOverride;

    fn config(town: Option<u32>, rig: Option<u32>, strategy: Option<MergeStrategy>) -> TownConfig {
        let mut c = TownConfig {
            max_polecats_per_rig: town,
            merge_strategy: strategy,
            ..TownConfig::default()
        };
        c.rig_overrides.insert(
            "r1".into(),
            RigOverride {
                max_polecats: rig,
                ..RigOverride::default()
            },
        );
        c
    }

    #[test]
    fn idle_is_no_waiting_issue_and_no_working_agent() {
        assert!(!has_work(false, false));
        assert!(has_work(true, false));
        assert!(has_work(false, true));
    }

    #[test]
    fn the_polecat_limit_is_the_rigs_then_the_towns_then_the_default() {
        assert_eq!(polecat_limit(&config(Some(3), Some(1), None), "r1", 5), 1);
        assert_eq!(polecat_limit(&config(Some(3), None, None), "r1", 5), 3);
        assert_eq!(polecat_limit(&config(Some(3), Some(1), None), "r2", 5), 3);
        assert_eq!(polecat_limit(&config(None, None, None), "r2", 5), 5);
        assert!(rig_has_room(0, 1));
        assert!(!rig_has_room(1, 1));
        assert!(!rig_has_room(0, 0), "a limit of 0 holds the rig");
    }

    #[test]
    fn a_claim_counts_the_attempt() {
        assert_eq!(
            claim(0),
            Claim {
                status: BeadStatus::InProgress,
                attempts: 1
            }
        );
        assert_eq!(claim(4).attempts, 5);
        assert_eq!(claim(u32::MAX).attempts, u32::MAX);
        assert_eq!(
            work_branch("polecat-1", "0123456789abcdef"),
            "gastown/polecat-1/01234567"
        );
    }

    #[test]
    fn done_closes_or_goes_to_review_under_pull_request() {
        let closed = Finished {
            status: BeadStatus::Closed,
            event: BeadEventKind::Done,
            closes: true,
            refine: false,
        };
        assert_eq!(on_done(None, false, false), closed);
        assert_eq!(
            on_done(None, true, true),
            closed,
            "a PR without the strategy"
        );
        assert_eq!(
            on_done(Some(MergeStrategy::Direct), true, false),
            closed,
            "direct, with no branch to merge"
        );
        assert_eq!(
            on_done(Some(MergeStrategy::PullRequest), false, false),
            closed,
            "nothing to review"
        );
        let review = |refine| Finished {
            status: BeadStatus::InReview,
            event: BeadEventKind::InReview,
            closes: false,
            refine,
        };
        assert_eq!(
            on_done(Some(MergeStrategy::PullRequest), true, false),
            review(false)
        );
        assert_eq!(
            on_done(Some(MergeStrategy::PullRequest), false, true),
            review(true)
        );
        assert_eq!(
            on_done(Some(MergeStrategy::PullRequest), true, true),
            review(true)
        );
        let c = config(None, None, Some(MergeStrategy::Direct));
        assert_eq!(merge_strategy(&c, Some("r1")), Some(MergeStrategy::Direct));
        let mut c = c;
        c.rig_overrides.get_mut("r1").unwrap().merge_strategy = Some(MergeStrategy::PullRequest);
        assert_eq!(
            merge_strategy(&c, Some("r1")),
            Some(MergeStrategy::PullRequest),
            "the rig's override wins"
        );
        assert_eq!(merge_strategy(&c, None), Some(MergeStrategy::Direct));
    }

    #[test]
    fn done_bodies_are_checked() {
        let done = |summary: &str, branch: Option<&str>, pr: Option<&str>| AgentDoneCallback {
            summary: summary.into(),
            branch: branch.map(Into::into),
            pr_url: pr.map(Into::into),
        };
        assert!(check_done(&done(
            "ok\nline two\ttab",
            Some("gastown/p/1"),
            Some("https://x/pr/1")
        ))
        .is_ok());
        let field = |d: &AgentDoneCallback| match check_done(d) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(&done("\u{7}", None, None)), "summary");
        assert_eq!(
            field(&done(&"x".repeat(MAX_CALLBACK_TEXT + 1), None, None)),
            "summary"
        );
        assert_eq!(field(&done("s", Some(""), None)), "branch");
        assert_eq!(field(&done("s", Some("a b"), None)), "branch");
        assert_eq!(field(&done("s", None, Some("ftp://x"))), "pr_url");
        assert_eq!(field(&done("s", None, Some("https://x y"))), "pr_url");
    }

    #[test]
    fn a_user_closes_or_reopens() {
        use BeadStatus::*;
        let close = Some(UserStatus::Closed);
        let open = Some(UserStatus::Open);
        assert_eq!(
            user_status_change(InProgress, close).unwrap(),
            Some(StatusChange::Close { stop_agent: true })
        );
        for s in [Open, InReview, Failed] {
            assert_eq!(
                user_status_change(s, close).unwrap(),
                Some(StatusChange::Close { stop_agent: false })
            );
        }
        assert_eq!(user_status_change(Closed, close).unwrap(), None);
        for s in [Closed, Failed, InReview] {
            assert_eq!(
                user_status_change(s, open).unwrap(),
                Some(StatusChange::Reopen)
            );
        }
        assert_eq!(user_status_change(Open, open).unwrap(), None);
        assert!(matches!(
            user_status_change(InProgress, open),
            Err(ApiError::Conflict(_))
        ));
        assert_eq!(user_status_change(InProgress, None).unwrap(), None);
    }

    #[test]
    fn a_stalled_agents_bead_reopens_fails_or_escalates() {
        assert_eq!(on_stall(1, 1), StallOutcome::Reopen);
        assert_eq!(on_stall(2, MAX_DISPATCH_ATTEMPTS - 1), StallOutcome::Reopen);
        assert!(matches!(
            on_stall(2, MAX_DISPATCH_ATTEMPTS),
            StallOutcome::Fail(reason) if reason.contains("Reopen the bead")
        ));
        assert!(matches!(
            on_stall(3, 1),
            StallOutcome::Escalate(reason) if reason.starts_with("crash loop: its agent failed 3 times within 30 minutes")
        ));
        assert!(
            matches!(
                on_stall(3, MAX_DISPATCH_ATTEMPTS),
                StallOutcome::Escalate(_)
            ),
            "a crash loop wins over the attempt cap"
        );
    }

    #[test]
    fn a_stop_hands_running_work_back_without_counting_a_failure() {
        let back = on_stop();
        assert_eq!(
            (back.running, back.to),
            (BeadStatus::InProgress, BeadStatus::Open)
        );
        assert_eq!(
            back.event,
            BeadEventKind::Reopened,
            "not stalled: no crash loop grows"
        );
        assert_ne!(back.event, BeadEventKind::Stalled);
        assert_eq!(back.agents, [AgentStatus::Working, AgentStatus::Stalled]);
        assert_eq!(back.agents_to, AgentStatus::Idle);
    }
}

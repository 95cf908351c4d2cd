//! The refinery's decisions, as plain functions over plain values: what a pull request (GitHub)
//! or merge request (GitLab) the town follows has become, what its review and checks add up
//! to, and whether that is new work for a polecat (a feedback bead), a human (an escalation) or
//! nothing. `TownDO` reads the provider (`platforms::pulls`) into an [`Observed`] and applies
//! the [`Step`] this module makes of it; the provider's webhooks only ask for a read, so a
//! delivery is never taken at its word.

use serde::{Deserialize, Serialize};

/// Where the town's copy of a pull request stands (the `pull_requests.state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrState {
    /// Not opened yet: the next refinery run opens it (or adopts the branch's open one).
    Opening,
    /// Open on the provider: followed by webhooks and the poll.
    Open,
    Merged,
    /// Closed without merging.
    Closed,
    /// Could not be opened (the reason is recorded).
    Failed,
    /// Its source bead was closed or reopened by hand: no longer followed.
    Detached,
}

impl PrState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            PrState::Opening => "opening",
            PrState::Open => "open",
            PrState::Merged => "merged",
            PrState::Closed => "closed",
            PrState::Failed => "failed",
            PrState::Detached => "detached",
        }
    }

    /// Whether the refinery still has something to do for it.
    #[must_use]
    pub fn followed(self) -> bool {
        matches!(self, PrState::Opening | PrState::Open)
    }
}

/// A bead's pull request as the dashboard sees it (`GET` of a bead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestInfo {
    /// The `merge_request` bead that follows it.
    pub bead_id: String,
    pub source_bead_id: String,
    /// `github` or `gitlab`; `null` until opened.
    pub platform: Option<String>,
    pub number: Option<u64>,
    pub url: Option<String>,
    pub state: PrState,
    pub branch: String,
    pub base: String,
    pub head_sha: Option<String>,
    pub checks: Option<Checks>,
    pub failing_check: Option<String>,
    pub review_decision: Option<ReviewDecision>,
    /// Who opened it on the provider (the user, or the App's bot).
    pub author: Option<String>,
    pub feedback_rounds: u32,
    pub feedback_bead_id: Option<String>,
    /// Why it could not be opened, or the provider's last failure.
    pub error: Option<String>,
    pub last_synced_at: Option<String>,
}

/// The provider's state of the pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    Open,
    Merged,
    Closed,
}

/// What its checks add up to, for the head commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checks {
    /// No check reported.
    None,
    Pending,
    Success,
    Failure,
}

impl Checks {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Checks::None => "none",
            Checks::Pending => "pending",
            Checks::Success => "success",
            Checks::Failure => "failure",
        }
    }
}

/// The reviewers' verdict, as GitHub's `reviewDecision` words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    Approved,
    ChangesRequested,
    ReviewRequired,
}

impl ReviewDecision {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewDecision::Approved => "approved",
            ReviewDecision::ChangesRequested => "changes_requested",
            ReviewDecision::ReviewRequired => "review_required",
        }
    }
}

/// One reviewer's say, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'a> {
    pub reviewer: &'a str,
    /// `None` for a comment, which changes no verdict.
    pub approves: Option<bool>,
    /// A dismissal clears the reviewer's verdict.
    pub dismissed: bool,
}

/// Each reviewer's latest verdict counts: any change request wins, then any approval; with
/// verdicts but none standing, a review is still required; with none at all, `None`.
#[must_use]
pub fn review_decision(verdicts: &[Verdict<'_>]) -> Option<ReviewDecision> {
    if verdicts.is_empty() {
        return None;
    }
    let mut latest: Vec<(&str, Option<bool>)> = Vec::new();
    for v in verdicts {
        let standing = if v.dismissed {
            None
        } else if v.approves.is_none() {
            continue;
        } else {
            v.approves
        };
        match latest.iter_mut().find(|(r, _)| *r == v.reviewer) {
            Some(slot) => slot.1 = standing,
            None => latest.push((v.reviewer, standing)),
        }
    }
    if latest.iter().any(|(_, s)| *s == Some(false)) {
        Some(ReviewDecision::ChangesRequested)
    } else if latest.iter().any(|(_, s)| *s == Some(true)) {
        Some(ReviewDecision::Approved)
    } else {
        Some(ReviewDecision::ReviewRequired)
    }
}

/// One check on the head commit: its `status` and, once completed, its `conclusion`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRun<'a> {
    pub name: &'a str,
    pub completed: bool,
    pub conclusion: Option<&'a str>,
}

/// Conclusions that fail a check (GitHub's; GitLab's pipeline `failed` maps to `failure`).
fn fails(conclusion: &str) -> bool {
    matches!(
        conclusion,
        "failure" | "timed_out" | "cancelled" | "action_required" | "startup_failure"
    )
}

/// The checks' sum and the first failing one's name.
#[must_use]
pub fn checks(runs: &[CheckRun<'_>]) -> (Checks, Option<String>) {
    if let Some(failed) = runs
        .iter()
        .find(|r| r.completed && r.conclusion.is_some_and(fails))
    {
        return (Checks::Failure, Some(failed.name.to_owned()));
    }
    let sum = if runs.is_empty() {
        Checks::None
    } else if runs.iter().any(|r| !r.completed) {
        Checks::Pending
    } else {
        Checks::Success
    };
    (sum, None)
}

/// A request for changes the town has not answered yet: its key (GitHub: the review's id;
/// GitLab: the head commit it was made on), and what the reviewers said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRequest {
    pub key: String,
    pub text: String,
}

/// What one read of the provider found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub remote: Remote,
    pub head_sha: Option<String>,
    pub checks: Checks,
    pub failing_check: Option<String>,
    pub review_decision: Option<ReviewDecision>,
    /// The newest request for changes, if the reviewers' verdict is one.
    pub change_request: Option<ChangeRequest>,
}

impl Observed {
    /// The state and head alone: what a closed or merged pull request needs, and where an open
    /// one's read starts.
    #[must_use]
    pub fn new(remote: Remote, head_sha: Option<String>) -> Self {
        Observed {
            remote,
            head_sha,
            checks: Checks::None,
            failing_check: None,
            review_decision: None,
            change_request: None,
        }
    }
}

/// What the town already did for a followed pull request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    /// A feedback bead of it is still open or worked on.
    pub feedback_pending: bool,
    /// Feedback beads made so far.
    pub rounds: u32,
    pub escalated: bool,
    /// The change request last answered (its key).
    pub handled_review: Option<String>,
    /// The head commit whose failing checks were last answered.
    pub handled_check: Option<String>,
}

/// Why a polecat gets another round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedbackReason {
    /// The reviewers asked for changes (their words).
    Review { key: String, text: String },
    /// A check failed on this head commit.
    Check { sha: String, name: String },
    /// The direct merge into the base branch conflicts in these files.
    Conflict { base: String, files: Vec<String> },
}

/// What the town does after a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Merged: the source bead and its merge request close, the convoy moves on.
    Merged,
    /// Closed without merging: the source bead fails with the reason.
    Closed,
    /// Still open; nothing new to act on.
    Wait,
    /// Still open, and there is new feedback for a polecat on the same branch.
    Feedback(FeedbackReason),
    /// Still open, new feedback, but the rounds are spent: a human decides.
    Escalate(FeedbackReason),
}

/// What a read of the pull request makes the town do. Feedback waits while an earlier round is
/// still pending; a review's request comes before a failing check; each is answered once; after
/// `max_rounds` rounds the next is escalated, once.
#[must_use]
pub fn step(observed: &Observed, followed: &Followed, max_rounds: u32) -> Step {
    match observed.remote {
        Remote::Merged => return Step::Merged,
        Remote::Closed => return Step::Closed,
        Remote::Open => {}
    }
    if followed.feedback_pending || followed.escalated {
        return Step::Wait;
    }
    let review = observed
        .change_request
        .as_ref()
        .filter(|_| observed.review_decision == Some(ReviewDecision::ChangesRequested))
        .filter(|c| followed.handled_review.as_deref() != Some(c.key.as_str()))
        .map(|c| FeedbackReason::Review {
            key: c.key.clone(),
            text: c.text.clone(),
        });
    let check = || match (&observed.head_sha, &observed.failing_check) {
        (Some(sha), Some(name))
            if observed.checks == Checks::Failure
                && followed.handled_check.as_deref() != Some(sha.as_str()) =>
        {
            Some(FeedbackReason::Check {
                sha: sha.clone(),
                name: name.clone(),
            })
        }
        _ => None,
    };
    match review.or_else(check) {
        None => Step::Wait,
        Some(reason) if followed.rounds >= max_rounds => Step::Escalate(reason),
        Some(reason) => Step::Feedback(reason),
    }
}

/// What a direct merge makes the town do: merged (or nothing left to merge) lands the code; a
/// conflict is a conflict bead on the branch, until the rounds are spent.
#[must_use]
pub fn on_merge(
    outcome: crate::control::MergeOutcome,
    base: &str,
    files: &[String],
    rounds: u32,
    max_rounds: u32,
) -> Step {
    use crate::control::MergeOutcome;
    match outcome {
        MergeOutcome::Merged | MergeOutcome::NothingToMerge => Step::Merged,
        MergeOutcome::Conflict => {
            let reason = FeedbackReason::Conflict {
                base: base.to_owned(),
                files: files.to_vec(),
            };
            if rounds >= max_rounds {
                Step::Escalate(reason)
            } else {
                Step::Feedback(reason)
            }
        }
    }
}

/// The body of a feedback (or conflict) bead: what to fix, on which branch, for which pull
/// request (none for a direct merge).
#[must_use]
pub fn feedback_body(
    reason: &FeedbackReason,
    pr_url: Option<&str>,
    branch: &str,
    source_body: &str,
) -> String {
    let ask = match reason {
        FeedbackReason::Review { text, .. } => {
            format!("The reviewers asked for changes:\n\n{text}")
        }
        FeedbackReason::Check { name, sha } => {
            format!("The check \"{name}\" failed on commit {sha}. Make it pass.")
        }
        FeedbackReason::Conflict { base, files } => format!(
            "Merging the branch into {base} conflicts in: {}. Merge {base} into the branch and resolve the conflicts.",
            files.join(", ")
        ),
    };
    let follows = match pr_url {
        Some(url) => format!(" (the pull request {url} follows it)"),
        None => " (the refinery merges it again once pushed)".to_owned(),
    };
    format!("{ask}\n\nPush the fix to the branch {branch}{follows}.\n\nThe original request:\n{source_body}")
}

/// A short line for the bead's log and the escalation.
#[must_use]
pub fn reason_line(reason: &FeedbackReason) -> String {
    match reason {
        FeedbackReason::Review { .. } => "the reviewers requested changes".to_owned(),
        FeedbackReason::Check { name, .. } => format!("the check \"{name}\" failed"),
        FeedbackReason::Conflict { base, files } => {
            format!("merging into {base} conflicts in {}", files.join(", "))
        }
    }
}

/// The label of feedback beads.
pub const FEEDBACK_LABEL: &str = "gt:pr-feedback";
/// The label of conflict beads (a direct merge that conflicts).
pub const CONFLICT_LABEL: &str = "gt:conflict";
/// The label of the escalation a spent review budget makes.
pub const FEEDBACK_ESCALATION_LABEL: &str = "gt:pr-feedback-limit";

/// How long to wait before trying to open a pull request again after the provider failed
/// (`attempt` from 1): 2 s doubling, at most the poll interval.
#[must_use]
pub fn open_retry_ms(attempt: u32, poll_ms: u64) -> u64 {
    2_000u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(poll_ms.max(2_000))
}

/// Tries to open a pull request before its bead fails.
pub const MAX_OPEN_ATTEMPTS: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    fn v(reviewer: &str, approves: Option<bool>) -> Verdict<'_> {
        Verdict {
            reviewer,
            approves,
            dismissed: false,
        }
    }

    #[test]
    fn the_latest_verdict_of_each_reviewer_counts() {
        assert_eq!(review_decision(&[]), None);
        assert_eq!(
            review_decision(&[v("a", None)]),
            Some(ReviewDecision::ReviewRequired),
            "comments only"
        );
        assert_eq!(
            review_decision(&[v("a", Some(false)), v("a", Some(true))]),
            Some(ReviewDecision::Approved),
            "a later approval replaces the request"
        );
        assert_eq!(
            review_decision(&[v("a", Some(false)), v("a", None)]),
            Some(ReviewDecision::ChangesRequested),
            "a later comment keeps it"
        );
        assert_eq!(
            review_decision(&[v("a", Some(true)), v("b", Some(false))]),
            Some(ReviewDecision::ChangesRequested),
            "any request wins"
        );
        let dismissed = Verdict {
            reviewer: "a",
            approves: None,
            dismissed: true,
        };
        assert_eq!(
            review_decision(&[v("a", Some(false)), dismissed]),
            Some(ReviewDecision::ReviewRequired)
        );
    }

    #[test]
    fn checks_add_up() {
        let run = |name, completed, conclusion| CheckRun {
            name,
            completed,
            conclusion,
        };
        assert_eq!(checks(&[]), (Checks::None, None));
        assert_eq!(
            checks(&[run("a", true, Some("success")), run("b", false, None)]),
            (Checks::Pending, None)
        );
        assert_eq!(
            checks(&[
                run("a", true, Some("success")),
                run("b", true, Some("skipped"))
            ]),
            (Checks::Success, None)
        );
        assert_eq!(
            checks(&[run("a", false, None), run("lint", true, Some("failure"))]),
            (Checks::Failure, Some("lint".into())),
            "a failure shows before the others finish"
        );
        assert_eq!(
            checks(&[run("t", true, Some("timed_out"))]).0,
            Checks::Failure
        );
    }

    fn open(
        decision: Option<ReviewDecision>,
        request: Option<&str>,
        failing: Option<&str>,
    ) -> Observed {
        Observed {
            remote: Remote::Open,
            head_sha: Some("sha1".into()),
            checks: if failing.is_some() {
                Checks::Failure
            } else {
                Checks::Success
            },
            failing_check: failing.map(Into::into),
            review_decision: decision,
            change_request: request.map(|k| ChangeRequest {
                key: k.into(),
                text: "fix it".into(),
            }),
        }
    }

    #[test]
    fn merged_and_closed_end_it() {
        let mut o = open(None, None, None);
        o.remote = Remote::Merged;
        assert_eq!(step(&o, &Followed::default(), 3), Step::Merged);
        o.remote = Remote::Closed;
        let busy = Followed {
            feedback_pending: true,
            ..Followed::default()
        };
        assert_eq!(step(&o, &busy, 3), Step::Closed, "whatever is pending");
    }

    #[test]
    fn a_change_request_is_answered_once_and_waits_for_the_round() {
        let asked = open(Some(ReviewDecision::ChangesRequested), Some("11"), None);
        let fresh = Followed::default();
        assert!(matches!(
            step(&asked, &fresh, 3),
            Step::Feedback(FeedbackReason::Review { key, .. }) if key == "11"
        ));
        let pending = Followed {
            feedback_pending: true,
            rounds: 1,
            ..Followed::default()
        };
        assert_eq!(step(&asked, &pending, 3), Step::Wait);
        let answered = Followed {
            rounds: 1,
            handled_review: Some("11".into()),
            ..Followed::default()
        };
        assert_eq!(step(&asked, &answered, 3), Step::Wait, "the same review");
        let again = open(Some(ReviewDecision::ChangesRequested), Some("12"), None);
        assert!(matches!(step(&again, &answered, 3), Step::Feedback(_)));
        let approved = open(Some(ReviewDecision::Approved), Some("12"), None);
        assert_eq!(step(&approved, &answered, 3), Step::Wait, "since approved");
    }

    #[test]
    fn a_failing_check_is_answered_once_per_head() {
        let failing = open(None, None, Some("ci/test"));
        assert!(matches!(
            step(&failing, &Followed::default(), 3),
            Step::Feedback(FeedbackReason::Check { sha, name }) if sha == "sha1" && name == "ci/test"
        ));
        let answered = Followed {
            rounds: 1,
            handled_check: Some("sha1".into()),
            ..Followed::default()
        };
        assert_eq!(step(&failing, &answered, 3), Step::Wait);
        let mut new_head = failing.clone();
        new_head.head_sha = Some("sha2".into());
        assert!(matches!(step(&new_head, &answered, 3), Step::Feedback(_)));
        let both = open(
            Some(ReviewDecision::ChangesRequested),
            Some("5"),
            Some("ci"),
        );
        assert!(
            matches!(
                step(&both, &Followed::default(), 3),
                Step::Feedback(FeedbackReason::Review { .. })
            ),
            "the review first"
        );
    }

    #[test]
    fn spent_rounds_escalate_once() {
        let asked = open(Some(ReviewDecision::ChangesRequested), Some("9"), None);
        let spent = Followed {
            rounds: 3,
            ..Followed::default()
        };
        assert!(matches!(step(&asked, &spent, 3), Step::Escalate(_)));
        let escalated = Followed {
            escalated: true,
            ..spent
        };
        assert_eq!(step(&asked, &escalated, 3), Step::Wait);
        assert!(matches!(
            step(&asked, &Followed::default(), 0),
            Step::Escalate(_)
        ));
    }

    #[test]
    fn a_direct_merge_lands_or_makes_conflict_work_until_the_rounds_are_spent() {
        use crate::control::MergeOutcome;
        let files = vec!["x".to_owned()];
        assert_eq!(
            on_merge(MergeOutcome::Merged, "main", &[], 0, 2),
            Step::Merged
        );
        assert_eq!(
            on_merge(MergeOutcome::NothingToMerge, "main", &[], 5, 2),
            Step::Merged
        );
        assert!(matches!(
            on_merge(MergeOutcome::Conflict, "main", &files, 1, 2),
            Step::Feedback(FeedbackReason::Conflict { files, .. }) if files == ["x"]
        ));
        assert!(matches!(
            on_merge(MergeOutcome::Conflict, "main", &files, 2, 2),
            Step::Escalate(_)
        ));
    }

    #[test]
    fn feedback_names_the_branch_and_the_ask() {
        let body = feedback_body(
            &FeedbackReason::Check {
                sha: "abc".into(),
                name: "lint".into(),
            },
            Some("https://x/pull/3"),
            "gastown/p/1",
            "Add a greeting",
        );
        assert!(body.contains("\"lint\" failed on commit abc"));
        assert!(body.contains("gastown/p/1") && body.contains("https://x/pull/3"));
        assert!(body.ends_with("Add a greeting"));
        let conflict = FeedbackReason::Conflict {
            base: "main".into(),
            files: vec!["a.txt".into(), "b.txt".into()],
        };
        let body = feedback_body(&conflict, None, "gastown/p/2", "Do it");
        assert!(body.contains("conflicts in: a.txt, b.txt") && body.contains("gastown/p/2"));
        assert!(!body.contains("pull request"));
        assert_eq!(open_retry_ms(1, 60_000), 2_000);
        assert_eq!(open_retry_ms(3, 60_000), 8_000);
        assert_eq!(open_retry_ms(30, 60_000), 60_000);
        assert_eq!(open_retry_ms(3, 1_000), 2_000);
        assert!(PrState::Open.followed() && PrState::Opening.followed());
        assert!(!PrState::Merged.followed() && !PrState::Detached.followed());
    }
}

//! The refinery: from a finished branch to merged code. Under the `pull_request` strategy an
//! agent's `done` with a branch leaves its bead `in_review` and makes a `merge_request` bead with
//! a `pull_requests` row (`opening`); the next run of the loop opens the pull request (GitHub) or
//! merge request (GitLab) through the rig's integration, or adopts the branch's open one, and
//! from then on follows it: a webhook asks for a read at once, and the poll reads it every
//! `PR_POLL_MS` while it is open (a town that follows none makes no call). What a read finds is
//! `gastown_core::refinery::step`'s to decide: merged closes the source bead and its merge
//! request (so a convoy's dependents may go), closed fails the source bead (a reopen starts it
//! over, with a new pull request), and a request for changes or a failing check becomes a
//! feedback bead on the same branch, until the rounds are spent and a human is asked.

use super::store::{self, Actor, PullRow};
use super::TownDO;
use crate::config;
use crate::platforms::pulls::{self, OpenError, Target};
use crate::platforms::{git_token, store as integrations_store};
use gastown_core::beads::{Bead, BeadEventKind, BeadStatus, BeadType, NewBead, MAX_TITLE};
use gastown_core::control::GitTokenSource;
use gastown_core::control::{MergeBody, MergeOutcome};
use gastown_core::error::ApiError;
use gastown_core::ids::UserId;
use gastown_core::integrations::{self, Platform};
use gastown_core::model::Town;
use gastown_core::protocol::container::{Merge, Merged};
use gastown_core::protocol::town::RigCredentialsReply;
use gastown_core::refinery::{
    self, FeedbackReason, Followed, Observed, PrState, Step, CONFLICT_LABEL,
    FEEDBACK_ESCALATION_LABEL, FEEDBACK_LABEL, MAX_OPEN_ATTEMPTS,
};
use gastown_core::time::rfc3339;
use gastown_core::town_config::MergeStrategy;
use worker::console_error;

type Reply<T> = Result<T, ApiError>;

/// The `platform` of a branch the refinery merges itself.
const DIRECT: &str = "direct";

/// Most pull requests one run of the loop opens or reads.
const PER_RUN: u32 = 10;

/// A pull request's provider, repository and a token for it.
struct Reach {
    platform: Platform,
    repo: String,
    token: String,
    installation_id: Option<String>,
}

fn clipped(text: &str) -> String {
    text.chars().take(MAX_TITLE).collect()
}

impl TownDO {
    /// An agent's `done` with `branch` under the `pull_request` strategy: the merge request bead
    /// and its pull request to open, due at once.
    pub(super) fn start_review(
        &self,
        source: &Bead,
        branch: &str,
        summary: &str,
        strategy: Option<MergeStrategy>,
    ) -> Reply<()> {
        let sql = self.sql();
        let rig_id = source
            .rig_id
            .as_ref()
            .ok_or_else(|| ApiError::internal("a reviewed bead has no rig"))?;
        let rig = store::rig(&sql, rig_id.as_str())?
            .ok_or_else(|| ApiError::internal("a reviewed bead's rig is gone"))?;
        let metadata =
            serde_json::json!({ "source_bead_id": source.id, "branch": branch }).to_string();
        let new = NewBead {
            bead_type: BeadType::MergeRequest,
            title: clipped(&format!("Merge: {}", source.title)),
            body: summary.to_owned(),
            rig_id: Some(rig_id.clone()),
            priority: source.priority,
            labels: Vec::new(),
            metadata,
        };
        let id = self.insert_town_bead(
            &new,
            &source.created_by,
            &format!("for bead {} on branch {branch}", source.id),
        )?;
        let now_ms = config::now_ms();
        store::insert_pull(
            &sql,
            &id,
            &source.id,
            rig_id.as_str(),
            branch,
            &rig.default_branch,
            (strategy == Some(MergeStrategy::Direct)).then_some(DIRECT),
            now_ms,
        )
    }

    /// A feedback bead's `done`: its pull request is read again at once (the new commits).
    pub(super) fn feedback_done(&self, pull: &PullRow) -> Reply<()> {
        if !parse_state(&pull.state).is_some_and(PrState::followed) {
            return Ok(());
        }
        store::pull_due_at(&self.sql(), &pull.bead_id, config::now_ms())
    }

    /// A pull request no longer followed: its feedback bead, if nobody has started it, is moot.
    fn drop_feedback(&self, row: &PullRow, line: &str) -> Reply<()> {
        let Some(feedback) = &row.feedback_bead_id else {
            return Ok(());
        };
        let sql = self.sql();
        if store::bead(&sql, feedback)?.is_some_and(|b| b.status == BeadStatus::Open) {
            let now_ms = config::now_ms();
            store::close_bead(&sql, feedback, &rfc3339(now_ms))?;
            store::event(
                &sql,
                feedback,
                BeadEventKind::Closed,
                &Actor::Town,
                Some(line),
                now_ms,
            )?;
        }
        Ok(())
    }

    /// One run of the refinery: opens and reads what is due, then sets the alarm for the next
    /// one due (never later than it, never earlier than needed).
    pub(super) async fn refine(&self, town: &Town) -> Reply<()> {
        let before = store::work_marker(&self.sql())?;
        let due = store::due_pulls(&self.sql(), config::now_ms(), PER_RUN)?;
        let poll = config::get(&self.env).work.pr_poll_ms;
        for row in due {
            self.still_here()?;
            if let Err(e) = self.refine_one(town, &row).await {
                console_error!("town {}: refinery, {}: {e}", town.id, row.bead_id);
                // Whatever failed, the row waits a poll interval: never an alarm loop.
                self.still_here()?;
                store::pull_due_at(&self.sql(), &row.bead_id, config::now_ms() + poll)?;
            }
        }
        self.after_refining(before).await
    }

    /// Work the run made or freed is dispatched at once, not at an idle town's cadence; then
    /// the alarm comes no later than the next pull request due.
    async fn after_refining(&self, before: (u64, u64)) -> Reply<()> {
        self.still_here()?;
        if store::work_marker(&self.sql())? != before {
            self.kick().await?;
        }
        self.wake_for_next_pull().await
    }

    /// The alarm comes no later than the next followed pull request is due.
    pub(super) async fn wake_for_next_pull(&self) -> Reply<()> {
        let Some(due) = store::next_pull_due(&self.sql())? else {
            return Ok(());
        };
        let storage = self.state.storage();
        let pending = storage.get_alarm().await.map_err(ApiError::internal)?;
        let due_at = i64::try_from(due).unwrap_or(i64::MAX);
        if pending.is_none_or(|at| at > due_at) {
            let offset = due.saturating_sub(config::now_ms()).max(50);
            storage
                .set_alarm(i64::try_from(offset).unwrap_or(i64::MAX))
                .await
                .map_err(ApiError::internal)?;
        }
        Ok(())
    }

    /// A provider's webhook names the pull request of merge request bead `bead`: read it now.
    /// A stopped town reads it when it starts again.
    pub(super) async fn refine_now(&self, town: &Town, bead: &str) -> Reply<Option<PrState>> {
        let sql = self.sql();
        let Some(row) = store::pull(&sql, bead)? else {
            return Ok(None);
        };
        if parse_state(&row.state).is_some_and(PrState::followed) {
            store::pull_due_at(&sql, bead, config::now_ms())?;
            let before = store::work_marker(&sql)?;
            if self.require_active(town).is_ok() {
                self.refine_one(town, &row).await?;
            }
            self.after_refining(before).await?;
        }
        Ok(store::pull(&self.sql(), bead)?.and_then(|r| parse_state(&r.state)))
    }

    async fn refine_one(&self, town: &Town, row: &PullRow) -> Reply<()> {
        let sql = self.sql();
        let now_ms = config::now_ms();
        let source = store::bead(&sql, &row.source_bead_id)?;
        // A source bead closed, reopened or deleted by hand is no longer the refinery's.
        if source
            .as_ref()
            .is_none_or(|b| b.status != BeadStatus::InReview)
        {
            store::pull_ended(&sql, &row.bead_id, PrState::Detached.as_str(), None, now_ms)?;
            return self.drop_feedback(row, "its bead was closed or reopened by hand");
        }
        let source = source.ok_or_else(|| ApiError::internal("source bead vanished"))?;
        if !store::rig_exists(&sql, &row.rig_id)? {
            return self.not_opened(row, &source, "the bead's rig was removed");
        }
        if row.platform.as_deref() == Some(DIRECT) {
            return self.merge_direct(town, row, &source).await;
        }
        let reach = match self.reach(town, row, &source).await {
            Ok(reach) => reach,
            Err(OpenError::Refused(reason)) if row.state == "opening" => {
                return self.not_opened(row, &source, &reason);
            }
            Err(error) => return self.provider_failed(row, &source, error),
        };
        self.still_here()?;
        if row.state == "opening" {
            self.open_pull(town, row, &source, &reach).await
        } else {
            self.read_pull(row, &source, &reach).await
        }
    }

    /// The provider, repository and token of `row`'s rig: the user's token when the town
    /// commits as its users (the pull request is then the source bead's creator's), else the
    /// App's or the GitLab connection's.
    async fn reach(&self, town: &Town, row: &PullRow, source: &Bead) -> Result<Reach, OpenError> {
        let internal = |e: ApiError| OpenError::Transient(e.to_string());
        let sql = self.sql();
        let rig = store::rig(&sql, &row.rig_id)
            .map_err(internal)?
            .ok_or_else(|| OpenError::Refused("the bead's rig was removed".into()))?;
        let Some(integration_id) = rig.platform_integration_id.clone() else {
            return Err(OpenError::Refused(format!(
                "the rig has no GitHub or GitLab integration to open a pull request with; the work is on the branch {}",
                row.branch
            )));
        };
        let repo = integrations::repo_full_name(&rig.git_url)
            .ok_or_else(|| OpenError::Refused("the rig's git_url names no repository".into()))?;
        let config = self.config(&town.id).map_err(internal)?;
        let as_user = match UserId::parse(&source.created_by) {
            Ok(_) => source.created_by.clone(),
            Err(_) => town.token_user_id().map_err(internal)?.to_owned(),
        };
        let creds = RigCredentialsReply {
            town: town.clone(),
            rig,
            town_token: None,
            commit_as_user: config.commit_as_user,
            as_user,
            session_identity: None,
        };
        let token = git_token::for_rig(&self.env, creds)
            .await
            .map_err(|e| match e {
                ApiError::IntegrationUnavailable(code) => {
                    OpenError::Refused(format!("the rig's integration is unavailable ({code})"))
                }
                ApiError::NoGitCredentials | ApiError::Forbidden(_) => {
                    OpenError::Refused(format!("no credentials for the rig's repository: {e}"))
                }
                other => OpenError::Transient(format!("minting a token: {other}")),
            })?;
        let platform = match token.source {
            GitTokenSource::GithubApp | GitTokenSource::GithubUser => Platform::Github,
            GitTokenSource::GitlabOauth => Platform::Gitlab,
            GitTokenSource::TownConfig => {
                return Err(OpenError::Refused(
                    "the rig's integration gave no provider token".into(),
                ))
            }
        };
        let installation_id = match platform {
            Platform::Github => integrations_store::get(&self.env, &integration_id)
                .await
                .map_err(internal)?
                .and_then(|r| r.installation_id),
            Platform::Gitlab => None,
        };
        Ok(Reach {
            platform,
            repo,
            token: token.token,
            installation_id,
        })
    }

    async fn open_pull(
        &self,
        town: &Town,
        row: &PullRow,
        source: &Bead,
        reach: &Reach,
    ) -> Reply<()> {
        let target = Target {
            platform: reach.platform,
            repo: &reach.repo,
            token: &reach.token,
        };
        let settings = config::get(&self.env);
        let sql = self.sql();
        let summary = store::bead(&sql, &row.bead_id)?
            .map(|b| b.body)
            .unwrap_or_default();
        let body = format!(
            "{summary}\n\n---\nOpened by Gastown for bead {} ({}).",
            source.id, source.title
        );
        let opened = pulls::open(
            &settings.platforms,
            &target,
            &row.branch,
            &row.base,
            &source.title,
            &body,
        )
        .await;
        self.still_here()?;
        // A webhook's run may have opened it meanwhile.
        if store::pull(&sql, &row.bead_id)?.is_none_or(|r| r.state != "opening") {
            return Ok(());
        }
        let opened = match opened {
            Ok(opened) => opened,
            Err(OpenError::Refused(reason)) => return self.not_opened(row, source, &reason),
            Err(transient) => return self.provider_failed(row, source, transient),
        };
        let now_ms = config::now_ms();
        let poll = settings.work.pr_poll_ms;
        store::pull_opened(
            &sql,
            &row.bead_id,
            reach.platform.as_str(),
            opened.number,
            &opened.url,
            &opened.author,
            now_ms + poll,
            now_ms,
        )?;
        store::set_pr_url(&sql, &source.id, &opened.url, &rfc3339(now_ms))?;
        store::set_pr_url(&sql, &row.bead_id, &opened.url, &rfc3339(now_ms))?;
        let line = format!(
            "#{} {} by {} ({} into {})",
            opened.number, opened.url, opened.author, row.branch, row.base
        );
        for bead in [&source.id, &row.bead_id] {
            store::event(
                &sql,
                bead,
                BeadEventKind::PullRequest,
                &Actor::Town,
                Some(&line),
                now_ms,
            )?;
        }
        let entry = pulls::Entry {
            platform: reach.platform,
            repo: &reach.repo,
            number: opened.number,
            town: town.id.as_str(),
            bead: &row.bead_id,
            installation_id: reach.installation_id.as_deref(),
        };
        pulls::index(&self.env, &entry, now_ms).await
    }

    /// The pull request cannot be opened (or the branch merged): the source bead and its merge
    /// request fail with the reason (a reopen of the source bead tries again).
    fn not_opened(&self, row: &PullRow, source: &Bead, reason: &str) -> Reply<()> {
        let sql = self.sql();
        let now_ms = config::now_ms();
        let line = match row.platform.as_deref() {
            Some(DIRECT) => format!("not merged: {reason}"),
            _ => format!("no pull request: {reason}"),
        };
        store::pull_ended(
            &sql,
            &row.bead_id,
            PrState::Failed.as_str(),
            Some(reason),
            now_ms,
        )?;
        self.fail_both(row, source, &line)
    }

    /// The source bead and its merge request fail with `line` (reopenable); the convoy follows.
    fn fail_both(&self, row: &PullRow, source: &Bead, line: &str) -> Reply<()> {
        let sql = self.sql();
        let now_ms = config::now_ms();
        let now = rfc3339(now_ms);
        for bead in [&row.bead_id, &source.id] {
            store::fail_bead(&sql, bead, line, &now)?;
            store::event(
                &sql,
                bead,
                BeadEventKind::Failed,
                &Actor::Town,
                Some(line),
                now_ms,
            )?;
        }
        store::settle_convoy_of(&sql, &source.id, now_ms)
    }

    /// The provider failed: an opening is tried again with backoff, then given up; a followed
    /// pull request is read again at the next poll.
    fn provider_failed(&self, row: &PullRow, source: &Bead, error: OpenError) -> Reply<()> {
        let (reason, refused) = match error {
            OpenError::Refused(r) => (r, true),
            OpenError::Transient(r) => (r, false),
        };
        let settings = config::get(&self.env);
        let now_ms = config::now_ms();
        let attempts = (row.attempts as u32).saturating_add(1);
        if row.state == "open" {
            // An open pull request the provider refuses to show (gone, or the integration
            // lost) ends after MAX_OPEN_ATTEMPTS refusals in a row; an outage is only waited out.
            let attempts = if refused {
                attempts
            } else {
                row.attempts as u32
            };
            if attempts >= MAX_OPEN_ATTEMPTS {
                store::pull_ended(
                    &self.sql(),
                    &row.bead_id,
                    PrState::Failed.as_str(),
                    Some(&reason),
                    now_ms,
                )?;
                return self.fail_both(
                    row,
                    source,
                    &format!("its pull request could not be read {attempts} times in a row, last: {reason}"),
                );
            }
            return store::pull_retry(
                &self.sql(),
                &row.bead_id,
                attempts,
                &reason,
                now_ms + settings.work.pr_poll_ms,
            );
        }
        // Opening (or merging): tried again with backoff, then given up.
        if attempts >= MAX_OPEN_ATTEMPTS {
            return self.not_opened(
                row,
                source,
                &format!("the provider failed {attempts} times, last: {reason}"),
            );
        }
        let next = now_ms + refinery::open_retry_ms(attempts, settings.work.pr_poll_ms);
        store::pull_retry(&self.sql(), &row.bead_id, attempts, &reason, next)
    }

    async fn read_pull(&self, row: &PullRow, source: &Bead, reach: &Reach) -> Reply<()> {
        let settings = config::get(&self.env);
        let number = row.number.map_or(0, |n| n as u64);
        let target = Target {
            platform: reach.platform,
            repo: &reach.repo,
            token: &reach.token,
        };
        let observed = pulls::read(&settings.platforms, &target, number).await;
        self.still_here()?;
        let observed = match observed {
            Ok(o) => o,
            Err(e) => return self.provider_failed(row, source, e),
        };
        let sql = self.sql();
        // The row as it is now: a webhook's read may have run meanwhile.
        let Some(row) = store::pull(&sql, &row.bead_id)?.filter(|r| r.state == "open") else {
            return Ok(());
        };
        let now_ms = config::now_ms();
        store::pull_synced(
            &sql,
            &row.bead_id,
            observed.head_sha.as_deref(),
            observed.checks.as_str(),
            observed.failing_check.as_deref(),
            observed.review_decision.map(|d| d.as_str()),
            now_ms + settings.work.pr_poll_ms,
            now_ms,
        )?;
        let feedback_pending = match &row.feedback_bead_id {
            Some(id) => store::bead(&sql, id)?
                .is_some_and(|b| matches!(b.status, BeadStatus::Open | BeadStatus::InProgress)),
            None => false,
        };
        let followed = Followed {
            feedback_pending,
            rounds: row.rounds as u32,
            escalated: row.escalated > 0.0,
            handled_review: row.handled_review.clone(),
            handled_check: row.handled_check.clone(),
        };
        let step = refinery::step(&observed, &followed, settings.work.pr_feedback_rounds);
        self.apply_step(&row, source, Some(&observed), step)
    }

    fn apply_step(
        &self,
        row: &PullRow,
        source: &Bead,
        observed: Option<&Observed>,
        step: Step,
    ) -> Reply<()> {
        let sql = self.sql();
        let now_ms = config::now_ms();
        let now = rfc3339(now_ms);
        let number = row.number.map_or(0, |n| n as u64);
        match step {
            Step::Wait => Ok(()),
            Step::Merged => {
                let line = match row.platform.as_deref() {
                    Some(DIRECT) => format!("{} merged into {}", row.branch, row.base),
                    _ => format!("pull request #{number} merged"),
                };
                store::pull_ended(&sql, &row.bead_id, PrState::Merged.as_str(), None, now_ms)?;
                for bead in [&row.bead_id, &source.id] {
                    store::close_bead(&sql, bead, &now)?;
                    store::event(
                        &sql,
                        bead,
                        BeadEventKind::Merged,
                        &Actor::Town,
                        Some(&line),
                        now_ms,
                    )?;
                }
                // Feedback nobody has started is moot once the code landed.
                self.drop_feedback(row, &line)?;
                store::settle_convoy_of(&sql, &source.id, now_ms)
            }
            Step::Closed => {
                let line = format!(
                    "its pull request #{number} was closed without merging; reopen the bead to try again"
                );
                store::pull_ended(&sql, &row.bead_id, PrState::Closed.as_str(), None, now_ms)?;
                self.drop_feedback(row, &line)?;
                self.fail_both(row, source, &line)
            }
            Step::Feedback(reason) => self.feedback(row, source, observed, &reason),
            Step::Escalate(reason) => {
                let (review, check) = handled(&reason);
                store::pull_feedback(&sql, &row.bead_id, None, review, check, true)?;
                let what = refinery::reason_line(&reason);
                let rounds = row.rounds as u32;
                let subject = match &row.url {
                    Some(url) => format!("pull request {url}"),
                    None => format!("the merge of {}", row.branch),
                };
                self.raise_escalation(
                    source,
                    &format!(
                        "The {subject} of bead {} still needs work after {rounds} feedback rounds: {what}. A human decides what happens next.",
                        source.id
                    ),
                    &format!(
                        "the {subject} of bead {} ({}) still needs work after {rounds} feedback rounds: {what}",
                        source.id, source.title
                    ),
                    FEEDBACK_ESCALATION_LABEL,
                )?;
                // A direct merge has nothing left to follow: the bead fails, reopenable.
                if row.platform.as_deref() == Some(DIRECT) {
                    self.not_opened(
                        row,
                        source,
                        &format!("{what}, after {rounds} rounds; escalated"),
                    )?;
                }
                Ok(())
            }
        }
    }

    /// A feedback bead on the pull request's branch, for the next polecat.
    fn feedback(
        &self,
        row: &PullRow,
        source: &Bead,
        observed: Option<&Observed>,
        reason: &FeedbackReason,
    ) -> Reply<()> {
        let sql = self.sql();
        let number = row.number.map_or(0, |n| n as u64);
        let round = row.rounds as u32 + 1;
        let metadata = serde_json::json!({
            "pull_request_bead_id": row.bead_id,
            "source_bead_id": source.id,
            "branch": row.branch,
            "round": round,
            "head_sha": observed.and_then(|o| o.head_sha.clone()),
        })
        .to_string();
        let (title, label) = match reason {
            FeedbackReason::Conflict { .. } => (
                format!("Conflict merging {}: {}", row.branch, source.title),
                CONFLICT_LABEL,
            ),
            _ => (
                format!("Feedback on #{number}: {}", source.title),
                FEEDBACK_LABEL,
            ),
        };
        let new = NewBead {
            bead_type: BeadType::Issue,
            title: clipped(&title),
            body: refinery::feedback_body(reason, row.url.as_deref(), &row.branch, &source.body),
            rig_id: source.rig_id.clone(),
            priority: source.priority,
            labels: vec![label.to_owned()],
            metadata,
        };
        let id = self.insert_town_bead(
            &new,
            &source.created_by,
            &format!("round {round} for {}", row.bead_id),
        )?;
        store::set_work_branch(&sql, &id, &row.branch)?;
        let now_ms = config::now_ms();
        let (review, check) = handled(reason);
        store::pull_feedback(&sql, &row.bead_id, Some(&id), review, check, false)?;
        let line = format!(
            "round {round}: {} → bead {id}",
            refinery::reason_line(reason)
        );
        for bead in [&row.bead_id, &source.id] {
            store::event(
                &sql,
                bead,
                BeadEventKind::Feedback,
                &Actor::Town,
                Some(&line),
                now_ms,
            )?;
        }
        Ok(())
    }
}

impl TownDO {
    /// The refinery merges the branch itself, in the container (started if it is not running):
    /// merged (or already in) closes the bead, a conflict is a conflict bead on the branch
    /// (merged again once it is done), a branch the remote lacks fails the bead, and anything
    /// else is tried again with backoff. Nothing happens while a conflict bead is pending.
    async fn merge_direct(&self, town: &Town, row: &PullRow, source: &Bead) -> Reply<()> {
        let sql = self.sql();
        let settings = config::get(&self.env);
        let now_ms = config::now_ms();
        if let Some(feedback) = &row.feedback_bead_id {
            if store::bead(&sql, feedback)?
                .is_some_and(|b| matches!(b.status, BeadStatus::Open | BeadStatus::InProgress))
            {
                return store::pull_due_at(&sql, &row.bead_id, now_ms + settings.work.pr_poll_ms);
            }
        }
        let rig = store::rig(&sql, &row.rig_id)?
            .ok_or_else(|| ApiError::internal("a merged bead's rig is gone"))?;
        let config = self.config(&town.id)?;
        let body = MergeBody {
            town_id: town.id.as_str().to_owned(),
            rig_id: row.rig_id.clone(),
            git_url: rig.git_url.clone(),
            branch: row.branch.clone(),
            base: row.base.clone(),
            message: format!(
                "Merge branch '{}' into {}\n\nBead {}: {}",
                row.branch, row.base, source.id, source.title
            ),
            author_name: config
                .git_author_name
                .clone()
                .unwrap_or_else(|| "Gastown Refinery".to_owned()),
            author_email: config
                .git_author_email
                .clone()
                .unwrap_or_else(|| "refinery@gastown.invalid".to_owned()),
        };
        let call = |body: MergeBody| async {
            self.container(&town.id)?
                .call(Merge {
                    town_id: town.id.clone(),
                    body,
                })
                .await
        };
        let mut merged = call(body.clone()).await?;
        if merged == Merged::TownUnknown {
            if let Err(e) = self.start_for_dispatch(town).await {
                self.still_here()?;
                return self.provider_failed(row, source, OpenError::Transient(e));
            }
            merged = call(body).await?;
        }
        self.still_here()?;
        // The bead may have been closed, reopened or deleted by hand meanwhile.
        let current = store::pull(&sql, &row.bead_id)?;
        let source_now = store::bead(&sql, &source.id)?;
        if current.is_none_or(|r| r.state != "opening")
            || source_now.is_none_or(|b| b.status != BeadStatus::InReview)
        {
            return Ok(());
        }
        match merged {
            Merged::Done { reply } => {
                if reply.outcome == MergeOutcome::Conflict {
                    store::event(
                        &sql,
                        &row.bead_id,
                        BeadEventKind::Status,
                        &Actor::Town,
                        Some(&format!(
                            "merging into {} conflicts in {}",
                            row.base,
                            reply.files.join(", ")
                        )),
                        now_ms,
                    )?;
                    store::pull_due_at(&sql, &row.bead_id, now_ms + settings.work.pr_poll_ms)?;
                } else if let Some(sha) = &reply.sha {
                    store::event(
                        &sql,
                        &row.bead_id,
                        BeadEventKind::Status,
                        &Actor::Town,
                        Some(&format!("{} is now {sha}", row.base)),
                        now_ms,
                    )?;
                }
                let step = refinery::on_merge(
                    reply.outcome,
                    &row.base,
                    &reply.files,
                    row.rounds as u32,
                    settings.work.pr_feedback_rounds,
                );
                self.apply_step(row, source, None, step)
            }
            Merged::Refused { error } => self.not_opened(row, source, &error),
            Merged::Failed { error } => {
                self.provider_failed(row, source, OpenError::Transient(error))
            }
            Merged::TownUnknown => self.provider_failed(
                row,
                source,
                OpenError::Transient("the container did not know the town".into()),
            ),
        }
    }
}

/// The keys a feedback reason answers.
fn handled(reason: &FeedbackReason) -> (Option<&str>, Option<&str>) {
    match reason {
        FeedbackReason::Review { key, .. } => (Some(key.as_str()), None),
        FeedbackReason::Check { sha, .. } => (None, Some(sha.as_str())),
        FeedbackReason::Conflict { .. } => (None, None),
    }
}

fn parse_state(s: &str) -> Option<PrState> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

//! Pull requests (GitHub) and merge requests (GitLab) as the refinery reaches them, with the
//! rig's git token (`git_token::for_rig`: the user's when commits are the user's, so the pull
//! request is theirs; else the App's or the GitLab connection's): find the branch's open one,
//! open one, and read one into a [`refinery::Observed`]. The index in D1
//! (`pull_request_index`) tells a webhook which town follows which.

use super::http::{self, Answer, Body};
use crate::config::Platforms;
use crate::d1::{all, n, opt, run, s};
use gastown_core::error::ApiError;
use gastown_core::integrations::Platform;
use gastown_core::refinery::{self, ChangeRequest, CheckRun, Observed, Remote, Verdict};
use serde::Deserialize;
use serde_json::{json, Value};
use worker::{Env, Method};

/// Where a pull request lives, and the token to reach it with.
pub struct Target<'a> {
    pub platform: Platform,
    /// `owner/name` (GitHub) or `namespace/project` (GitLab).
    pub repo: &'a str,
    pub token: &'a str,
}

/// A pull request opened or found.
#[derive(Debug, Clone)]
pub struct Opened {
    pub number: u64,
    pub url: String,
    pub author: String,
}

/// Why one could not be opened.
#[derive(Debug, Clone)]
pub enum OpenError {
    /// For good, with the reason the bead records.
    Refused(String),
    /// The provider failed; try again later.
    Transient(String),
}

/// Most review text a feedback bead carries.
const MAX_FEEDBACK_TEXT: usize = 8_000;

fn github_url(settings: &Platforms, path: &str) -> String {
    format!("{}{path}", settings.github_api_url.trim_end_matches('/'))
}

fn gitlab_url(settings: &Platforms, target: &Target<'_>, path: &str) -> String {
    format!(
        "{}/api/v4/projects/{}{path}",
        settings.gitlab_url.trim_end_matches('/'),
        http::encode(target.repo)
    )
}

async fn call(
    target: &Target<'_>,
    method: Method,
    url: &str,
    body: Body,
    what: &'static str,
) -> Result<Answer, OpenError> {
    let auth = format!("Bearer {}", target.token);
    let headers: &[(&str, &str)] = match target.platform {
        Platform::Github => &[
            ("authorization", &auth),
            ("x-github-api-version", "2022-11-28"),
        ],
        Platform::Gitlab => &[("authorization", &auth)],
    };
    http::send(method, url, headers, body, what)
        .await
        .map_err(|_| OpenError::Transient(format!("{what}: the provider could not be reached")))
}

/// The provider's own words for a refusal: GitHub's `message` and its errors' messages,
/// GitLab's `message` (a string or a list) or `error`.
fn provider_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return String::new();
    };
    let mut parts: Vec<String> = Vec::new();
    match v.get("message") {
        Some(Value::String(m)) => parts.push(m.clone()),
        Some(Value::Array(list)) => {
            parts.extend(list.iter().filter_map(Value::as_str).map(str::to_owned))
        }
        _ => {}
    }
    if let Some(Value::String(e)) = v.get("error") {
        parts.push(e.clone());
    }
    if let Some(Value::Array(errors)) = v.get("errors") {
        for e in errors {
            if let Some(m) = e.get("message").and_then(Value::as_str) {
                parts.push(m.to_owned());
            } else if let (Some(field), Some(code)) = (
                e.get("field").and_then(Value::as_str),
                e.get("code").and_then(Value::as_str),
            ) {
                parts.push(format!("{field} {code}"));
            }
        }
    }
    parts.join("; ").chars().take(300).collect()
}

fn failure(answer: &Answer, what: &str) -> OpenError {
    let said = provider_message(&answer.body);
    let line = if said.is_empty() {
        format!("{what}: HTTP {}", answer.status)
    } else {
        format!("{what}: HTTP {} ({said})", answer.status)
    };
    if answer.status == 0 || answer.status == 429 || answer.status >= 500 {
        OpenError::Transient(line)
    } else {
        OpenError::Refused(line)
    }
}

fn parsed<T: serde::de::DeserializeOwned>(
    answer: &Answer,
    ok: &[u16],
    what: &str,
) -> Result<T, OpenError> {
    if !ok.contains(&answer.status) {
        return Err(failure(answer, what));
    }
    serde_json::from_str(&answer.body)
        .map_err(|_| OpenError::Transient(format!("{what}: an answer that does not parse")))
}

#[derive(Deserialize)]
struct GithubUser {
    login: String,
}

#[derive(Deserialize)]
struct GithubRef {
    sha: Option<String>,
}

#[derive(Deserialize)]
struct GithubPull {
    number: u64,
    html_url: String,
    state: String,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merged_at: Option<String>,
    user: Option<GithubUser>,
    head: GithubRef,
}

impl GithubPull {
    fn opened(&self) -> Opened {
        Opened {
            number: self.number,
            url: self.html_url.clone(),
            author: self
                .user
                .as_ref()
                .map(|u| u.login.clone())
                .unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct GitlabUser {
    username: String,
}

#[derive(Deserialize)]
struct GitlabPipeline {
    status: String,
}

#[derive(Deserialize)]
struct GitlabMr {
    iid: u64,
    web_url: String,
    state: String,
    author: Option<GitlabUser>,
    sha: Option<String>,
    head_pipeline: Option<GitlabPipeline>,
}

impl GitlabMr {
    fn opened(&self) -> Opened {
        Opened {
            number: self.iid,
            url: self.web_url.clone(),
            author: self
                .author
                .as_ref()
                .map(|u| u.username.clone())
                .unwrap_or_default(),
        }
    }
}

/// The open pull request from `branch` into `base`, if there is one.
///
/// # Errors
/// As [`OpenError`].
pub async fn find_open(
    settings: &Platforms,
    target: &Target<'_>,
    branch: &str,
    base: &str,
) -> Result<Option<Opened>, OpenError> {
    match target.platform {
        Platform::Github => {
            let owner = target.repo.split('/').next().unwrap_or_default();
            let url = github_url(
                settings,
                &format!(
                    "/repos/{}/pulls?state=open&head={}&base={}&per_page=10",
                    target.repo,
                    http::encode(&format!("{owner}:{branch}")),
                    http::encode(base)
                ),
            );
            let pulls: Vec<GithubPull> = get(target, &url, "listing pull requests").await?;
            Ok(pulls.first().map(GithubPull::opened))
        }
        Platform::Gitlab => {
            let url = gitlab_url(
                settings,
                target,
                &format!(
                    "/merge_requests?state=opened&source_branch={}&target_branch={}",
                    http::encode(branch),
                    http::encode(base)
                ),
            );
            let mrs: Vec<GitlabMr> = get(target, &url, "listing merge requests").await?;
            Ok(mrs.first().map(GitlabMr::opened))
        }
    }
}

/// Opens a pull request from `branch` into `base`; one that already exists for the branch is
/// adopted, not duplicated.
///
/// # Errors
/// As [`OpenError`]: `Refused` with a readable reason for a branch the repository does not
/// have, a branch with nothing to merge, or a token the provider refuses.
pub async fn open(
    settings: &Platforms,
    target: &Target<'_>,
    branch: &str,
    base: &str,
    title: &str,
    body: &str,
) -> Result<Opened, OpenError> {
    if let Some(existing) = find_open(settings, target, branch, base).await? {
        return Ok(existing);
    }
    let (url, payload, what) = match target.platform {
        Platform::Github => (
            github_url(settings, &format!("/repos/{}/pulls", target.repo)),
            json!({ "title": title, "head": branch, "base": base, "body": body }),
            "opening the pull request",
        ),
        Platform::Gitlab => (
            gitlab_url(settings, target, "/merge_requests"),
            json!({ "source_branch": branch, "target_branch": base, "title": title, "description": body }),
            "opening the merge request",
        ),
    };
    let answer = call(
        target,
        Method::Post,
        &url,
        Body::Json(payload.to_string()),
        what,
    )
    .await?;
    if answer.status == 201 {
        return match target.platform {
            Platform::Github => parsed::<GithubPull>(&answer, &[201], what).map(|p| p.opened()),
            Platform::Gitlab => parsed::<GitlabMr>(&answer, &[201], what).map(|m| m.opened()),
        };
    }
    let said = provider_message(&answer.body);
    let exists = said.contains("already exists");
    if exists {
        // Opened meanwhile (by someone else, or a retry): adopt it.
        if let Some(existing) = find_open(settings, target, branch, base).await? {
            return Ok(existing);
        }
    }
    let lower = said.to_lowercase();
    if matches!(answer.status, 400 | 404 | 422)
        && (lower.contains("head invalid")
            || lower.contains("source branch") && lower.contains("does not exist"))
    {
        return Err(OpenError::Refused(format!(
            "the branch {branch} is not on the repository {}",
            target.repo
        )));
    }
    if lower.contains("no commits between") {
        return Err(OpenError::Refused(format!(
            "the branch {branch} has no commits that {base} does not have"
        )));
    }
    Err(failure(&answer, what))
}

#[derive(Deserialize)]
struct GithubReview {
    id: u64,
    user: Option<GithubUser>,
    state: String,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Deserialize)]
struct GithubComment {
    pull_request_review_id: Option<u64>,
    path: Option<String>,
    line: Option<u64>,
    body: String,
}

#[derive(Deserialize)]
struct GithubCheckRun {
    name: String,
    status: String,
    conclusion: Option<String>,
}

#[derive(Deserialize)]
struct GithubCheckRuns {
    check_runs: Vec<GithubCheckRun>,
}

#[derive(Deserialize)]
struct GitlabReviewer {
    user: GitlabUser,
    state: String,
}

#[derive(Deserialize)]
struct GitlabNote {
    id: u64,
    body: String,
    author: GitlabUser,
    #[serde(default)]
    system: bool,
}

fn clip(text: String) -> String {
    if text.chars().count() <= MAX_FEEDBACK_TEXT {
        text
    } else {
        text.chars().take(MAX_FEEDBACK_TEXT).collect::<String>() + "…"
    }
}

/// Reads pull request `number` as it is now: its state, and while open its head commit, its
/// checks, its reviewers' verdict and the newest request for changes.
///
/// # Errors
/// As [`OpenError`] (`Transient` for anything a later read may not meet).
pub async fn read(
    settings: &Platforms,
    target: &Target<'_>,
    number: u64,
) -> Result<Observed, OpenError> {
    match target.platform {
        Platform::Github => read_github(settings, target, number).await,
        Platform::Gitlab => read_gitlab(settings, target, number).await,
    }
}

async fn get<T: serde::de::DeserializeOwned>(
    target: &Target<'_>,
    url: &str,
    what: &'static str,
) -> Result<T, OpenError> {
    let answer = call(target, Method::Get, url, Body::None, what).await?;
    parsed(&answer, &[200], what)
}

async fn read_github(
    settings: &Platforms,
    target: &Target<'_>,
    number: u64,
) -> Result<Observed, OpenError> {
    let repo = target.repo;
    let pull: GithubPull = get(
        target,
        &github_url(settings, &format!("/repos/{repo}/pulls/{number}")),
        "reading the pull request",
    )
    .await?;
    let remote = if pull.merged == Some(true) || pull.merged_at.is_some() {
        Remote::Merged
    } else if pull.state == "closed" {
        Remote::Closed
    } else {
        Remote::Open
    };
    let mut observed = Observed::new(remote, pull.head.sha.clone());
    if remote != Remote::Open {
        return Ok(observed);
    }
    let reviews: Vec<GithubReview> = get(
        target,
        &github_url(
            settings,
            &format!("/repos/{repo}/pulls/{number}/reviews?per_page=100"),
        ),
        "reading the reviews",
    )
    .await?;
    let verdicts: Vec<Verdict<'_>> = reviews
        .iter()
        .map(|r| Verdict {
            reviewer: r.user.as_ref().map_or("", |u| u.login.as_str()),
            approves: match r.state.as_str() {
                "APPROVED" => Some(true),
                "CHANGES_REQUESTED" => Some(false),
                _ => None,
            },
            dismissed: r.state == "DISMISSED",
        })
        .collect();
    observed.review_decision = refinery::review_decision(&verdicts);
    // The newest request for changes of a reviewer who still stands by it (not since approved,
    // nor dismissed).
    let standing = |r: &&GithubReview| {
        let login = r.user.as_ref().map(|u| u.login.as_str());
        reviews
            .iter()
            .filter(|x| x.user.as_ref().map(|u| u.login.as_str()) == login)
            .filter(|x| {
                matches!(
                    x.state.as_str(),
                    "APPROVED" | "CHANGES_REQUESTED" | "DISMISSED"
                )
            })
            .max_by_key(|x| x.id)
            .is_some_and(|x| x.id == r.id)
    };
    if let Some(latest) = reviews
        .iter()
        .filter(|r| r.state == "CHANGES_REQUESTED")
        .filter(standing)
        .max_by_key(|r| r.id)
    {
        let comments: Vec<GithubComment> = get(
            target,
            &github_url(
                settings,
                &format!("/repos/{repo}/pulls/{number}/comments?per_page=100"),
            ),
            "reading the review comments",
        )
        .await?;
        let who = latest
            .user
            .as_ref()
            .map_or("a reviewer", |u| u.login.as_str());
        let mut text = format!("{who}: {}", latest.body.as_deref().unwrap_or("").trim());
        for c in comments
            .iter()
            .filter(|c| c.pull_request_review_id == Some(latest.id))
        {
            let place = match (&c.path, c.line) {
                (Some(path), Some(line)) => format!("{path}:{line}"),
                (Some(path), None) => path.clone(),
                _ => "the change".to_owned(),
            };
            text.push_str(&format!("\n- {place}: {}", c.body.trim()));
        }
        observed.change_request = Some(ChangeRequest {
            key: latest.id.to_string(),
            text: clip(text),
        });
    }
    if let Some(sha) = &pull.head.sha {
        let runs: GithubCheckRuns = get(
            target,
            &github_url(
                settings,
                &format!("/repos/{repo}/commits/{sha}/check-runs?per_page=100"),
            ),
            "reading the checks",
        )
        .await?;
        let runs: Vec<CheckRun<'_>> = runs
            .check_runs
            .iter()
            .map(|r| CheckRun {
                name: &r.name,
                completed: r.status == "completed",
                conclusion: r.conclusion.as_deref(),
            })
            .collect();
        (observed.checks, observed.failing_check) = refinery::checks(&runs);
    }
    Ok(observed)
}

async fn read_gitlab(
    settings: &Platforms,
    target: &Target<'_>,
    iid: u64,
) -> Result<Observed, OpenError> {
    let mr: GitlabMr = get(
        target,
        &gitlab_url(settings, target, &format!("/merge_requests/{iid}")),
        "reading the merge request",
    )
    .await?;
    let remote = match mr.state.as_str() {
        "merged" => Remote::Merged,
        "closed" => Remote::Closed,
        _ => Remote::Open,
    };
    let mut observed = Observed::new(remote, mr.sha.clone());
    if remote != Remote::Open {
        return Ok(observed);
    }
    if let Some(pipeline) = &mr.head_pipeline {
        let run = CheckRun {
            name: "pipeline",
            completed: matches!(
                pipeline.status.as_str(),
                "success" | "failed" | "canceled" | "skipped"
            ),
            conclusion: match pipeline.status.as_str() {
                "success" => Some("success"),
                "failed" => Some("failure"),
                "canceled" => Some("cancelled"),
                "skipped" => Some("skipped"),
                _ => None,
            },
        };
        (observed.checks, observed.failing_check) = refinery::checks(&[run]);
    }
    let reviewers: Vec<GitlabReviewer> = get(
        target,
        &gitlab_url(
            settings,
            target,
            &format!("/merge_requests/{iid}/reviewers"),
        ),
        "reading the reviewers",
    )
    .await?;
    let verdicts: Vec<Verdict<'_>> = reviewers
        .iter()
        .map(|r| Verdict {
            reviewer: &r.user.username,
            approves: match r.state.as_str() {
                "approved" => Some(true),
                "requested_changes" => Some(false),
                _ => None,
            },
            dismissed: false,
        })
        .collect();
    observed.review_decision = refinery::review_decision(&verdicts);
    let asking: Vec<&str> = reviewers
        .iter()
        .filter(|r| r.state == "requested_changes")
        .map(|r| r.user.username.as_str())
        .collect();
    if !asking.is_empty() {
        let notes: Vec<GitlabNote> = get(
            target,
            &gitlab_url(
                settings,
                target,
                &format!("/merge_requests/{iid}/notes?sort=asc&order_by=created_at&per_page=100"),
            ),
            "reading the notes",
        )
        .await?;
        let mut text = format!("{} requested changes.", asking.join(", "));
        let theirs: Vec<&GitlabNote> = notes
            .iter()
            .filter(|n| !n.system && asking.contains(&n.author.username.as_str()))
            .collect();
        for note in &theirs {
            text.push_str(&format!(
                "\n- {}: {}",
                note.author.username,
                note.body.trim()
            ));
        }
        // GitLab keeps no review ids: a request is new with each new note of a reviewer who
        // asks for changes (a push alone, as a feedback round's, is not a new request).
        let newest = theirs.iter().map(|n| n.id).max().unwrap_or(0);
        observed.change_request = Some(ChangeRequest {
            key: format!("note:{newest}"),
            text: clip(text),
        });
    }
    Ok(observed)
}

/// A row of the index.
#[derive(Deserialize)]
pub struct Indexed {
    pub town_id: String,
    pub bead_id: String,
    pub installation_id: Option<String>,
}

/// One pull request a town follows, as the index records it.
pub struct Entry<'a> {
    pub platform: Platform,
    pub repo: &'a str,
    pub number: u64,
    pub town: &'a str,
    /// The merge request bead.
    pub bead: &'a str,
    /// The GitHub installation whose token opened it.
    pub installation_id: Option<&'a str>,
}

/// Records that a town follows a pull request.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn index(env: &Env, entry: &Entry<'_>, now_ms: u64) -> Result<(), ApiError> {
    run(
        env,
        "INSERT OR REPLACE INTO pull_request_index (platform, repo, number, town_id, bead_id, installation_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &[
            s(entry.platform.as_str()),
            s(&entry.repo.to_lowercase()),
            n(i64::try_from(entry.number).unwrap_or(i64::MAX)),
            s(entry.town),
            s(entry.bead),
            opt(entry.installation_id),
            n(i64::try_from(now_ms).unwrap_or(i64::MAX)),
        ],
    )
    .await
    .map(|_| ())
}

/// The towns' beads that follow pull request `number` of `repo`.
///
/// # Errors
/// Internal, when D1 fails.
pub async fn indexed(
    env: &Env,
    platform: Platform,
    repo: &str,
    number: u64,
) -> Result<Vec<Indexed>, ApiError> {
    all(
        env,
        "SELECT town_id, bead_id, installation_id FROM pull_request_index WHERE platform = ?1 AND repo = ?2 AND number = ?3 LIMIT 20",
        &[
            s(platform.as_str()),
            s(&repo.to_lowercase()),
            n(i64::try_from(number).unwrap_or(i64::MAX)),
        ],
    )
    .await
}

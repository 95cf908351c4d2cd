//! `POST /merge` ([`MergeBody`] → [`MergeReply`]): the refinery's direct merge of a rig's
//! branch into its base, done by this server's own git in a scratch clone, pushed through the
//! town's git credential helper.
//!
//! # What a merge does
//!
//! In a fresh directory `<workdir>/<town>/.merges/<random>/` (mode 0700, the server's; a name
//! no rig id can have, so it never meets a rig's directory; removed afterwards whatever
//! happened, a deadline or a panic included), git runs as the server's own user (never the
//! agent user), without a shell, never prompting:
//!
//! 1. `git clone --quiet --no-tags --single-branch --branch <base> -- <git_url> repo`;
//! 2. `git fetch --quiet --no-tags origin refs/heads/<branch>`;
//! 3. when the fetched commit is already in `base` (`git merge-base --is-ancestor`):
//!    `nothing_to_merge`, with `base`'s head, and nothing is pushed;
//! 4. `git merge --no-ff --no-edit --no-log -m <message> FETCH_HEAD`; on a conflict the
//!    unmerged paths (`git diff --name-only --diff-filter=U`, sorted), `git merge --abort`,
//!    `conflict`, and nothing is pushed;
//! 5. `git push --quiet --no-verify origin HEAD:refs/heads/<base>`: `merged`, with the merge
//!    commit (`base`'s new head). A push refused because `base` moved since the clone (`fetch
//!    first`, `non-fast-forward`, a ref the remote could not lock) starts over from step 1,
//!    once; a second such refusal is a failed push.
//!
//! git's environment starts empty: the server's `PATH`, `HOME` = the scratch directory,
//! `GIT_CONFIG_GLOBAL` = the town's gitconfig (when it has one: its credential helper serves
//! HTTPS), `GASTOWN_TOWN_ID`, `GASTOWN_RIG_ID` (and `GASTOWN_WORKDIR`, `GASTOWN_WORKER_URL`
//! when known) for the helper, which without `GASTOWN_AGENT_ID` asks the worker for the rig's
//! token as the town; `GIT_TERMINAL_PROMPT=0`, `GIT_ALLOW_PROTOCOL`, `LC_ALL=C`, and author
//! and committer = `author_name <author_email>`. Every run also has `-c commit.gpgsign=false
//! -c core.hooksPath=/dev/null -c rerere.enabled=false`. Each git leads a process group of its
//! own, killed whole at the deadline.
//!
//! # Answers
//!
//! The request is checked in this order, nothing run before the last check passes: the body
//! (400), its `townId` (403), its fields (422), the town (409).
//!
//! * 200 [`MergeReply`]: `{"outcome":"merged","sha":<new head of base>,"files":[]}`,
//!   `{"outcome":"nothing_to_merge","sha":<head of base>,"files":[]}` or
//!   `{"outcome":"conflict","sha":null,"files":[<unmerged paths>]}`;
//! * 400 a body that is no [`MergeBody`], 403 a `townId` of another town (as every route);
//! * 422 a field refused before git runs (see below), or `the base branch <base> is not on
//!   the remote` / `the branch <branch> is not on the remote`;
//! * 409 `town not started`: the server holds no container token for the town (as
//!   `/agents/start`: the worker starts the container, then tries again);
//! * 502 `git <step> failed: <git's line of error>` for any other failure of git: its first
//!   `fatal:` line, else its last ` ! [...]` line (a ref the push had refused), else its last
//!   line but `hint:`s; anything like `user:pass@` in a URL cut out, at most 300 characters;
//! * 504 past the merge's deadline, [`MERGE_DEADLINE`] from the request's arrival, the wait
//!   for another merge of the rig included: git is killed, nothing more is pushed;
//! * 500 when the scratch directory cannot be made or git cannot be started.
//!
//! # Checked before git runs (422)
//!
//! * `townId` and `rig_id`: the credential helper's [`check_id`] (1 to 128 of
//!   `A-Z a-z 0-9 _ -`);
//! * `branch` and `base`: plain branch names: 1 to 255 bytes, no leading `-` or `/`, no
//!   whitespace or control character, no `..`, `//`, `@{`, none of `~ ^ : ? * [ \`, no part
//!   starting with `.`, not ending in `/`, `.` or `.lock`, not `@`;
//! * `git_url`: at most 2048 bytes, no leading `-`, no whitespace or control character;
//!   `https://` with a host and no credentials (no `@` before the path). `http://` (no
//!   credentials either), `file:///absolute` and absolute paths only when the server's own
//!   environment has `GASTOWN_ALLOW_LOCAL_GIT=1` (local development, as the agents are told by
//!   the worker; never in production); ssh and every other scheme never. git is held to the
//!   same protocols through `GIT_ALLOW_PROTOCOL`;
//! * `message`: not blank, at most 4000 characters, no NUL;
//! * `author_name`, `author_email`: not blank, at most 256 characters, no control character
//!   (so no newline), no `<` or `>`.
//!
//! # One merge of a rig at a time
//!
//! A merge holds its (town, rig) for its whole run; a second request for the same rig
//! *waits* for it (then clones the `base` the first one pushed), within its own deadline (504
//! when it runs out while waiting). Merges of other rigs run side by side. Requests are
//! answered on their connection's thread, so waiting costs one of
//! [`crate::http::MAX_CONNECTIONS`] threads and nothing else.
//!
//! # Secrets
//!
//! The server never sees a git token here: git asks the town's helper. Nothing logged or
//! answered quotes more of git's output than one line of error, with anything like
//! `user:pass@` in a URL removed; the URL itself carries no credentials (refused above).
//!
//! # Tests only
//!
//! The debug binary (`gastown-control-debug`) takes the deadline from
//! `GASTOWN_MERGE_DEADLINE_MS` when its environment sets it; the production binary ignores it.

use crate::child::{self, Ran, RunError};
use crate::git_credential::{check_id, RIG_ID_ENV};
use crate::http::{error, Reply};
use crate::routes::{parse, same_town};
use crate::server::Build;
use crate::state::Shared;
use crate::workdir::{self, WORKDIR_ENV};
use gastown_core::control::{
    MergeBody, MergeOutcome, MergeReply, ALLOW_LOCAL_GIT_ENV, TOWN_ID_ENV, WORKER_URL_ENV,
};
use serde_json::json;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a whole merge may take, from the request's arrival (waiting for another merge of
/// the rig included).
pub const MERGE_DEADLINE: Duration = Duration::from_secs(120);
/// The debug binary's deadline, in milliseconds, when set (tests).
#[cfg(feature = "debug-routes")]
pub const MERGE_DEADLINE_MS_ENV: &str = "GASTOWN_MERGE_DEADLINE_MS";
/// The directory, in a town's, of the merges' scratch directories (a name no rig id can have).
pub const MERGES_DIR: &str = ".merges";
/// Longest branch name, in bytes.
pub const MAX_BRANCH_BYTES: usize = 255;
/// Longest merge commit message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// Longest author name or email, in characters.
pub const MAX_PERSON_CHARS: usize = 256;
/// Longest git URL, in bytes.
pub const MAX_GIT_URL_BYTES: usize = 2048;

/// The clone's directory, in the scratch directory.
const REPO_DIR: &str = "repo";
/// Longest line of git's quoted in an answer or the log.
const MAX_QUOTED_CHARS: usize = 300;
/// Configuration every git of a merge runs with.
const GIT_CONFIG: [&str; 6] = [
    "-c",
    "commit.gpgsign=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "rerere.enabled=false",
];

/// Why a merge gave no [`MergeReply`].
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The caller's to fix (422).
    Refused(String),
    /// A git step failed (502): the subcommand and git's last line of error, cleaned.
    Git { step: String, line: String },
    /// Past the deadline (504).
    Deadline,
    /// This server's own trouble (500): logged, not answered.
    Internal(String),
}

/// `POST /merge`.
pub(crate) fn merge(shared: &Shared, town: &str, body: &[u8]) -> Result<Reply, Reply> {
    let arrived = Instant::now();
    let req: MergeBody = parse(body)?;
    same_town(&req.town_id, town)?;
    let allow_local = allow_local_git();
    check(&req, allow_local).map_err(|e| error(422, &e))?;
    let town_dir = shared.town_dir(town)?;
    let started = shared
        .state()
        .towns
        .get(town)
        .is_some_and(|t| t.token.is_some());
    if !started || !fs::symlink_metadata(&town_dir).is_ok_and(|m| m.is_dir()) {
        return Err(error(409, "town not started"));
    }
    let deadline = arrived + deadline_of(shared.config.build);
    let what = format!(
        "merge of {} into {} (town {town}, rig {})",
        req.branch, req.base, req.rig_id
    );

    let outcome = (|| {
        let _rig = RigLock::acquire(town, &req.rig_id, deadline).ok_or(Failure::Deadline)?;
        let scratch = Scratch::create(&town_dir)
            .map_err(|e| Failure::Internal(format!("cannot make a scratch directory: {e}")))?;
        let git = Git {
            env: git_env(shared, &req, &town_dir, scratch.path(), allow_local),
            scratch: scratch.path(),
            deadline,
        };
        run(&git, &req)
        // The scratch directory goes, then the rig is free.
    })();

    match outcome {
        Ok(reply) => {
            let how = match reply.outcome {
                MergeOutcome::Merged => "merged",
                MergeOutcome::NothingToMerge => "nothing to merge",
                MergeOutcome::Conflict => "conflict",
            };
            let detail = match &reply.sha {
                Some(sha) => sha.clone(),
                None => format!("in {} files", reply.files.len()),
            };
            eprintln!("gastown-control: {what}: {how} {detail}");
            Ok((200, json!(reply)))
        }
        Err(failure) => {
            let reply = match &failure {
                Failure::Refused(e) => error(422, e),
                Failure::Git { step, line } => error(502, &format!("git {step} failed: {line}")),
                Failure::Deadline => error(
                    504,
                    &format!(
                        "the merge took longer than {} s",
                        deadline_of(shared.config.build).as_secs_f32()
                    ),
                ),
                Failure::Internal(_) => error(500, "cannot run the merge"),
            };
            // The answer's error, or the internal reason (a path or a kind at most).
            let why = match &failure {
                Failure::Internal(e) => e.clone(),
                _ => reply.1["error"].as_str().unwrap_or_default().to_owned(),
            };
            eprintln!("gastown-control: {what}: {why}");
            Err(reply)
        }
    }
}

/// Whether this server may merge repositories that are not `https://` (local development).
pub(crate) fn allow_local_git() -> bool {
    std::env::var(ALLOW_LOCAL_GIT_ENV).is_ok_and(|v| v == "1")
}

/// [`MERGE_DEADLINE`], or in the debug binary `GASTOWN_MERGE_DEADLINE_MS` when set.
fn deadline_of(build: Build) -> Duration {
    #[cfg(feature = "debug-routes")]
    if build == Build::Debug {
        if let Some(ms) = std::env::var(MERGE_DEADLINE_MS_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
        {
            return Duration::from_millis(ms);
        }
    }
    #[cfg(not(feature = "debug-routes"))]
    let _ = build;
    MERGE_DEADLINE
}

/// Every field of `req`, checked before git runs; why not, for the caller's 422.
fn check(req: &MergeBody, allow_local: bool) -> Result<(), String> {
    check_id("town", &req.town_id)?;
    check_id("rig", &req.rig_id)?;
    check_branch("branch", &req.branch)?;
    check_branch("base", &req.base)?;
    check_git_url(&req.git_url, allow_local)?;
    if req.message.trim().is_empty() {
        return Err("message must not be empty".to_owned());
    }
    if req.message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(format!(
            "message must have at most {MAX_MESSAGE_CHARS} characters"
        ));
    }
    if req.message.contains('\0') {
        return Err("message must not hold a NUL character".to_owned());
    }
    check_person("author_name", &req.author_name)?;
    check_person("author_email", &req.author_email)
}

/// A plain branch name (see the module docs).
pub(crate) fn check_branch(field: &str, name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > MAX_BRANCH_BYTES
        || name.starts_with(['-', '/'])
        || name.ends_with(['/', '.'])
        || name.ends_with(".lock")
        || name == "@"
        || ["..", "//", "@{"].iter().any(|s| name.contains(s))
        || name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c) || c == '\u{7f}'
        })
        || name.split('/').any(|part| part.starts_with('.'));
    if bad {
        Err(format!(
            "{field} {name:?} is not a plain branch name (1 to {MAX_BRANCH_BYTES} bytes, no \
             leading '-', no whitespace, no '..')"
        ))
    } else {
        Ok(())
    }
}

/// A repository this server may merge in (see the module docs); the message never quotes the
/// URL, which may hold credentials.
pub(crate) fn check_git_url(url: &str, allow_local: bool) -> Result<(), String> {
    if url.is_empty() {
        return Err("git_url must not be empty".to_owned());
    }
    if url.len() > MAX_GIT_URL_BYTES
        || url.starts_with('-')
        || url.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err("git_url is not one git can be given".to_owned());
    }
    let no_credentials = |after_scheme: &str| {
        let authority = after_scheme.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            Err(
                "git_url must not carry credentials: git gets its token from the town's \
                 credential helper"
                    .to_owned(),
            )
        } else if authority.is_empty() {
            Err("git_url names no host".to_owned())
        } else {
            Ok(())
        }
    };
    let what = if let Some(rest) = url.strip_prefix("https://") {
        return no_credentials(rest);
    } else if let Some(rest) = url.strip_prefix("http://") {
        no_credentials(rest)?;
        "an http:// git_url"
    } else if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err("a file:// git_url must name an absolute path".to_owned());
        }
        "a file:// git_url"
    } else if url.contains("://") {
        return Err("git_url's scheme is not supported: use https://".to_owned());
    } else if url
        .split('/')
        .next()
        .is_some_and(|first| first.contains(':'))
    {
        return Err("ssh remotes (host:path) are not supported: use https://".to_owned());
    } else if url.starts_with('/') {
        "a local git_url"
    } else {
        return Err("a local git_url must be an absolute path".to_owned());
    };
    if allow_local {
        Ok(())
    } else {
        Err(format!(
            "{what} is refused: only https:// repositories are merged ({ALLOW_LOCAL_GIT_ENV}=1 \
             on the control server allows local ones, for local development)"
        ))
    }
}

/// An author's name or email git can carry as it is.
fn check_person(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.chars().count() > MAX_PERSON_CHARS {
        return Err(format!(
            "{field} must have at most {MAX_PERSON_CHARS} characters"
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>')
    {
        return Err(format!(
            "{field} must not hold a newline, a control character, '<' or '>'"
        ));
    }
    Ok(())
}

/// git's whole environment for one merge (see the module docs).
fn git_env(
    shared: &Shared,
    req: &MergeBody,
    town_dir: &Path,
    scratch: &Path,
    allow_local: bool,
) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = Vec::new();
    let mut set = |name: &str, value: OsString| env.push((name.to_owned(), value));
    if let Some(path) = std::env::var_os("PATH") {
        set("PATH", path);
    }
    set("HOME", scratch.as_os_str().to_owned());
    let gitconfig = town_dir.join(workdir::GITCONFIG_FILE);
    if fs::symlink_metadata(&gitconfig).is_ok_and(|m| m.is_file()) {
        set(
            crate::agents::GIT_CONFIG_GLOBAL_ENV,
            gitconfig.into_os_string(),
        );
    }
    set(TOWN_ID_ENV, req.town_id.clone().into());
    set(RIG_ID_ENV, req.rig_id.clone().into());
    set(WORKDIR_ENV, shared.config.workdir.as_os_str().to_owned());
    if let Some(worker) = &shared.config.worker_url {
        set(WORKER_URL_ENV, worker.into());
    }
    set("GIT_TERMINAL_PROMPT", "0".into());
    let protocols = if allow_local {
        "https:http:file"
    } else {
        "https"
    };
    set("GIT_ALLOW_PROTOCOL", protocols.into());
    set("LC_ALL", "C".into());
    for name in ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"] {
        set(name, req.author_name.clone().into());
    }
    for name in ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"] {
        set(name, req.author_email.clone().into());
    }
    env
}

/// How one merge runs git.
struct Git<'a> {
    env: Vec<(String, OsString)>,
    /// The scratch directory: the clone lives here.
    scratch: &'a Path,
    deadline: Instant,
}

impl Ran {
    /// `git <step> failed`, with git's line of error.
    fn failed(&self, step: &str) -> Failure {
        Failure::Git {
            step: step.to_owned(),
            line: last_line(&self.stderr),
        }
    }
}

impl Git<'_> {
    fn repo(&self) -> PathBuf {
        self.scratch.join(REPO_DIR)
    }

    /// Runs `git <args>` in `dir` until it ends or the deadline passes (then its whole
    /// process group is killed).
    fn run(&self, dir: &Path, args: &[&str]) -> Result<Ran, Failure> {
        let mut cmd = Command::new("git");
        cmd.args(GIT_CONFIG)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        child::run(&mut cmd, self.deadline).map_err(|e| match e {
            RunError::Late | RunError::Killed => Failure::Deadline,
            RunError::Spawn(e) | RunError::Wait(e) => {
                Failure::Internal(format!("cannot run git: {e}"))
            }
        })
    }

    /// Runs `git <args>` in the clone; its stdout, or the step's failure.
    fn ok(&self, args: &[&str]) -> Result<Vec<u8>, Failure> {
        let ran = self.run(&self.repo(), args)?;
        if ran.status.success() {
            Ok(ran.stdout)
        } else {
            Err(ran.failed(args[0]))
        }
    }

    /// The commit `rev` names in the clone.
    fn commit(&self, rev: &str) -> Result<String, Failure> {
        let spec = format!("{rev}^{{commit}}");
        let out = self.ok(&["rev-parse", "--verify", "--quiet", &spec])?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }
}

/// How one pass from the clone ended.
enum Pass {
    Done(MergeReply),
    /// The push was refused because `base` moved since the clone: git's line.
    BaseMoved(String),
}

/// The merge: one pass, and another from the clone when `base` moved under the first.
fn run(git: &Git<'_>, req: &MergeBody) -> Result<MergeReply, Failure> {
    match pass(git, req)? {
        Pass::Done(reply) => Ok(reply),
        Pass::BaseMoved(_) => match pass(git, req)? {
            Pass::Done(reply) => Ok(reply),
            Pass::BaseMoved(line) => Err(Failure::Git {
                step: "push".to_owned(),
                line,
            }),
        },
    }
}

/// Clone, fetch, merge, push (see the module docs).
fn pass(git: &Git<'_>, req: &MergeBody) -> Result<Pass, Failure> {
    let repo = git.repo();
    if fs::symlink_metadata(&repo).is_ok() {
        fs::remove_dir_all(&repo)
            .map_err(|e| Failure::Internal(format!("cannot clear the clone: {e}")))?;
    }
    let clone = git.run(
        git.scratch,
        &[
            "clone",
            "--quiet",
            "--no-tags",
            "--single-branch",
            "--branch",
            &req.base,
            "--",
            &req.git_url,
            REPO_DIR,
        ],
    )?;
    if !clone.status.success() {
        if clone.stderr.contains("Remote branch") && clone.stderr.contains("not found") {
            return Err(Failure::Refused(format!(
                "the base branch {} is not on the remote",
                req.base
            )));
        }
        return Err(clone.failed("clone"));
    }
    let wanted = format!("refs/heads/{}", req.branch);
    let fetch = git.run(&repo, &["fetch", "--quiet", "--no-tags", "origin", &wanted])?;
    if !fetch.status.success() {
        if fetch.stderr.contains("couldn't find remote ref") {
            return Err(Failure::Refused(format!(
                "the branch {} is not on the remote",
                req.branch
            )));
        }
        return Err(fetch.failed("fetch"));
    }
    let base_head = git.commit("HEAD")?;
    let ancestor = git.run(
        &repo,
        &["merge-base", "--is-ancestor", "FETCH_HEAD", "HEAD"],
    )?;
    match ancestor.status.code() {
        Some(0) => {
            return Ok(Pass::Done(MergeReply {
                outcome: MergeOutcome::NothingToMerge,
                sha: Some(base_head),
                files: Vec::new(),
            }))
        }
        Some(1) => {}
        _ => return Err(ancestor.failed("merge-base")),
    }
    let merged = git.run(
        &repo,
        &[
            "merge",
            "--no-ff",
            "--no-edit",
            "--no-log",
            "-m",
            &req.message,
            "FETCH_HEAD",
        ],
    )?;
    if !merged.status.success() {
        let listed = git.ok(&["diff", "--name-only", "--diff-filter=U", "-z"])?;
        let files: BTreeSet<String> = listed
            .split(|b| *b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        if files.is_empty() {
            return Err(merged.failed("merge"));
        }
        // The scratch clone goes anyway; this leaves it as it was, as the contract says.
        if let Err(Failure::Git { line, .. }) = git.ok(&["merge", "--abort"]) {
            eprintln!("gastown-control: git merge --abort failed (ignored): {line}");
        }
        return Ok(Pass::Done(MergeReply {
            outcome: MergeOutcome::Conflict,
            sha: None,
            files: files.into_iter().collect(),
        }));
    }
    let new_head = git.commit("HEAD")?;
    let target = format!("HEAD:refs/heads/{}", req.base);
    let push = git.run(
        &repo,
        &["push", "--quiet", "--no-verify", "origin", &target],
    )?;
    if !push.status.success() {
        if base_moved(&push.stderr) {
            return Ok(Pass::BaseMoved(last_line(&push.stderr)));
        }
        return Err(push.failed("push"));
    }
    Ok(Pass::Done(MergeReply {
        outcome: MergeOutcome::Merged,
        sha: Some(new_head),
        files: Vec::new(),
    }))
}

/// Whether git's refusal of a push says the remote's branch moved since it was read.
fn base_moved(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        (l.contains("[rejected]") && (l.contains("fetch first") || l.contains("non-fast-forward")))
            || (l.contains("[remote rejected]")
                && (l.contains("cannot lock ref") || l.contains("failed to update ref")))
    })
}

/// git's line of error worth quoting, cleaned by [`clean_line`]: its first `fatal:` line (git
/// says the cause first, then generic lines such as `Could not read from remote repository.`),
/// else its last ` ! [...]` line (a refused ref of a push), else its last line that is not a
/// `hint:`.
pub(crate) fn last_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .collect();
    lines
        .iter()
        .find(|l| l.starts_with("fatal:"))
        .or_else(|| lines.iter().rev().find(|l| l.starts_with("! [")))
        .or_else(|| lines.last())
        .map_or_else(|| "no message".to_owned(), |l| clean_line(l))
}

/// `line` without control characters, with the userinfo (`user:pass@`) of every URL in it
/// cut out, and at most [`MAX_QUOTED_CHARS`] characters.
fn clean_line(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| c == '/' || c.is_whitespace() || "'\"<>".contains(c))
            .unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out.chars()
        .filter(|c| !c.is_control())
        .take(MAX_QUOTED_CHARS)
        .collect()
}

/// A merge's scratch directory, `<town>/.merges/<random>/`, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn create(town_dir: &Path) -> io::Result<Scratch> {
        let parent = town_dir.join(MERGES_DIR);
        if fs::symlink_metadata(&parent).is_ok_and(|m| !m.is_dir()) {
            fs::remove_file(&parent)?;
        }
        let mut builder = fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&parent) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let dir = parent.join(scratch_name());
        builder.create(&dir)?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // `remove_dir_all` removes a symbolic link inside, never what it names.
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!(
                "gastown-control: cannot remove the merge's scratch directory {}: {e}",
                self.0.display()
            );
        }
    }
}

/// 32 hex characters from the system's randomness; failing that, this process's id, a
/// counter and the time (the directory is the server's alone: its name needs only be new).
fn scratch_name() -> String {
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    let random = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_ok() {
        return bytes.iter().map(|b| format!("{b:02x}")).collect();
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// The (town, rig) pairs a merge is running for.
static BUSY: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
/// Signalled whenever a pair is freed.
static FREED: Condvar = Condvar::new();

fn busy() -> MutexGuard<'static, BTreeSet<(String, String)>> {
    // An insert or a remove: a panic never leaves the set half-changed.
    BUSY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The right to merge into one rig of one town, freed when dropped.
struct RigLock((String, String));

impl RigLock {
    /// Waits for the rig until `deadline`; `None` past it.
    fn acquire(town: &str, rig: &str, deadline: Instant) -> Option<RigLock> {
        let key = (town.to_owned(), rig.to_owned());
        let mut set = busy();
        while set.contains(&key) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            set = FREED
                .wait_timeout(set, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        set.insert(key.clone());
        Some(RigLock(key))
    }
}

impl Drop for RigLock {
    fn drop(&mut self) {
        busy().remove(&self.0);
        FREED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> MergeBody {
        MergeBody {
            town_id: "town-a".into(),
            rig_id: "rig-1".into(),
            git_url: "https://github.com/a/b.git".into(),
            branch: "gastown/toast/bead-1".into(),
            base: "main".into(),
            message: "Merge bead-1".into(),
            author_name: "Gastown Refinery".into(),
            author_email: "refinery@gastown.invalid".into(),
        }
    }

    #[test]
    fn plain_branch_names_pass_and_others_do_not() {
        for ok in [
            "main",
            "gastown/toast/bead-1",
            "release-1.2",
            "a_b",
            "HEADS",
            "x@y",
        ] {
            assert!(check_branch("branch", ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(MAX_BRANCH_BYTES + 1);
        for bad in [
            "",
            "--upload-pack=x",
            "-b",
            "a b",
            "a\tb",
            "a\nb",
            "a..b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "/a",
            "a/",
            "a//b",
            "a.",
            "a.lock",
            ".a",
            "a/.b",
            "@",
            "a@{1}",
            "a\u{7f}",
            &long,
        ] {
            assert!(check_branch("branch", bad).is_err(), "{bad:?}");
        }
        assert!(check_branch("branch", &"x".repeat(MAX_BRANCH_BYTES)).is_ok());
    }

    #[test]
    fn git_urls_are_https_unless_local_git_is_allowed() {
        for local in [
            "file:///srv/git/r.git",
            "/srv/git/r.git",
            "http://127.0.0.1:9/r.git",
        ] {
            let e = check_git_url(local, false).unwrap_err();
            assert!(e.contains(ALLOW_LOCAL_GIT_ENV), "{e}");
            assert!(check_git_url(local, true).is_ok(), "{local}");
        }
        assert!(check_git_url("https://github.com/a/b.git", false).is_ok());
        for bad in [
            "",
            "-uhttps://x",
            "ssh://git@github.com/a/b",
            "git@github.com:a/b.git",
            "ext::sh -c x",
            "ext::x",
            "https://x/a b",
            "https://x/a\nb",
            "https:///a",
            "file://relative/r.git",
            "relative/r.git",
            "./r.git",
        ] {
            assert!(check_git_url(bad, true).is_err(), "{bad:?}");
        }
        for secret in [
            "https://x-access-token:ghs_secret@github.com/a/b",
            "http://u:ghs_secret@127.0.0.1/r.git",
        ] {
            let e = check_git_url(secret, true).unwrap_err();
            assert!(
                e.contains("credentials") && !e.contains("ghs_secret"),
                "{e}"
            );
        }
    }

    #[test]
    fn every_field_is_checked() {
        assert_eq!(check(&body(), false), Ok(()));
        let refused = |change: &dyn Fn(&mut MergeBody)| {
            let mut b = body();
            change(&mut b);
            check(&b, true).is_err()
        };
        assert!(refused(&|b| b.town_id = "a/b".into()));
        assert!(refused(&|b| b.rig_id = String::new()));
        assert!(refused(&|b| b.rig_id = "../x".into()));
        assert!(refused(&|b| b.base = "a b".into()));
        assert!(refused(&|b| b.message = " \n ".into()));
        assert!(refused(&|b| b.message = "x".repeat(MAX_MESSAGE_CHARS + 1)));
        assert!(refused(&|b| b.message = "a\0b".into()));
        assert!(refused(&|b| b.author_name = String::new()));
        assert!(refused(&|b| b.author_name = "A\nB".into()));
        assert!(refused(&|b| b.author_email = "a@b\r".into()));
        assert!(refused(&|b| b.author_email = "<a@b>".into()));
        assert!(!refused(&|b| b.message = "é".repeat(MAX_MESSAGE_CHARS)));
        assert!(!refused(&|b| b.message = "Subject\n\nBody.\n".into()));
    }

    #[test]
    fn quoted_lines_lose_credentials_and_hints() {
        assert_eq!(
            clean_line("fatal: unable to access 'https://user:ghs_secret@github.com/a/b/': 403"),
            "fatal: unable to access 'https://github.com/a/b/': 403"
        );
        assert_eq!(
            clean_line("x http://a@b@h:1/p and https://t@h"),
            "x http://h:1/p and https://h"
        );
        assert_eq!(clean_line("to file:///srv/r.git"), "to file:///srv/r.git");
        assert_eq!(clean_line(&"y".repeat(1000)).len(), MAX_QUOTED_CHARS);
        let stderr = "To /r.git\n ! [rejected]        HEAD -> main (fetch first)\n\
                      error: failed to push some refs to '/r.git'\nhint: Updates were rejected\n";
        assert_eq!(
            last_line(stderr),
            "! [rejected]        HEAD -> main (fetch first)"
        );
        let missing = "fatal: '/x.git' does not appear to be a git repository\n\
                       fatal: Could not read from remote repository.\n\n\
                       Please make sure you have the correct access rights\n\
                       and the repository exists.\n";
        assert_eq!(
            last_line(missing),
            "fatal: '/x.git' does not appear to be a git repository"
        );
        assert_eq!(last_line("warning: a\nerror: b\n"), "error: b");
        assert!(base_moved(stderr));
        assert!(base_moved(
            " ! [remote rejected] main -> main (cannot lock ref 'refs/heads/main': is at 1 but expected 2)"
        ));
        assert!(!base_moved(
            " ! [remote rejected] HEAD -> main (pre-receive hook declined)"
        ));
        assert_eq!(last_line(""), "no message");
    }

    #[test]
    fn a_rig_is_merged_into_by_one_merge_at_a_time() {
        let soon = Instant::now() + Duration::from_millis(50);
        let first = RigLock::acquire("town-lock", "rig-1", soon).unwrap();
        assert!(RigLock::acquire("town-lock", "rig-1", soon).is_none());
        let other = RigLock::acquire("town-lock", "rig-2", soon);
        assert!(other.is_some(), "another rig is free");
        let waiter = std::thread::spawn(|| {
            RigLock::acquire(
                "town-lock",
                "rig-1",
                Instant::now() + Duration::from_secs(10),
            )
            .is_some()
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(first);
        assert!(waiter.join().unwrap(), "the waiter gets the rig once freed");
    }
}

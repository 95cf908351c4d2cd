//! `gastown-control git-credential <get|store|erase>` and `gastown-control git-token`: how an
//! agent's git gets a token for its rig's repository, one git operation at a time.
//!
//! No token is ever written into a git remote. Instead the town's gitconfig (see
//! [`workdir::gitconfig_text`]) names this subcommand as git's credential helper, and each time
//! git needs to authenticate it runs `… git-credential get`, which answers
//!
//! ```text
//! username=<x-access-token | oauth2>
//! password=<token>
//! password_expiry_utc=<expires_at>
//! ```
//!
//! Rules:
//!
//! * a rig's token is cached in `<workdir>/<town>/.git-tokens/<rig>.json` (mode 0600, the
//!   directory 0700; with an agent user the server hands that directory to the agent before
//!   each agent start, since the helper runs as the agent and the town's directory is not its
//!   to write in) and reused while it has more than the margin to live (`GASTOWN_GIT_TOKEN_MARGIN_S`
//!   of the agent's env, which the worker sets from its `GIT_TOKEN_REFRESH_MARGIN_S`; else
//!   [`gastown_core::control::GIT_TOKEN_REUSE_MARGIN_SECS`]); past that it is fetched again from the worker's git-token route with the town's
//!   container token (read from `<workdir>/<town>/.container-token`), so a session of any
//!   length never hands git a token about to expire. The agents' `gh` ([`crate::gh`]) takes
//!   the rig's token through the same cache and refresh;
//! * the worker is called with a 10 s deadline and without following redirects, so the
//!   container token only ever goes to the configured worker;
//! * only `protocol=https` is answered: a token never travels in clear text (for any other
//!   protocol the helper prints nothing and exits 0, and git moves on);
//! * a failure prints nothing on stdout, one line on stderr naming the status or the kind of
//!   failure (never a token) and exits 1; git then moves on to its next helper or gives up;
//! * `erase` (git's word that the remote refused the credential) removes the rig's cache
//!   entry when it holds the refused token, so the next `get` fetches a fresh one; `store`
//!   does nothing, the cache being written on `get`;
//! * town and rig ids become paths only after [`check_id`]: 1 to 128 of `A-Z a-z 0-9 _ -`.
//!
//! The helper never reads or needs the server's credentials (`GASTOWN_CONTROL_KEY`,
//! `GASTOWN_CONTROL_SECRET`): [`crate::server::cli_main`] dispatches to it before it touches
//! them.

use crate::cli::{self, Args};
use crate::client::{self, CallFailure};
use crate::workdir::{self, DEFAULT_WORKDIR, GIT_CREDENTIAL_SUBCOMMAND, WORKDIR_ENV};
use gastown_core::control::{
    git_token_margin, git_token_path, GitTokenReply, GIT_TOKEN_MARGIN_ENV, TOWN_ID_ENV,
    WORKER_URL_ENV,
};
use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The subcommand that prints the current git token alone.
pub const GIT_TOKEN_SUBCOMMAND: &str = "git-token";
/// Names the rig whose repository git talks to (agent sessions set it).
pub const RIG_ID_ENV: &str = "GASTOWN_RIG_ID";
/// Names the agent whose session git runs in (agent sessions set it).
pub const AGENT_ID_ENV: &str = "GASTOWN_AGENT_ID";
/// Longest town or rig id the helper accepts.
pub const MAX_ID_LEN: usize = 128;
/// Largest request git writes to the helper that is read (a real one is a few hundred bytes).
const MAX_INPUT_BYTES: u64 = 64 * 1024;

pub const USAGE: &str = "usage: gastown-control git-credential [OPTIONS] <get|store|erase>
       gastown-control git-token [OPTIONS]
  git's credential helper for a rig's repository (git-credential speaks git's protocol on
  stdin/stdout; git-token prints the token alone). Options, each falling back to a variable:
    --worker-url URL   GASTOWN_WORKER_URL   the worker's origin, http:// or https://
    --town ID          GASTOWN_TOWN_ID      the town
    --rig ID           GASTOWN_RIG_ID       the rig whose repository git talks to
    --agent ID         GASTOWN_AGENT_ID     the agent whose session git runs in: tokens are
                                            minted for the user its work runs as
    --workdir DIR      GASTOWN_WORKDIR      the control server's work directory (./gastown-work)
  A token is reused from DIR/<town>/.git-tokens/<rig>.json until GASTOWN_GIT_TOKEN_MARGIN_S
  (default 300) seconds before it expires,
  then fetched from POST URL/api/towns/<town>/rigs/<rig>/git-token with the container token
  in DIR/<town>/.container-token.";

/// What a run of the subcommand works with (and a run of [`crate::gh`], for a rig).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) worker_url: Option<String>,
    pub(crate) town: String,
    pub(crate) rig: String,
    pub(crate) workdir: PathBuf,
    /// The agent whose session asks (`GASTOWN_AGENT_ID`): the worker mints for the user its
    /// work runs as, and the session has its own cache entry, `<rig>@<agent>.json`.
    pub(crate) agent: Option<String>,
}

impl Target {
    /// The name of this session's entry in the token cache.
    pub(crate) fn cache_key(&self) -> String {
        match &self.agent {
            Some(agent) => format!("{}@{agent}", self.rig),
            None => self.rig.clone(),
        }
    }
}

/// The git credential helper's actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Get,
    Store,
    Erase,
}

/// Why no token could be given; shown on stderr, so it never holds a token.
#[derive(Debug)]
pub(crate) enum Failure {
    Config(String),
    NoContainerToken(io::Error),
    Unreachable(String),
    Status(u16),
    BadAnswer,
    /// git asked for another host than the rig's repository's.
    OtherHost,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Config(e) => f.write_str(e),
            // The io error names a kind (or the file's content is not a token), never content.
            Failure::NoContainerToken(e) => write!(f, "no container token for the town: {e}"),
            Failure::Unreachable(e) => write!(f, "worker not reached: {e}"),
            Failure::Status(status) => write!(f, "worker answered {status}"),
            Failure::BadAnswer => f.write_str("worker's answer is not a git token"),
            Failure::OtherHost => f.write_str("git asked for another host than the rig's"),
        }
    }
}

/// Runs `gastown-control <subcommand> <args>` (`args` after the subcommand) with the process's
/// stdin, stdout, stderr and environment; the exit code.
pub fn cli_main(subcommand: &str, args: &[String]) -> i32 {
    let stdin = io::stdin();
    run(
        subcommand,
        args,
        &|name| std::env::var(name).ok(),
        &mut stdin.lock(),
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )
}

/// [`cli_main`] with its inputs and outputs given.
fn run(
    subcommand: &str,
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn BufRead,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let name = format!("gastown-control {subcommand}");
    let parse = |args: &[String]| parse_args(subcommand, args, env);
    let (target, action) = match cli::read_to(&name, USAGE, args, parse, stdout, stderr) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    let outcome = match action {
        None => current_token(&target, now(), stderr).map(|reply| format!("{}\n", reply.token)),
        Some(action) => {
            let request = read_request(stdin);
            if request.get("protocol").is_some_and(|p| p != "https") {
                // Not ours to answer: a token never goes over plain HTTP (or ssh, …).
                return 0;
            }
            match action {
                Action::Get => current_token(&target, now(), stderr).and_then(|reply| {
                    // The token goes to its repository's host only (never a submodule elsewhere).
                    if gastown_core::control::host_matches(
                        reply.host.as_deref(),
                        request.get("host").map(String::as_str),
                    ) {
                        Ok(credential_lines(&reply))
                    } else {
                        Err(Failure::OtherHost)
                    }
                }),
                Action::Store => Ok(String::new()),
                Action::Erase => erase(&target, request.get("password").map(String::as_str))
                    .map(|()| String::new()),
            }
        }
    };
    match outcome {
        Ok(text) => {
            if stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return 1;
            }
            0
        }
        Err(failure) => {
            let _ = writeln!(stderr, "{name}: {failure}");
            1
        }
    }
}

/// The options the credential helper and the gh shim ([`crate::gh`]) share, as given; each
/// falls back to its variable in [`SessionArgs::resolve`].
#[derive(Debug, Default)]
pub(crate) struct SessionArgs {
    worker_url: Option<String>,
    town: Option<String>,
    rig: Option<String>,
    workdir: Option<String>,
    agent: Option<String>,
}

/// Where a session's git runs: the worker, the town, its rig if it has one, the work
/// directory and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) worker_url: Option<String>,
    pub(crate) town: String,
    pub(crate) rig: Option<String>,
    pub(crate) workdir: PathBuf,
    pub(crate) agent: Option<String>,
}

impl SessionArgs {
    /// Takes `arg` and its value when it is one of these options; false for any other.
    ///
    /// # Errors
    /// The option has no value.
    pub(crate) fn take(&mut self, arg: &str, it: &mut Args<'_>) -> Result<bool, String> {
        let slot = match arg {
            "--worker-url" => &mut self.worker_url,
            "--town" => &mut self.town,
            "--rig" => &mut self.rig,
            "--workdir" => &mut self.workdir,
            "--agent" => &mut self.agent,
            _ => return Ok(false),
        };
        *slot = Some(it.value(arg)?);
        Ok(true)
    }

    /// Each option, else its variable; the worker URL an origin, the ids plain.
    ///
    /// # Errors
    /// What is missing or malformed.
    pub(crate) fn resolve(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Session, String> {
        let or_env = |flag, value, var| cli::or_env(flag, value, var, env).map(|(_, v)| v);
        let worker_url = match or_env("--worker-url", self.worker_url, WORKER_URL_ENV) {
            Some(url) => Some(client::origin(&url).map_err(|e| format!("the worker URL {e}"))?),
            None => None,
        };
        let town = or_env("--town", self.town, TOWN_ID_ENV)
            .ok_or_else(|| format!("no town: set {TOWN_ID_ENV} or --town"))?;
        check_id("town", &town)?;
        let rig = or_env("--rig", self.rig, RIG_ID_ENV);
        let agent = or_env("--agent", self.agent, AGENT_ID_ENV);
        for (kind, id) in [("rig", &rig), ("agent", &agent)] {
            if let Some(id) = id {
                check_id(kind, id)?;
            }
        }
        let workdir = PathBuf::from(
            or_env("--workdir", self.workdir, WORKDIR_ENV)
                .unwrap_or_else(|| DEFAULT_WORKDIR.to_owned()),
        );
        Ok(Session {
            worker_url,
            town,
            rig,
            workdir,
            agent,
        })
    }
}

impl Session {
    /// The credential helper's target: the session's rig, which it must have.
    ///
    /// # Errors
    /// No rig.
    pub(crate) fn target(self) -> Result<Target, String> {
        Ok(Target {
            rig: self
                .rig
                .ok_or_else(|| format!("no rig: set {RIG_ID_ENV} or --rig"))?,
            worker_url: self.worker_url,
            town: self.town,
            workdir: self.workdir,
            agent: self.agent,
        })
    }
}

/// The target and, for `git-credential`, the action.
fn parse_args(
    subcommand: &str,
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Target, Option<Action>), String> {
    let mut session = SessionArgs::default();
    let mut action = None;
    let mut it = Args::new(args);
    while let Some(arg) = it.next() {
        if session.take(arg, &mut it)? {
            continue;
        }
        match arg {
            "get" | "store" | "erase"
                if subcommand == GIT_CREDENTIAL_SUBCOMMAND && action.is_none() =>
            {
                action = Some(match arg {
                    "get" => Action::Get,
                    "store" => Action::Store,
                    _ => Action::Erase,
                });
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if subcommand == GIT_CREDENTIAL_SUBCOMMAND && action.is_none() {
        return Err("which action: get, store or erase?".to_owned());
    }
    Ok((session.resolve(env)?.target()?, action))
}

/// Checks that a town or rig id can name a file of the cache: 1 to [`MAX_ID_LEN`] of
/// `A-Z a-z 0-9 _ -`.
///
/// # Errors
/// Why it cannot.
pub fn check_id(kind: &str, id: &str) -> Result<(), String> {
    let plain = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "the {kind} id must be 1 to {MAX_ID_LEN} of A-Z a-z 0-9 _ -"
        ))
    }
}

/// Seconds since the epoch.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Git's request: `key=value` lines up to an empty line or the end of input. A key given
/// twice keeps its last value (only single-valued keys are read).
fn read_request(stdin: &mut dyn BufRead) -> std::collections::HashMap<String, String> {
    let mut request = std::collections::HashMap::new();
    let mut limited = stdin.take(MAX_INPUT_BYTES);
    let mut line = String::new();
    loop {
        line.clear();
        match limited.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            break;
        }
        if let Some((key, value)) = line.split_once('=') {
            request.insert(key.to_owned(), value.to_owned());
        }
    }
    request
}

/// The rig's token: the cached one while it has more than the margin to live, else a fresh
/// one from the worker (cached for the next call).
pub(crate) fn current_token(
    target: &Target,
    now: i64,
    stderr: &mut dyn Write,
) -> Result<GitTokenReply, Failure> {
    let town_dir = town_dir(target)?;
    let key = target.cache_key();
    if let Some(cached) = workdir::read_git_token_cache(&town_dir, &key) {
        let margin = git_token_margin(std::env::var(GIT_TOKEN_MARGIN_ENV).ok().as_deref());
        if cached.expires_at.saturating_sub(now) > margin {
            return Ok(cached);
        }
    }
    let (reply, container_token) = fresh(target, &town_dir)?;
    // The town may have stopped (its credentials removed) or its container token been
    // replaced during the call: then the token is handed out but not kept.
    if workdir::read_container_token(&town_dir).is_ok_and(|t| t == container_token) {
        if let Err(e) = workdir::write_git_token_cache(&town_dir, &key, &reply) {
            let _ = writeln!(stderr, "gastown-control: git token not cached: {e}");
        }
    }
    Ok(reply)
}

/// A token fetched from the worker now, not cached (an agent's start asks once, to learn the
/// identity its session commits as).
pub(crate) fn fresh_token(target: &Target) -> Result<GitTokenReply, Failure> {
    fresh(target, &town_dir(target)?).map(|(reply, _)| reply)
}

/// A token from the worker, and the container token it was asked with.
fn fresh(target: &Target, town_dir: &Path) -> Result<(GitTokenReply, String), Failure> {
    let worker = target.worker_url.as_deref().ok_or_else(|| {
        Failure::Config(format!(
            "no worker URL: set {WORKER_URL_ENV} or --worker-url"
        ))
    })?;
    let container_token =
        workdir::read_container_token(town_dir).map_err(Failure::NoContainerToken)?;
    let reply = fetch(worker, target, &container_token)?;
    Ok((reply, container_token))
}

fn town_dir(target: &Target) -> Result<PathBuf, Failure> {
    workdir::town_dir(&target.workdir, &target.town)
        .ok_or_else(|| Failure::Config("the town id cannot name a directory".to_owned()))
}

/// Asks the worker for a git token for the target's rig (and agent) with the town's container
/// token.
fn fetch(worker: &str, target: &Target, container_token: &str) -> Result<GitTokenReply, Failure> {
    let url = format!("{worker}{}", git_token_path(&target.town, &target.rig));
    let body = match &target.agent {
        Some(agent) => serde_json::json!({ "agent_id": agent }).to_string(),
        None => "{}".to_owned(),
    };
    // The token goes into a line of git's protocol: nothing but token characters.
    client::post_to_worker(
        &client::agent(),
        &url,
        container_token,
        &body,
        |r: &GitTokenReply| &r.token,
    )
    .map_err(|f| match f {
        CallFailure::Unreachable(e) => Failure::Unreachable(e),
        CallFailure::Status(s) => Failure::Status(s),
        CallFailure::BadAnswer => Failure::BadAnswer,
    })
}

/// The answer to git's `get`.
fn credential_lines(reply: &GitTokenReply) -> String {
    format!(
        "username={}\npassword={}\npassword_expiry_utc={}\n",
        reply.source.git_username(),
        reply.token,
        reply.expires_at
    )
}

/// Removes the rig's cached token if it is the one git says was refused (or git named none);
/// a newer token another process cached meanwhile stays.
fn erase(target: &Target, refused: Option<&str>) -> Result<(), Failure> {
    let town_dir = town_dir(target)?;
    let key = target.cache_key();
    let cached = workdir::read_git_token_cache(&town_dir, &key);
    let matches = match (refused, &cached) {
        (Some(refused), Some(cached)) => cached.token == refused,
        _ => true,
    };
    if matches {
        workdir::remove_git_token_cache(&town_dir, &key)
            .map_err(|e| Failure::Config(format!("cannot remove the cached token: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gastown_core::control::GitTokenSource;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn arguments_and_environment() {
        let env = |name: &str| match name {
            WORKER_URL_ENV => Some("http://127.0.0.1:1/".to_owned()),
            TOWN_ID_ENV => Some("town-a".to_owned()),
            RIG_ID_ENV => Some("rig_1".to_owned()),
            _ => None,
        };
        let (t, a) = parse_args("git-credential", &args(&["get"]), &env).unwrap();
        assert_eq!(a, Some(Action::Get));
        assert_eq!(t.worker_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!((t.town.as_str(), t.rig.as_str()), ("town-a", "rig_1"));
        assert_eq!(t.workdir, PathBuf::from(DEFAULT_WORKDIR));
        // Flags win; git appends the action after the configured flags.
        let (t, a) = parse_args(
            "git-credential",
            &args(&["--town", "t2", "--workdir", "/w", "--rig", "r2", "erase"]),
            &env,
        )
        .unwrap();
        assert_eq!(a, Some(Action::Erase));
        assert_eq!((t.town.as_str(), t.rig.as_str()), ("t2", "r2"));
        assert_eq!(t.workdir, PathBuf::from("/w"));
        let (_, a) = parse_args("git-token", &[], &env).unwrap();
        assert_eq!(a, None);

        for bad in [
            &["fill"][..],
            &[],
            &["get", "get"],
            &["--town"],
            &["--town", "../x", "get"],
            &["--rig", "a.b", "get"],
            &["--worker-url", "ftp://x", "get"],
        ] {
            assert!(
                parse_args("git-credential", &args(bad), &env).is_err(),
                "{bad:?}"
            );
        }
        assert!(parse_args("git-token", &args(&["get"]), &env).is_err());
        assert!(parse_args("git-credential", &args(&["get"]), &no_env).is_err());
    }

    #[test]
    fn ids() {
        for ok in ["a", "Town_1-x", &"x".repeat(MAX_ID_LEN)] {
            assert!(check_id("rig", ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", ".", "..", "a/b", "a.b", "a b", "é", "a\nb", &long] {
            assert!(check_id("rig", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_lines() {
        let mut input: &[u8] =
            b"protocol=https\nhost=github.com\npath=a/b.git\nwwwauth[]=x\n\nignored=1\n";
        let r = read_request(&mut input);
        assert_eq!(r["protocol"], "https");
        assert_eq!(r["path"], "a/b.git");
        assert!(!r.contains_key("ignored"));
        let mut eof: &[u8] = b"host=x";
        assert_eq!(read_request(&mut eof)["host"], "x");
    }

    #[test]
    fn answer_lines() {
        let reply = GitTokenReply {
            token: "glo_x".into(),
            expires_at: 1_900_000_000,
            source: GitTokenSource::GitlabOauth,
            identity: None,
            host: None,
        };
        assert_eq!(
            credential_lines(&reply),
            "username=oauth2\npassword=glo_x\npassword_expiry_utc=1900000000\n"
        );
    }

    #[test]
    fn usage_errors_exit_2_and_other_protocols_get_nothing() {
        let run_with = |argv: &[&str], input: &[u8]| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let env = |name: &str| match name {
                TOWN_ID_ENV => Some("t".to_owned()),
                RIG_ID_ENV => Some("r".to_owned()),
                // A workdir with no town in it: any attempt to read it fails.
                WORKDIR_ENV => Some("/nonexistent-gastown-workdir".to_owned()),
                _ => None,
            };
            let mut input = input;
            let code = run(
                "git-credential",
                &args(argv),
                &env,
                &mut input,
                &mut out,
                &mut err,
            );
            (
                code,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        let (code, out, err) = run_with(&["fill"], b"");
        assert_eq!((code, out.as_str()), (2, ""));
        assert!(err.contains("usage:"), "{err}");
        let (code, out, _) = run_with(&["get"], b"protocol=http\nhost=x\n\n");
        assert_eq!((code, out.as_str()), (0, ""));
        let (code, out, _) = run_with(&["store"], b"protocol=https\nhost=x\npassword=p\n\n");
        assert_eq!((code, out.as_str()), (0, ""));
        let (code, out, err) = run_with(&["get"], b"protocol=https\nhost=x\n\n");
        assert_eq!((code, out.as_str()), (1, ""));
        assert!(err.contains("no worker URL"), "{err}");
    }
}

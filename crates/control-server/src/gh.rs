//! `gastown-control gh [OPTIONS] -- <gh arguments>`: the GitHub CLI with a token for this one
//! run, what an agent's `gh` is.
//!
//! Agents that use `gh` must find `GH_TOKEN`, and never a copy in their environment that has
//! gone stale (an installation token lives an hour; an agent session may live longer). So no
//! agent has `GH_TOKEN` in its env (the server drops one the start's env might carry). On every
//! `POST /refresh-token` the server writes the town's `gh` shim, `<workdir>/<town>/bin/gh` (see
//! [`workdir::gh_shim_text`]), and every agent's `PATH` starts with `<workdir>/<town>/bin`, so
//! each `gh` an agent runs is
//!
//! ```text
//! exec <this executable> gh --workdir <workdir> --town <town> [--worker-url <worker>]
//!      [--gh-path <real gh>] -- "$@"
//! ```
//!
//! which decides the token, then execs the real `gh` with the arguments untouched and
//! `GH_TOKEN` set for it alone:
//!
//! 1. the town's GitHub CLI PAT (`GITHUB_CLI_PAT` in the env, from the town config's
//!    `github_cli_pat`) when it is set: the user chose gh to act as them;
//! 2. else, for a rig (`GASTOWN_RIG_ID`, which polecats have and the mayor has not) whose
//!    token is a GitHub one ([`GitTokenReply::is_for_github`]: an App installation or user
//!    token, or the town's manual token for github.com), the rig's current token, through the
//!    git credential helper's own cache and refresh ([`git_credential`]: reused from
//!    `<workdir>/<town>/.git-tokens/<rig>.json` while it has more than 5 minutes to live,
//!    else fetched from the worker's git-token route with the town's container token);
//! 3. else none: `GH_TOKEN` is absent (and `GITHUB_TOKEN`, which gh reads too, with it). A
//!    rig without credentials (the worker's 404) is said nothing of; any other failure to get
//!    the rig's token is one line on stderr naming its kind or status, and gh still runs.
//!
//! The real `gh` is `--gh-path` (or [`GH_PATH_ENV`]) when given, else the first executable
//! `gh` on `PATH` outside the shim's own directory (and not the shim itself). With none, one
//! line on stderr and exit 127, as a shell says of a missing command. `GITHUB_CLI_PAT` does
//! not reach gh's env: gh has it as `GH_TOKEN` when it is the one chosen.
//!
//! A token is never printed, logged or written anywhere but the git token cache (0600), and
//! the server's credentials are never read: [`crate::server::cli_main`] dispatches here before
//! it touches them. Options and their variables are [`USAGE`]'s; everything after `--` is
//! gh's, `--help` included.

use crate::cli::{self, Args};
use crate::git_credential::{self, Failure, Session, SessionArgs, Target};
use crate::workdir;
use gastown_core::control::{GitTokenReply, GH_TOKEN_ENV, GITHUB_CLI_PAT_ENV};
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Names the real `gh` when `--gh-path` does not (the server's option of the same name is
/// baked into each town's shim).
pub const GH_PATH_ENV: &str = "GASTOWN_GH_PATH";
/// The other variable gh takes a token from; never left for gh to find.
pub const GITHUB_TOKEN_ENV: &str = "GITHUB_TOKEN";
/// Exit code when there is no real `gh` to run (a shell's "command not found").
pub const EXIT_NO_GH: i32 = 127;
/// Exit code when the real `gh` cannot be run (a shell's "cannot execute").
pub const EXIT_CANNOT_RUN: i32 = 126;

pub const USAGE: &str = "usage: gastown-control gh [OPTIONS] -- [GH ARGUMENTS]...
  The GitHub CLI with GH_TOKEN set for this one run (what the town's bin/gh shim runs). The
  token: GITHUB_CLI_PAT when set; else the rig's current token when it is a GitHub one (the
  git credential helper's cache and refresh); else none. Then it runs the real gh with the
  arguments after --. Options, each falling back to a variable:
    --worker-url URL   GASTOWN_WORKER_URL   the worker's origin, http:// or https://
    --town ID          GASTOWN_TOWN_ID      the town
    --rig ID           GASTOWN_RIG_ID       the rig (none: no rig token)
    --agent ID         GASTOWN_AGENT_ID     the agent whose session runs gh (its git's token)
    --workdir DIR      GASTOWN_WORKDIR      the control server's work directory (./gastown-work)
    --gh-path PATH     GASTOWN_GH_PATH      the real gh (default: the first gh on PATH outside
                                            DIR/<town>/bin)";

/// What one run works with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    /// The town, its rig (none: no rig token) and the agent whose session runs gh (its token is
    /// the one its git gets).
    session: Session,
    gh_path: Option<PathBuf>,
    /// Everything after `--`.
    gh_args: Vec<OsString>,
}

impl Run {
    /// `<workdir>/<town>/bin`: where the shim lives, never where the real gh is looked for.
    fn shim_dir(&self) -> Option<PathBuf> {
        workdir::town_dir(&self.session.workdir, &self.session.town)
            .map(|d| d.join(workdir::BIN_DIR))
    }

    /// The git credential helper's view of the rig, when there is one.
    fn rig_target(&self) -> Option<Target> {
        self.session.clone().target().ok()
    }
}

/// Runs `gastown-control gh <args>` (`args` after the subcommand) with the process's
/// environment: on success it does not return (the real gh replaces this process); otherwise
/// the exit code.
pub fn cli_main(args: &[OsString]) -> i32 {
    let env = |name: &str| std::env::var(name).ok();
    let run = match read_args(args, &env, &mut io::stdout(), &mut io::stderr()) {
        Ok(run) => run,
        Err(code) => return code,
    };
    let mut stderr = io::stderr().lock();
    let token = gh_token(&run, &env, git_credential::now(), &mut stderr);
    let path = std::env::var_os("PATH");
    let Some(gh) = real_gh(&run, path.as_deref()) else {
        let _ = writeln!(
            stderr,
            "gastown-control gh: no gh to run: none on PATH outside the shim's directory; \
             install the GitHub CLI or set {GH_PATH_ENV}"
        );
        return EXIT_NO_GH;
    };
    let mut cmd = Command::new(&gh);
    cmd.args(&run.gh_args)
        .env_remove(GH_TOKEN_ENV)
        .env_remove(GITHUB_TOKEN_ENV)
        .env_remove(GITHUB_CLI_PAT_ENV);
    if let Some(token) = &token {
        cmd.env(GH_TOKEN_ENV, token);
    }
    let error = exec(cmd);
    // The error names the path and the kind of failure, never the env.
    let _ = writeln!(
        stderr,
        "gastown-control gh: cannot run {}: {error}",
        gh.display()
    );
    EXIT_CANNOT_RUN
}

/// Replaces this process with `cmd` (`gh` as its `argv[0]`); returns only on failure.
#[cfg(unix)]
fn exec(mut cmd: Command) -> io::Error {
    use std::os::unix::process::CommandExt;
    cmd.arg0("gh").exec()
}

/// Without `exec`: runs `cmd` and exits with its code.
#[cfg(not(unix))]
fn exec(mut cmd: Command) -> io::Error {
    match cmd.status() {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(e) => e,
    }
}

/// The run the arguments describe (those before `--` read as [`cli::read_to`] reads every
/// command line, those after it kept for gh), or the exit code with its output written.
fn read_args(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Run, i32> {
    let split = args.iter().position(|a| a == "--");
    let (ours, gh_args) = match split {
        Some(i) => (&args[..i], args[i + 1..].to_vec()),
        None => (args, Vec::new()),
    };
    let ours: Vec<String> = ours
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let parse = |ours: &[String]| {
        if split.is_none() {
            return Err("the gh arguments go after --".to_owned());
        }
        parse_options(ours, env)
    };
    let mut run = cli::read_to("gastown-control gh", USAGE, &ours, parse, stdout, stderr)?;
    run.gh_args = gh_args;
    Ok(run)
}

/// The options before `--`, each falling back to its variable.
fn parse_options(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Run, String> {
    let mut session = SessionArgs::default();
    let mut gh_path = None;
    let mut it = Args::new(args);
    while let Some(arg) = it.next() {
        if session.take(arg, &mut it)? {
            continue;
        }
        match arg {
            "--gh-path" => gh_path = Some(it.value(arg)?),
            other => return Err(cli::unknown(other)),
        }
    }
    let gh_path = cli::or_env("--gh-path", gh_path, GH_PATH_ENV, env).map(|(_, v)| v);
    Ok(Run {
        session: session.resolve(env)?,
        gh_path: gh_path.map(PathBuf::from),
        gh_args: Vec::new(),
    })
}

/// The token this run of gh gets as `GH_TOKEN`, by the module's rules; a failure other than
/// "no credentials" is one line on `stderr` (never a token).
fn gh_token(
    run: &Run,
    env: &dyn Fn(&str) -> Option<String>,
    now: i64,
    stderr: &mut dyn Write,
) -> Option<String> {
    if let Some(pat) = env(GITHUB_CLI_PAT_ENV).filter(|p| usable(p)) {
        return Some(pat);
    }
    let target = run.rig_target()?;
    match git_credential::current_token(&target, now, stderr) {
        Ok(reply) => github_token(reply),
        // The rig has no credentials: nothing to say.
        Err(Failure::Status(404)) => None,
        Err(failure) => {
            let _ = writeln!(
                stderr,
                "gastown-control gh: GH_TOKEN not set, the rig's token is unavailable: {failure}"
            );
            None
        }
    }
}

/// The rig's token, when gh can use it.
fn github_token(reply: GitTokenReply) -> Option<String> {
    reply.is_for_github().then_some(reply.token)
}

/// Whether a value can be handed to gh as a token: not empty, no control character.
fn usable(token: &str) -> bool {
    !token.trim().is_empty() && !token.chars().any(char::is_control)
}

/// The real gh: `--gh-path`, else the first executable `gh` on `path` that is neither in the
/// shim's directory nor the shim itself.
fn real_gh(run: &Run, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if let Some(gh) = &run.gh_path {
        return Some(gh.clone());
    }
    let shim_dir = run.shim_dir();
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let shim_dir_real = shim_dir.as_deref().and_then(canonical);
    let shim_real = shim_dir
        .as_deref()
        .and_then(|d| canonical(&d.join(workdir::GH_SHIM_FILE)));
    std::env::split_paths(path?)
        // An empty entry is the current directory: never where gh is taken from.
        .filter(|dir| !dir.as_os_str().is_empty())
        .filter(|dir| {
            let real = canonical(dir);
            shim_dir.as_deref() != Some(dir.as_path()) && (real.is_none() || real != shim_dir_real)
        })
        .map(|dir| dir.join("gh"))
        .find(|gh| is_executable(gh) && (shim_real.is_none() || canonical(gh) != shim_real))
}

/// Whether `path` is a file someone may execute.
fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    meta.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git_credential::RIG_ID_ENV;
    use gastown_core::control::{GitTokenSource, TOWN_ID_ENV};

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn read(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> (Result<Run, i32>, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let run = read_args(&os(args), env, &mut out, &mut err);
        let text = String::from_utf8(out).unwrap() + &String::from_utf8(err).unwrap();
        (run, text)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn options_before_the_separator_and_gh_arguments_after_it() {
        let (run, _) = read(
            &[
                "--town",
                "t-1",
                "--workdir",
                "/w",
                "--worker-url",
                "http://127.0.0.1:9/",
                "--gh-path",
                "/opt/gh",
                "--",
                "pr",
                "create",
                "--help",
                "--town",
            ],
            &no_env,
        );
        let run = run.unwrap();
        assert_eq!(run.session.town, "t-1");
        assert_eq!(run.session.rig, None);
        assert_eq!(run.session.workdir, PathBuf::from("/w"));
        assert_eq!(
            run.session.worker_url.as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(run.gh_path, Some(PathBuf::from("/opt/gh")));
        assert_eq!(run.gh_args, os(&["pr", "create", "--help", "--town"]));
        assert_eq!(run.shim_dir(), Some(PathBuf::from("/w/t-1/bin")));

        // The variables stand in for the options, as for git's helper.
        let env = |name: &str| match name {
            TOWN_ID_ENV => Some("t-2".to_owned()),
            RIG_ID_ENV => Some("rig_9".to_owned()),
            GH_PATH_ENV => Some("/env/gh".to_owned()),
            _ => None,
        };
        let run = read(&["--"], &env).0.unwrap();
        assert_eq!(
            (run.session.town.as_str(), run.session.rig.as_deref()),
            ("t-2", Some("rig_9"))
        );
        assert_eq!(run.gh_path, Some(PathBuf::from("/env/gh")));
        assert_eq!(run.session.workdir, PathBuf::from(workdir::DEFAULT_WORKDIR));
        assert!(run.gh_args.is_empty());
    }

    #[test]
    fn help_and_bad_arguments_before_the_separator_only() {
        let (code, text) = read(&["--help", "--"], &no_env);
        assert_eq!(code.unwrap_err(), 0);
        assert!(text.starts_with("usage: gastown-control gh"), "{text}");
        for bad in [
            &["--town", "t"][..],
            &["--town", "t", "pr", "--"],
            &["--"],
            &["--town", "../x", "--"],
            &["--town", "t", "--rig", "a/b", "--"],
            &["--town", "t", "--worker-url", "ftp://x", "--"],
        ] {
            let (code, text) = read(bad, &no_env);
            assert_eq!(code.unwrap_err(), 2, "{bad:?}");
            assert!(text.contains("usage:"), "{bad:?}: {text}");
        }
    }

    #[test]
    fn the_pat_wins_and_no_rig_means_no_rig_token() {
        let run = read(&["--town", "t", "--"], &no_env).0.unwrap();
        let pat = |name: &str| (name == GITHUB_CLI_PAT_ENV).then(|| "ghp_pat".to_owned());
        let mut err = Vec::new();
        assert_eq!(
            gh_token(&run, &pat, 0, &mut err).as_deref(),
            Some("ghp_pat")
        );
        // No PAT and no rig: none, and nothing said (no worker was asked).
        assert_eq!(gh_token(&run, &no_env, 0, &mut err), None);
        for blank in ["", "  ", "a\nb"] {
            let env = |name: &str| (name == GITHUB_CLI_PAT_ENV).then(|| blank.to_owned());
            assert_eq!(gh_token(&run, &env, 0, &mut err), None, "{blank:?}");
        }
        assert!(err.is_empty());
    }

    #[test]
    fn only_a_github_token_of_the_rig_goes_to_gh() {
        let reply = |source, host: Option<&str>| GitTokenReply {
            token: "tok".into(),
            expires_at: 0,
            source,
            identity: None,
            host: host.map(str::to_owned),
        };
        assert_eq!(
            github_token(reply(GitTokenSource::GithubApp, Some("github.com"))).as_deref(),
            Some("tok")
        );
        assert_eq!(
            github_token(reply(GitTokenSource::GithubUser, None)).as_deref(),
            Some("tok")
        );
        assert_eq!(
            github_token(reply(GitTokenSource::GitlabOauth, Some("gitlab.com"))),
            None
        );
        assert_eq!(
            github_token(reply(GitTokenSource::TownConfig, Some("git.example.org"))),
            None
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_real_gh_is_found_past_the_shim() {
        use std::os::unix::fs::PermissionsExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let root =
            std::env::temp_dir().join(format!("gastown-gh-find-{}-{nanos}", std::process::id()));
        let shim_dir = root.join("w/t/bin");
        let other = root.join("other");
        let real = root.join("real");
        for dir in [&shim_dir, &other, &real] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let script = |path: &Path, mode: u32| {
            std::fs::write(path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        script(&shim_dir.join("gh"), 0o755);
        script(&other.join("gh"), 0o644);
        script(&real.join("gh"), 0o755);
        // A link to the shim elsewhere is the shim.
        let linked = root.join("linked");
        std::fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink(shim_dir.join("gh"), linked.join("gh")).unwrap();
        let run = Run {
            session: Session {
                worker_url: None,
                town: "t".into(),
                rig: None,
                agent: None,
                workdir: root.join("w"),
            },
            gh_path: None,
            gh_args: Vec::new(),
        };
        let path = std::env::join_paths([
            &PathBuf::new(),
            &shim_dir,
            &root.join("w/t/../t/bin"),
            &linked,
            &other,
            &root.join("missing"),
            &real,
        ])
        .unwrap();
        assert_eq!(real_gh(&run, Some(&path)), Some(real.join("gh")));
        let only_shim = std::env::join_paths([&shim_dir, &other]).unwrap();
        assert_eq!(real_gh(&run, Some(&only_shim)), None);
        assert_eq!(real_gh(&run, None), None);
        let named = Run {
            gh_path: Some("/opt/gh".into()),
            ..run
        };
        assert_eq!(real_gh(&named, None), Some(PathBuf::from("/opt/gh")));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

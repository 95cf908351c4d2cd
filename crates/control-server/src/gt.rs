//! `gt`: the agents' tool, usable from any agent runtime's shell. Each town's `bin/gt` shim
//! (first on every agent's `PATH`, beside the `gh` shim) runs `gastown-control gt …`:
//!
//! ```text
//! gt done --summary TEXT [--branch NAME] [--pr-url URL]   the bead is done
//! gt status TEXT…                                        a line for the bead's log
//! gt heartbeat                                           the agent is alive
//! gt git-token                                           the rig's current git token
//! ```
//!
//! The session comes from the agent's environment (`GASTOWN_WORKER_URL`, `GASTOWN_TOWN_ID`,
//! `GASTOWN_RIG_ID`, `GASTOWN_AGENT_ID`), and the town's container token is read from
//! `GASTOWN_CONTAINER_TOKEN_FILE` on every call, never kept: see [`crate::callbacks`]. Exit 0 on
//! success; 1 when the worker refused or was not reached (one line on stderr, never a token);
//! 2 for a usage error.

use crate::callbacks::{callback_text, Callbacks};
use crate::cli::Args;
use crate::git_credential::{self, GIT_TOKEN_SUBCOMMAND};
use gastown_core::control::AgentDoneCallback;
use std::io::Write;

/// The subcommand of `gastown-control` the `gt` shim runs.
pub const GT_SUBCOMMAND: &str = "gt";

pub const USAGE: &str = "usage: gt <command>
  gt done --summary TEXT [--branch NAME] [--pr-url URL]   the bead is done (closed, or in
                                                          review with a pull request)
  gt status TEXT...                                       a status line for the bead's log
  gt heartbeat                                            the agent is alive
  gt git-token                                            prints the rig's current git token
  The session is the agent's (GASTOWN_WORKER_URL, GASTOWN_TOWN_ID, GASTOWN_RIG_ID,
  GASTOWN_AGENT_ID); the town's container token is read from GASTOWN_CONTAINER_TOKEN_FILE on
  every call.";

/// What one run asks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Done(AgentDoneCallback),
    Status(String),
    Heartbeat,
    GitToken,
}

/// Runs `gt <args>` (the arguments after `gt`) with the process's environment; the exit code.
pub fn cli_main(args: &[String]) -> i32 {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut stderr = std::io::stderr().lock();
    let command = match parse(args) {
        Ok(Some(command)) => command,
        Ok(None) => {
            println!("{USAGE}");
            return 0;
        }
        Err(e) => {
            let _ = writeln!(stderr, "gt: {e}\n{USAGE}");
            return 2;
        }
    };
    if command == Command::GitToken {
        return git_credential::cli_main(GIT_TOKEN_SUBCOMMAND, &[]);
    }
    let session = match Callbacks::from_env(&env, "gt") {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(stderr, "gt: not in an agent session: {e}");
            return 2;
        }
    };
    let outcome = match &command {
        Command::Done(done) => serde_json::to_string(done)
            .map_err(|e| e.to_string())
            .and_then(|body| session.call("done", &body)),
        Command::Status(message) => session.status(message),
        Command::Heartbeat => session.call("heartbeat", "{}"),
        Command::GitToken => unreachable!("handled above"),
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(stderr, "gt: {e}");
            1
        }
    }
}

/// The command; `None` for `--help` or no command.
fn parse(args: &[String]) -> Result<Option<Command>, String> {
    let Some((first, rest)) = args.split_first() else {
        return Ok(None);
    };
    let command = match first.as_str() {
        "-h" | "--help" | "help" => return Ok(None),
        "done" => {
            let (mut summary, mut branch, mut pr_url) = (None, None, None);
            let mut it = Args::new(rest);
            while let Some(arg) = it.next() {
                match arg {
                    "--summary" => summary = Some(it.value(arg)?),
                    "--branch" => branch = Some(it.value(arg)?),
                    "--pr-url" => pr_url = Some(it.value(arg)?),
                    other => return Err(format!("done: unexpected argument {other:?}")),
                }
            }
            let summary = summary
                .filter(|s| !s.trim().is_empty())
                .ok_or("done needs --summary")?;
            Command::Done(AgentDoneCallback {
                summary: callback_text(&summary),
                branch,
                pr_url,
            })
        }
        "status" => {
            let message = rest.join(" ");
            if message.trim().is_empty() {
                return Err("status needs a message".to_owned());
            }
            Command::Status(message)
        }
        "heartbeat" if rest.is_empty() => Command::Heartbeat,
        "git-token" if rest.is_empty() => Command::GitToken,
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse(&args(&[
                "done",
                "--summary",
                "all of it",
                "--branch",
                "gastown/a/b"
            ]))
            .unwrap(),
            Some(Command::Done(AgentDoneCallback {
                summary: "all of it".into(),
                branch: Some("gastown/a/b".into()),
                pr_url: None,
            }))
        );
        assert_eq!(
            parse(&args(&["status", "cloning", "the", "repo"])).unwrap(),
            Some(Command::Status("cloning the repo".into()))
        );
        assert_eq!(
            parse(&args(&["heartbeat"])).unwrap(),
            Some(Command::Heartbeat)
        );
        assert_eq!(
            parse(&args(&["git-token"])).unwrap(),
            Some(Command::GitToken)
        );
        assert_eq!(parse(&args(&[])).unwrap(), None);
        assert_eq!(parse(&args(&["--help"])).unwrap(), None);
        for bad in [
            &["done"][..],
            &["done", "--summary", " "],
            &["done", "--summary", "x", "--force"],
            &["done", "--branch"],
            &["status"],
            &["heartbeat", "now"],
            &["sling"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}

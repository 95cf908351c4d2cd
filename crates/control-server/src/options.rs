//! The options of `gastown-control` (and `gastown-control-debug`): each flag, the variable it
//! falls back to, its default and how it is checked, read with [`crate::cli`]; and the usage
//! both binaries print.

use crate::agent_user::{AgentUser, AGENT_GID_ENV, AGENT_UID_ENV};
use crate::agents::{AgentCommand, AGENT_COMMAND_ENV};
use crate::auth::DEFAULT_ALLOWED_HOSTS;
use crate::cli::{self, Args};
use crate::client;
use crate::gh::GH_PATH_ENV;
use crate::http::DEFAULT_READ_TIMEOUT;
use crate::workdir::{DEFAULT_WORKDIR, WORKDIR_ENV};
use gastown_core::control::{GATEWAY_REFRESH_MS_ENV, WORKER_URL_ENV};
use std::path::PathBuf;
use std::time::Duration;

/// Names `--git-ca-file` when the flag does not.
pub const GIT_CA_FILE_ENV: &str = "GASTOWN_GIT_CA_FILE";

/// Default interval of the gateway token's self-refresh: 12 h, half a sandbox token's life.
pub const DEFAULT_GATEWAY_REFRESH: Duration = Duration::from_secs(12 * 60 * 60);
/// Shortest `--gateway-refresh-ms`.
pub const MIN_GATEWAY_REFRESH_MS: u64 = 100;
/// Names `--drain-grace-ms` when the flag does not.
pub const DRAIN_GRACE_MS_ENV: &str = "GASTOWN_DRAIN_GRACE_MS";
/// Default time the agents get to exit after the server's `SIGTERM` (`crate::drain`).
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(20);

/// Command-line options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub allowed_hosts: Vec<String>,
    pub read_timeout: Duration,
    pub workdir: PathBuf,
    pub worker_url: Option<String>,
    pub gateway_refresh: Duration,
    /// `None`: the default, [`crate::agents::DEMO_AGENT_BIN`] beside this executable.
    pub agent_command: Option<AgentCommand>,
    /// `--agent-uid` and `--agent-gid`.
    pub agent_user: Option<AgentUser>,
    /// `--gh-path`: the real GitHub CLI the towns' `gh` shims run.
    pub gh_path: Option<PathBuf>,
    /// `--git-ca-file`: certificates agents' git trusts for HTTPS (a self-hosted git host's
    /// private CA), written into each town's gitconfig as `http.sslCAInfo`.
    pub git_ca_file: Option<PathBuf>,
    /// `--drain-grace-ms`: how long the agents get to exit on the server's `SIGTERM` before
    /// they are killed and their work saved (`crate::drain`).
    pub drain_grace: Duration,
}

/// What `--help` prints, and a bad argument after its error.
pub const USAGE: &str = "usage: gastown-control [--host 127.0.0.1] [--port 8080] \
[--allowed-host NAME]... [--read-timeout-ms 5000] [--workdir ./gastown-work] \
[--worker-url URL] [--gateway-refresh-ms 43200000] [--agent-command PATH] \
[--agent-uid N --agent-gid N] [--gh-path PATH] [--git-ca-file PATH] [--drain-grace-ms 20000]
  credentials (read from the environment, then removed from it):
    GASTOWN_CONTROL_SECRET + GASTOWN_TOWN_ID   production: one town per container
    GASTOWN_CONTROL_KEY                        local dev and tests: the master key
  --allowed-host replaces the default list (container, localhost, 127.0.0.1, [::1]).
  --workdir (or GASTOWN_WORKDIR): each town's files go to DIR/<townId>/, rewritten on every
    sync-config: settings/config.json, <rigId>/settings/config.json and .env.gateway
    (KILO_JWT=<token>, mode 0600); on every refresh-token: .container-token (<token>, mode
    0600), gitconfig (git's credential helper for agent sessions) and bin/gh (the gh shim,
    mode 0755; agents find DIR/<townId>/bin first on their PATH). stop removes
    .env.gateway, .container-token and .git-tokens/. Created if missing.
  --worker-url (or GASTOWN_WORKER_URL): the worker's origin, http:// or https://. With it,
    every --gateway-refresh-ms (or GASTOWN_GATEWAY_REFRESH_MS; at least 100; default 12 h;
    TownContainerDO sets both variables when it starts a container) each town's gateway token is
    renewed from POST URL/api/towns/<townId>/sandbox-token with the town's container token.
    Agents call back URL unless their start names another.
  --agent-command (or GASTOWN_AGENT_COMMAND): what POST /agents/start runs, an executable
    path then arguments, split on whitespace (no shell). Default: gastown-demo-agent beside
    this executable. Each agent runs in DIR/<townId>/agents/<agentId>/ (emptied on each
    start) with an environment of PATH (DIR/<townId>/bin first), the start's env (never
    GH_TOKEN) and the GASTOWN_* variables the server sets (nothing else of the server's; for
    an org town GASTOWN_ORGANIZATION_ID and the org id in KILO_CONFIG_CONTENT), output
    appended to DIR/<townId>/agents/<agentId>.log; at most 32 at once. stop kills the town's
    agents.
  --agent-uid and --agent-gid (or GASTOWN_AGENT_UID and GASTOWN_AGENT_GID): numeric ids, both
    or neither, not 0. Agents then run as that uid and gid (no other group); the server must
    run as root. The agent's group passes through DIR (0710 when the server creates it; an
    existing DIR and every directory above it must let the agent pass, or the server refuses
    to start), DIR/<townId>/ and its agents/ and settings directories (group N, 0710) and
    reads .container-token, .env.gateway, gitconfig and the settings files (group N, 0640);
    the agent owns its work dir and DIR/<townId>/.git-tokens/ (0700); bin/ is the server's
    (group N, 0710) and bin/gh too (group N, 0750). Without them agents run as the server's
    user and nothing changes hands.
  --gh-path (or GASTOWN_GH_PATH): the real GitHub CLI each run of an agent's gh runs, with
    GH_TOKEN set for that run only: the town's GITHUB_CLI_PAT, else the rig's current token
    when it is a GitHub one, else none. Default: the first gh on the agent's PATH past
    DIR/<townId>/bin.
  --git-ca-file (or GASTOWN_GIT_CA_FILE): a PEM file of the certificates agents' git trusts
    over HTTPS (a self-hosted GitLab or GitHub Enterprise behind a private CA), written into
    each town's gitconfig as http.sslCAInfo. Default: the system's.
  --drain-grace-ms (or GASTOWN_DRAIN_GRACE_MS; at least 0; default 20000): on SIGTERM (the
    container's eviction) the server drains: POST /agents/start answers 503, every running
    agent's process group gets SIGTERM and this long to exit, then SIGKILL; then each rig
    agent started with a git_url and a branch has its uncommitted work committed ('WIP: saved
    when the container was evicted') and pushed to HEAD:refs/heads/<branch> by git run as the
    agent, with its env; each agent's end is reported to the worker (its exit callback, with
    what was saved), and the server exits 0, at most 20 s past the grace.
subcommands (no server credential needed; see `gastown-control git-credential --help`):
  gastown-control git-credential [--worker-url URL] [--town ID] [--rig ID] [--workdir DIR]
    <get|store|erase>     git's credential helper for the rig's repository
  gastown-control git-token [same options]     prints the rig's current git token
  gastown-control gh [same options] [--gh-path PATH] -- [GH ARGUMENTS]...
                          the GitHub CLI with GH_TOKEN for this one run (the gh shim)";

impl Options {
    /// Parses the arguments after the program name, with no fallback from the environment.
    ///
    /// # Errors
    /// A message naming the bad argument.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        Options::parse_with_env(args, |_| None)
    }

    /// Parses the arguments after the program name; `env` gives the value of a variable an
    /// option left unset falls back to ([`WORKDIR_ENV`], [`WORKER_URL_ENV`],
    /// [`AGENT_COMMAND_ENV`], [`AGENT_UID_ENV`], [`AGENT_GID_ENV`], [`GH_PATH_ENV`],
    /// [`GIT_CA_FILE_ENV`], [`DRAIN_GRACE_MS_ENV`]).
    ///
    /// # Errors
    /// A message naming the bad argument or variable.
    pub fn parse_with_env(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Options, String> {
        let mut opts = Options {
            host: "127.0.0.1".to_owned(),
            port: 8080,
            allowed_hosts: Vec::new(),
            read_timeout: DEFAULT_READ_TIMEOUT,
            workdir: PathBuf::new(),
            worker_url: None,
            gateway_refresh: DEFAULT_GATEWAY_REFRESH,
            agent_command: None,
            agent_user: None,
            gh_path: None,
            git_ca_file: None,
            drain_grace: DEFAULT_DRAIN_GRACE,
        };
        let mut workdir = None;
        let mut worker_url = None;
        let mut agent_command = None;
        let (mut agent_uid, mut agent_gid) = (None, None);
        let mut gateway_refresh = None;
        let mut gh_path = None;
        let mut git_ca_file = None;
        let mut drain_grace = None;
        let mut it = Args::new(args);
        while let Some(arg) = it.next() {
            match arg {
                "--host" => opts.host = it.value(arg)?,
                "--port" => opts.port = cli::port(&it.value(arg)?)?,
                "--allowed-host" => {
                    let name = it.value(arg)?.to_ascii_lowercase();
                    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') {
                        return Err(format!("--allowed-host {name:?} is not a host name"));
                    }
                    opts.allowed_hosts.push(name);
                }
                "--read-timeout-ms" => opts.read_timeout = cli::read_timeout(&it.value(arg)?)?,
                "--workdir" => workdir = Some(it.value(arg)?),
                "--worker-url" => worker_url = Some(it.value(arg)?),
                "--agent-command" => agent_command = Some(it.value(arg)?),
                "--agent-uid" => agent_uid = Some(it.value(arg)?),
                "--agent-gid" => agent_gid = Some(it.value(arg)?),
                "--gateway-refresh-ms" => gateway_refresh = Some(it.value(arg)?),
                "--gh-path" => gh_path = Some(it.value(arg)?),
                "--git-ca-file" => git_ca_file = Some(it.value(arg)?),
                "--drain-grace-ms" => drain_grace = Some(it.value(arg)?),
                "--debug" => {
                    return Err(
                        "--debug: this binary has no debug routes (they exist only in \
                                gastown-control-debug, for tests)"
                            .to_owned(),
                    )
                }
                other => return Err(cli::unknown(other)),
            }
        }
        if opts.allowed_hosts.is_empty() {
            opts.allowed_hosts = DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| (*h).to_owned())
                .collect();
        }
        let or_env = |flag, value, var| cli::or_env(flag, value, var, &env);
        opts.workdir = PathBuf::from(
            or_env("--workdir", workdir, WORKDIR_ENV)
                .map_or_else(|| DEFAULT_WORKDIR.to_owned(), |(_, dir)| dir),
        );
        if let Some((from, text)) = or_env(
            "--gateway-refresh-ms",
            gateway_refresh,
            GATEWAY_REFRESH_MS_ENV,
        ) {
            let ms: u64 = text
                .parse()
                .map_err(|_| format!("{from} needs milliseconds"))?;
            if ms < MIN_GATEWAY_REFRESH_MS {
                return Err(format!("{from} must be at least {MIN_GATEWAY_REFRESH_MS}"));
            }
            opts.gateway_refresh = Duration::from_millis(ms);
        }
        if let Some((from, text)) = or_env("--drain-grace-ms", drain_grace, DRAIN_GRACE_MS_ENV) {
            let ms: u64 = text
                .trim()
                .parse()
                .map_err(|_| format!("{from} needs milliseconds (0 or more)"))?;
            opts.drain_grace = Duration::from_millis(ms);
        }
        opts.worker_url = or_env("--worker-url", worker_url, WORKER_URL_ENV)
            .map(|(from, url)| client::origin(&url).map_err(|e| format!("{from} {e}")))
            .transpose()?;
        opts.agent_command = or_env("--agent-command", agent_command, AGENT_COMMAND_ENV)
            .map(|(from, text)| AgentCommand::parse(&text).map_err(|e| format!("{from}: {e}")))
            .transpose()?;
        let uid = or_env("--agent-uid", agent_uid, AGENT_UID_ENV);
        let gid = or_env("--agent-gid", agent_gid, AGENT_GID_ENV);
        opts.agent_user = AgentUser::from_values(
            uid.as_ref().map(|(from, text)| (*from, text.as_str())),
            gid.as_ref().map(|(from, text)| (*from, text.as_str())),
        )?;
        opts.gh_path = or_env("--gh-path", gh_path, GH_PATH_ENV).map(|(_, p)| PathBuf::from(p));
        opts.git_ca_file =
            or_env("--git-ca-file", git_ca_file, GIT_CA_FILE_ENV).map(|(_, p)| PathBuf::from(p));
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = Options::parse(&[]).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 8080));
        assert_eq!(o.allowed_hosts, DEFAULT_ALLOWED_HOSTS);
        let o = Options::parse(&args(&[
            "--allowed-host",
            "Example.internal",
            "--allowed-host",
            "x",
            "--read-timeout-ms",
            "300",
        ]))
        .unwrap();
        assert_eq!(o.allowed_hosts, ["example.internal", "x"]);
        assert_eq!(o.read_timeout, Duration::from_millis(300));
        assert!(Options::parse(&args(&["--debug"])).is_err());
        assert!(Options::parse(&args(&["--port"])).is_err());
        assert!(Options::parse(&args(&["--read-timeout-ms", "0"])).is_err());
        assert!(Options::parse(&args(&["--bogus"])).is_err());
    }

    #[test]
    fn workdir_and_self_refresh_options() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = Options::parse(&[]).unwrap();
        assert_eq!(o.workdir, PathBuf::from("gastown-work"));
        assert_eq!(o.worker_url, None);
        assert_eq!(o.gateway_refresh, Duration::from_millis(43_200_000));

        let o = Options::parse(&args(&[
            "--workdir",
            "/srv/towns",
            "--worker-url",
            "http://127.0.0.1:8787/",
            "--gateway-refresh-ms",
            "100",
        ]))
        .unwrap();
        assert_eq!(o.workdir, PathBuf::from("/srv/towns"));
        assert_eq!(o.worker_url.as_deref(), Some("http://127.0.0.1:8787"));
        assert_eq!(o.gateway_refresh, Duration::from_millis(100));
        let https = Options::parse(&args(&["--worker-url", "https://gastown.example"]));
        assert_eq!(
            https.unwrap().worker_url.as_deref(),
            Some("https://gastown.example")
        );
        for bad in [
            "ftp://x",
            "x.example",
            "http://",
            "https:///path",
            "http://a b",
            "http://a?q",
        ] {
            assert!(
                Options::parse(&args(&["--worker-url", bad])).is_err(),
                "{bad}"
            );
        }
        for bad in ["99", "0", "x", "-1"] {
            assert!(
                Options::parse(&args(&["--gateway-refresh-ms", bad])).is_err(),
                "{bad}"
            );
        }
        assert!(Options::parse(&args(&["--workdir"])).is_err());
    }

    #[test]
    fn workdir_and_worker_url_fall_back_to_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let env = |name: &str| match name {
            WORKDIR_ENV => Some("/from/env".to_owned()),
            WORKER_URL_ENV => Some("https://worker.example/".to_owned()),
            _ => None,
        };
        let o = Options::parse_with_env(&[], env).unwrap();
        assert_eq!(o.workdir, PathBuf::from("/from/env"));
        assert_eq!(o.worker_url.as_deref(), Some("https://worker.example"));
        // The command line wins.
        let o = Options::parse_with_env(
            &args(&["--workdir", "w", "--worker-url", "http://localhost:1"]),
            env,
        )
        .unwrap();
        assert_eq!(o.workdir, PathBuf::from("w"));
        assert_eq!(o.worker_url.as_deref(), Some("http://localhost:1"));
        // Empty counts as unset; a bad value names the variable.
        let empty = Options::parse_with_env(&[], |_| Some(String::new())).unwrap();
        assert_eq!(
            (empty.workdir, empty.worker_url),
            (PathBuf::from(DEFAULT_WORKDIR), None)
        );
        let bad = Options::parse_with_env(&[], |n| (n == WORKER_URL_ENV).then(|| "x".into()));
        assert!(bad.unwrap_err().contains(WORKER_URL_ENV));
    }

    #[test]
    fn the_agent_command_comes_from_the_option_or_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(Options::parse(&[]).unwrap().agent_command, None);
        let o = Options::parse(&args(&["--agent-command", "/bin/sh /x/a.sh"])).unwrap();
        assert_eq!(
            o.agent_command,
            Some(AgentCommand {
                program: "/bin/sh".into(),
                args: vec!["/x/a.sh".into()],
            })
        );
        let env = |name: &str| (name == AGENT_COMMAND_ENV).then(|| "/opt/agent".to_owned());
        let o = Options::parse_with_env(&[], env).unwrap();
        assert_eq!(
            o.agent_command.unwrap().program,
            PathBuf::from("/opt/agent")
        );
        let o = Options::parse_with_env(&args(&["--agent-command", "/a"]), env).unwrap();
        assert_eq!(o.agent_command.unwrap().program, PathBuf::from("/a"));
        assert!(Options::parse(&args(&["--agent-command"])).is_err());
        assert!(Options::parse(&args(&["--agent-command", " "])).is_err());
        // An empty value counts as unset.
        let empty = Options::parse(&args(&["--agent-command", ""])).unwrap();
        assert_eq!(empty.agent_command, None);
    }

    #[test]
    fn the_real_gh_comes_from_the_option_or_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(Options::parse(&[]).unwrap().gh_path, None);
        let env = |name: &str| (name == GH_PATH_ENV).then(|| "/env/gh".to_owned());
        let o = Options::parse_with_env(&[], env).unwrap();
        assert_eq!(o.gh_path, Some(PathBuf::from("/env/gh")));
        let o = Options::parse_with_env(&args(&["--gh-path", "/opt/gh"]), env).unwrap();
        assert_eq!(o.gh_path, Some(PathBuf::from("/opt/gh")));
        assert!(Options::parse(&args(&["--gh-path"])).is_err());
    }

    #[test]
    fn the_drain_grace_comes_from_the_option_or_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            Options::parse(&[]).unwrap().drain_grace,
            Duration::from_millis(20_000)
        );
        assert_eq!(DEFAULT_DRAIN_GRACE, Duration::from_secs(20));
        let o = Options::parse(&args(&["--drain-grace-ms", "500"])).unwrap();
        assert_eq!(o.drain_grace, Duration::from_millis(500));
        // 0 is the minimum: the agents are killed at once.
        let o = Options::parse(&args(&["--drain-grace-ms", "0"])).unwrap();
        assert_eq!(o.drain_grace, Duration::ZERO);
        let env = |name: &str| (name == DRAIN_GRACE_MS_ENV).then(|| "1500".to_owned());
        let o = Options::parse_with_env(&[], env).unwrap();
        assert_eq!(o.drain_grace, Duration::from_millis(1500));
        // The option wins over its variable; empty counts as unset.
        let o = Options::parse_with_env(&args(&["--drain-grace-ms", "7"]), env).unwrap();
        assert_eq!(o.drain_grace, Duration::from_millis(7));
        let o = Options::parse_with_env(&args(&["--drain-grace-ms", ""]), env).unwrap();
        assert_eq!(o.drain_grace, Duration::from_millis(1500));
        let empty = Options::parse_with_env(&[], |_| Some(String::new())).unwrap();
        assert_eq!(empty.drain_grace, DEFAULT_DRAIN_GRACE);
        for bad in ["-1", "x", "1.5", "20s", "18446744073709551616"] {
            let e = Options::parse(&args(&["--drain-grace-ms", bad])).unwrap_err();
            assert!(e.contains("--drain-grace-ms"), "{bad}: {e}");
        }
        assert!(Options::parse(&args(&["--drain-grace-ms"])).is_err());
        let bad = Options::parse_with_env(&[], |n| (n == DRAIN_GRACE_MS_ENV).then(|| "-5".into()));
        assert!(bad.unwrap_err().contains(DRAIN_GRACE_MS_ENV));
        assert!(USAGE.contains("--drain-grace-ms") && USAGE.contains(DRAIN_GRACE_MS_ENV));
    }

    #[test]
    fn the_agent_user_comes_in_pairs_from_options_or_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(Options::parse(&[]).unwrap().agent_user, None);
        let o = Options::parse(&args(&["--agent-uid", "10001", "--agent-gid", "10002"])).unwrap();
        assert_eq!(o.agent_user, Some(AgentUser::new(10001, 10002).unwrap()));
        let env = |name: &str| match name {
            AGENT_UID_ENV => Some("20001".to_owned()),
            AGENT_GID_ENV => Some("20002".to_owned()),
            _ => None,
        };
        let o = Options::parse_with_env(&[], env).unwrap();
        assert_eq!(o.agent_user, Some(AgentUser::new(20001, 20002).unwrap()));
        // An option wins over its own variable only.
        let o = Options::parse_with_env(&args(&["--agent-uid", "3"]), env).unwrap();
        assert_eq!(o.agent_user, Some(AgentUser::new(3, 20002).unwrap()));
        for bad in [
            &["--agent-uid", "10001"][..],
            &["--agent-gid", "10001"],
            &["--agent-uid", "0", "--agent-gid", "10001"],
            &["--agent-uid", "10001", "--agent-gid", "0"],
            &["--agent-uid", "agent", "--agent-gid", "10001"],
            &["--agent-uid", "-1", "--agent-gid", "10001"],
            &["--agent-uid"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
        }
        let half = Options::parse_with_env(&[], |n| (n == AGENT_UID_ENV).then(|| "5".into()));
        assert!(half.unwrap_err().contains(AGENT_UID_ENV));
        // Empty counts as unset.
        let empty = Options::parse_with_env(&[], |_| Some(String::new())).unwrap();
        assert_eq!(empty.agent_user, None);
    }
}

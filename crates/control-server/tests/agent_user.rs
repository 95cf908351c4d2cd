//! Agents as an unprivileged user: the debug server with `--agent-uid 65534 --agent-gid 65534`
//! (`nobody`) and a probe script as the agent command, which reports who it runs as and what
//! it can read and write; the modes and owners on disk; and, without the options, the old ones.
//! Changing uid needs root: the tests that do are skipped, with a note, when not run as root.

#![cfg(unix)]

mod common;

use common::*;
use gastown_control::agent_user::server_uid;
use gastown_core::control::{CONTAINER_TOKEN_FILE, GATEWAY_ENV_FILE, KEY_ENV};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TOWN: &str = "town-a";
const RIG: &str = "rig-1";
const AGENT: &str = "agent-1";
const NOBODY: u32 = 65534;
const WAIT: Duration = Duration::from_secs(20);

/// The agent: one `name=value` line per probe into `report.txt` in its work dir (`yes`/`no`
/// for what it could do), then a `git credential fill` through the town's gitconfig, whose
/// helper (run by git as this user) fetches a token and caches it in `.git-tokens/`.
const PROBE: &str = r#"town=$(dirname "$GASTOWN_CONTAINER_TOKEN_FILE")
can() { if "$@" >/dev/null 2>&1; then echo yes; else echo no; fi; }
{
echo "uid=$(id -u)"
echo "gid=$(id -g)"
echo "groups=$(id -G)"
echo "token=$(can cat "$GASTOWN_CONTAINER_TOKEN_FILE")"
echo "gateway=$(can cat "$GASTOWN_GATEWAY_ENV_FILE")"
echo "gitconfig=$(can cat "$GIT_CONFIG_GLOBAL")"
echo "settings=$(can cat "$town/settings/config.json")"
echo "rig_settings=$(can cat "$town/$GASTOWN_RIG_ID/settings/config.json")"
echo "cache_write=$(can sh -c 'echo x > "$1/.git-tokens/probe"' sh "$town")"
echo "work_write=$(can sh -c 'echo x > written.txt')"
echo "town_list=$(can ls "$town")"
echo "town_write=$(can touch "$town/intruder")"
echo "server_cmdline=$(can cat "/proc/$SERVER_PID/cmdline")"
echo "server_environ=$(can cat "/proc/$SERVER_PID/environ")"
printf 'protocol=https\nhost=github.com\npath=acme/app.git\n\n' \
  | GIT_TERMINAL_PROMPT=0 git credential fill > credential.txt 2> credential.err
echo "credential=$?"
} > report.txt
"#;

fn is_root() -> bool {
    if server_uid() == Some(0) {
        return true;
    }
    eprintln!("skipped: starting agents as another user needs root");
    false
}

/// A temporary directory `nobody` may pass through (mode 0711 whatever the umask), holding the
/// probe script (0644).
fn base() -> TempDir {
    let dir = TempDir(temp_dir("agent-user"));
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o711)).unwrap();
    let script = dir.0.join("probe.sh");
    std::fs::write(&script, PROBE).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    dir
}

fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn git_token_worker() -> FakeWorker {
    let expires_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let body = json!({ "token": "ghs_{n}.tok", "expires_at": expires_at, "source": "github_app" });
    FakeWorker::start(200, &body.to_string())
}

/// Gives the town a container token, a gateway token and settings for [`RIG`], then runs the
/// probe as [`AGENT`] to its end; the probe's report.
fn run_probe(s: &Server, work: &Path) -> BTreeMap<String, String> {
    assert_eq!(refresh(TOWN, "ctok-1").auth(TOWN).send(s).0, 200);
    let settings = json!({ "town": { "role_agents": {} }, "rigs": { RIG: { "role_agents": {} } } });
    let (code, body) = sync(s, TOWN, json!({ "KILO_JWT": "kilo.jwt-1" }), settings);
    assert_eq!(code, 200, "{body}");
    let start = json!({
        "townId": TOWN,
        "agent_id": AGENT,
        "role": "polecat",
        "name": "toast",
        "rig_id": RIG,
        "env": { "SERVER_PID": s.pid().to_string() },
    });
    let (code, body) = req("POST", "/agents/start").json(&start).auth(TOWN).send(s);
    assert_eq!(code, 200, "{body}");
    let status = || {
        req("GET", &format!("/agents/{AGENT}/status"))
            .auth(TOWN)
            .send(s)
            .1
    };
    assert!(eventually(WAIT, || status()["state"] == "exited"));
    assert_eq!(status()["exit_code"], 0, "{}", status());
    let report = std::fs::read_to_string(work.join("report.txt")).unwrap();
    report
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A debug server whose agent command is the probe, with `agent_args` (the agent user, or
/// none) and a fake worker that hands out git tokens; the probe run to its end.
struct Probed {
    /// Kept for its drop: the directory goes with the test.
    _base: TempDir,
    workdir: PathBuf,
    worker: FakeWorker,
    s: Server,
    town: PathBuf,
    work: PathBuf,
    report: BTreeMap<String, String>,
}

fn probed(agent_args: &[&str]) -> Probed {
    let base = base();
    let workdir = base.0.join("work");
    let worker = git_token_worker();
    let command = format!("/bin/sh {}", base.0.join("probe.sh").display());
    let url = worker.url();
    let mut args = vec!["--workdir", workdir.to_str().unwrap()];
    args.extend_from_slice(agent_args);
    args.extend_from_slice(&["--agent-command", &command, "--worker-url", &url]);
    let s = start(DEBUG_BIN, &[(KEY_ENV, KEY)], &args);
    let town = workdir.join(TOWN);
    let work = town.join("agents").join(AGENT);
    let report = run_probe(&s, &work);
    Probed {
        _base: base,
        workdir,
        worker,
        s,
        town,
        work,
        report,
    }
}

#[test]
fn an_agent_runs_as_the_agent_user_and_reaches_only_what_it_is_given() {
    if !is_root() {
        return;
    }
    let Probed {
        workdir,
        worker,
        s,
        town,
        work,
        report,
        _base,
    } = probed(&["--agent-uid", "65534", "--agent-gid", "65534"]);
    let get = |k: &str| report.get(k).map(String::as_str);

    // Who it is: nobody, with no other group.
    assert_eq!(get("uid"), Some("65534"), "{report:?}");
    assert_eq!(get("gid"), Some("65534"), "{report:?}");
    assert_eq!(get("groups"), Some("65534"), "{report:?}");
    // What it reads and writes.
    for (probe, expected) in [
        ("token", "yes"),
        ("gateway", "yes"),
        ("gitconfig", "yes"),
        ("settings", "yes"),
        ("rig_settings", "yes"),
        ("cache_write", "yes"),
        ("work_write", "yes"),
        ("town_list", "no"),
        ("town_write", "no"),
        ("server_cmdline", "yes"),
        ("server_environ", "no"),
        ("credential", "0"),
    ] {
        assert_eq!(get(probe), Some(expected), "{probe}: {report:?}");
    }
    // The server's environ is there (root reads it): the agent is refused, not misdirected.
    assert!(std::fs::read(format!("/proc/{}/environ", s.pid())).is_ok());

    // The credential helper, run by the agent's git as the agent, fetched a token with the
    // container token it read, handed it to git and cached it in the agent's directory.
    let credential = std::fs::read_to_string(work.join("credential.txt")).unwrap();
    assert!(credential.contains("password=ghs_1.tok"), "{credential}");
    // (The agent's exit report, whenever the server sees it, is kept apart: `exits()`.)
    let seen = worker.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].path.ends_with("/git-token"), "{seen:?}");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer ctok-1"));
    let cache = town.join(".git-tokens");
    assert_eq!(owner_mode(&cache), (NOBODY, NOBODY, 0o700));
    // The session's own entry: the helper names the agent, whose work may run as its own user.
    let entry = cache.join(format!("{RIG}@{AGENT}.json"));
    assert_eq!(owner_mode(&entry).0, NOBODY);
    assert_eq!(owner_mode(&entry).2, 0o600);
    assert_eq!(owner_mode(&cache.join("probe")).0, NOBODY);

    // The layout on disk.
    for dir in [
        &workdir,
        &town,
        &town.join("agents"),
        &town.join("settings"),
    ] {
        assert_eq!(owner_mode(dir), (0, NOBODY, 0o710), "{}", dir.display());
    }
    assert_eq!(owner_mode(&town.join(RIG)), (0, NOBODY, 0o710));
    assert_eq!(owner_mode(&work), (NOBODY, NOBODY, 0o700));
    assert_eq!(owner_mode(&work.join("written.txt")).0, NOBODY);
    for file in [
        CONTAINER_TOKEN_FILE,
        GATEWAY_ENV_FILE,
        "gitconfig",
        "settings/config.json",
        "rig-1/settings/config.json",
    ] {
        assert_eq!(owner_mode(&town.join(file)), (0, NOBODY, 0o640), "{file}");
    }
    let log = town.join("agents").join(format!("{AGENT}.log"));
    assert_eq!((owner_mode(&log).0, owner_mode(&log).2), (0, 0o600));
    assert!(!town.join("intruder").exists());

    // A refresh replaces the token file atomically, with the same mode and group.
    assert_eq!(refresh(TOWN, "ctok-2").auth(TOWN).send(&s).0, 200);
    assert_eq!(
        owner_mode(&town.join(CONTAINER_TOKEN_FILE)),
        (0, NOBODY, 0o640)
    );
    // /stop removes the agent's cache like any other credential.
    let stop = req("POST", "/stop")
        .json(&json!({ "townId": TOWN }))
        .auth(TOWN);
    assert_eq!(stop.send(&s).0, 200);
    assert!(!cache.exists());
}

#[test]
fn without_an_agent_user_agents_run_as_the_server_and_the_modes_are_unchanged() {
    if !is_root() {
        return;
    }
    let Probed {
        workdir,
        town,
        work,
        report,
        // Bound, not `..`: the server and the directory must live to the test's end.
        _base,
        worker: _worker,
        s: _s,
    } = probed(&[]);
    assert_eq!(
        report.get("uid").map(String::as_str),
        Some("0"),
        "{report:?}"
    );
    assert_eq!(report.get("credential").map(String::as_str), Some("0"));
    for file in [CONTAINER_TOKEN_FILE, GATEWAY_ENV_FILE] {
        assert_eq!(owner_mode(&town.join(file)), (0, 0, 0o600), "{file}");
    }
    // Nothing changed hands and no group was given.
    for path in [
        &workdir,
        &town,
        &town.join("agents"),
        &work,
        &town.join(".git-tokens"),
        &town.join("gitconfig"),
        &town.join("settings/config.json"),
    ] {
        let (uid, gid, _) = owner_mode(path);
        assert_eq!((uid, gid), (0, 0), "{}", path.display());
    }
    assert_eq!(owner_mode(&town.join(".git-tokens")).2, 0o700);
}

/// Runs a control server that should refuse to start; its exit code and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let mut child = command(DEBUG_BIN, &[(KEY_ENV, KEY)], args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the server started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_agent_user_or_an_unreachable_work_directory_refuses_the_start() {
    let base = base();
    let workdir = base.0.join("closed");
    std::fs::create_dir(&workdir).unwrap();
    let dir = workdir.to_str().unwrap();
    let (code, err) = refused(&["--workdir", dir, "--agent-uid", "65534"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--agent-gid"), "{err}");
    let (code, err) = refused(&["--workdir", dir, "--agent-uid", "0", "--agent-gid", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("root"), "{err}");
    if !is_root() {
        return;
    }
    std::fs::set_permissions(&workdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, err) = refused(&[
        "--workdir",
        dir,
        "--agent-uid",
        "65534",
        "--agent-gid",
        "65534",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot pass through") && err.contains(dir),
        "{err}"
    );
}

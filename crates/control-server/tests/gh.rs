//! The agents' `gh` (the town's `bin/gh` shim and `gastown-control gh`) with a fake `gh` that
//! writes down whether it got `GH_TOKEN` and which, against a fake worker answering the
//! git-token route as the test tells it: the town's PAT, the rig's fresh GitHub token (a new
//! one once the old nears expiry), none for a rig without credentials or with a GitLab token;
//! the shim as the agent user runs it; and an org town's id in a started agent's env and Kilo
//! config.

#![cfg(unix)]

mod common;

use common::*;
use gastown_core::control::{git_token_path, KEY_ENV};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const TOWN: &str = "town-a";
const RIG: &str = "rig-1";
const AGENT: &str = "agent-1";
const CONTAINER_TOKEN: &str = "ctok.secret-1";
const PAT: &str = "ghp_town_cli_pat_0123456789";
const WAIT: Duration = Duration::from_secs(20);

/// The fake GitHub CLI: what it was given, one `name=value` per line, into `$GH_REPORT`; exit
/// 7, so a test sees gh's own exit code come back through the shim.
const FAKE_GH: &str = r#"#!/bin/sh
{
if [ "${GH_TOKEN+set}" = set ]; then echo "present=yes"; echo "token=$GH_TOKEN"; else echo "present=no"; fi
echo "github_token=${GITHUB_TOKEN+set}"
echo "pat_env=${GITHUB_CLI_PAT+set}"
echo "args=$*"
} > "$GH_REPORT"
exit 7
"#;

/// The agent: runs `gh` once as an agent would (through its `PATH`), then writes down its
/// environment, gh's exit code and what it could do to the shim.
const AGENT_SCRIPT: &str = r#"town=$(dirname "$GASTOWN_CONTAINER_TOKEN_FILE")
GH_REPORT="$PWD/gh.txt" gh pr list --repo acme/app
echo "gh_exit=$?" > agent.txt
can() { if "$@" >/dev/null 2>&1; then echo yes; else echo no; fi; }
echo "shim_write=$(can sh -c ': >> "$1"' sh "$town/bin/gh")" >> agent.txt
echo "bin_write=$(can touch "$town/bin/intruder")" >> agent.txt
env > env.txt
"#;

/// A directory anyone may pass through (0711) holding the fake gh (`fake/gh`, 0755) and the
/// agent script (0644), so that the agent user can run both.
fn base() -> TempDir {
    let dir = TempDir(temp_dir("gh"));
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(&dir.0, 0o711).unwrap();
    std::fs::create_dir(dir.0.join("fake")).unwrap();
    mode(&dir.0.join("fake"), 0o755).unwrap();
    std::fs::write(dir.0.join("fake/gh"), FAKE_GH).unwrap();
    mode(&dir.0.join("fake/gh"), 0o755).unwrap();
    std::fs::write(dir.0.join("agent.sh"), AGENT_SCRIPT).unwrap();
    mode(&dir.0.join("agent.sh"), 0o644).unwrap();
    dir
}

fn token_body(token: &str, expires_at: i64, source: &str, host: Option<&str>) -> String {
    let mut body = json!({ "token": token, "expires_at": expires_at, "source": source });
    if let Some(host) = host {
        body["host"] = json!(host);
    }
    body.to_string()
}

/// A fake worker handing out GitHub App tokens `ghs_<n>.tok` that expire at `expires_at`.
fn github_worker(expires_at: i64) -> FakeWorker {
    FakeWorker::start(
        200,
        &token_body("ghs_{n}.tok", expires_at, "github_app", Some("github.com")),
    )
}

/// The debug server (in a work directory of its own) with the agent script as its agent
/// command, the fake worker, and `extra` options; the town started (its container token
/// given, so its shim is written).
fn server(base: &TempDir, worker: &FakeWorker, extra: &[&str]) -> Server {
    let command = format!("/bin/sh {}", base.0.join("agent.sh").display());
    let url = worker.url();
    let mut args = vec![
        "--read-timeout-ms",
        "1500",
        "--agent-command",
        &command,
        "--worker-url",
        &url,
    ];
    args.extend_from_slice(extra);
    let s = start(DEBUG_BIN, &[(KEY_ENV, KEY)], &args);
    assert_eq!(refresh(TOWN, CONTAINER_TOKEN).auth(TOWN).send(&s).0, 200);
    s
}

/// Starts [`AGENT`] on [`RIG`] with `env` (and `organization_id` when given), waits for its
/// end; its work dir.
fn run_agent(s: &Server, env: Value, organization_id: Option<&str>) -> PathBuf {
    let mut body = json!({
        "townId": TOWN,
        "agent_id": AGENT,
        "role": "polecat",
        "name": "toast",
        "rig_id": RIG,
        "env": env,
    });
    if let Some(org) = organization_id {
        body["organization_id"] = json!(org);
    }
    let (code, answer) = start_agent(s, TOWN, &body);
    assert_eq!(code, 200, "{answer}");
    assert!(eventually(WAIT, || exited(s, TOWN, AGENT)));
    assert_eq!(status(s, TOWN, AGENT).1["exit_code"], 0);
    s.canonical_town_dir(TOWN).join("agents").join(AGENT)
}

/// The shim as an agent session runs it: `PATH` of the shim's directory then `path_rest`,
/// `GASTOWN_RIG_ID` (when given), a stale `GH_TOKEN` and `GITHUB_TOKEN`, and `env`.
fn run_shim(s: &Server, rig: Option<&str>, path_rest: &str, env: &[(&str, &str)]) -> Output {
    let bin = s.canonical_town_dir(TOWN).join("bin");
    let mut cmd = Command::new(bin.join("gh"));
    cmd.args(["pr", "view", "7"])
        .env_clear()
        .env("PATH", format!("{}:{path_rest}", bin.display()))
        .env("GH_TOKEN", "ghs_stale")
        .env("GITHUB_TOKEN", "ghs_stale")
        .envs(env.iter().copied());
    if let Some(rig) = rig {
        cmd.env("GASTOWN_RIG_ID", rig);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// What the fake gh wrote down for the last run, removed so that the next run writes anew.
fn gh_report(report: &Path) -> BTreeMap<String, String> {
    let pairs = read_pairs(report);
    std::fs::remove_file(report).unwrap();
    pairs
}

/// The worker's git-token calls (an agent's exit is reported to the worker too, whenever the
/// control server sees it).
fn git_token_calls(worker: &FakeWorker) -> usize {
    worker
        .seen()
        .iter()
        .filter(|c| c.path == git_token_path(TOWN, RIG))
        .count()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The token the fake gh got, `None` when `GH_TOKEN` was absent; asserts gh's exit came back
/// and no other token variable reached it.
fn token_given(out: &Output, report: &Path) -> Option<String> {
    assert_eq!(out.status.code(), Some(7), "gh's own exit: {out:?}");
    let pairs = gh_report(report);
    assert_eq!(pairs["args"], "pr view 7");
    assert_eq!(pairs["github_token"], "", "GITHUB_TOKEN never reaches gh");
    assert_eq!(pairs["pat_env"], "", "nor GITHUB_CLI_PAT");
    match pairs["present"].as_str() {
        "yes" => Some(pairs["token"].clone()),
        _ => {
            assert!(!pairs.contains_key("token"));
            None
        }
    }
}

#[test]
fn an_agents_gh_gets_the_towns_pat_when_it_has_one() {
    let base = base();
    let worker = github_worker(now() + 3600);
    let s = server(&base, &worker, &[]);
    let fake = base.0.join("fake");
    let env = json!({ "GITHUB_CLI_PAT": PAT, "PATH": format!("{}:/usr/bin:/bin", fake.display()) });
    let work = run_agent(&s, env, None);

    let gh = read_pairs(&work.join("gh.txt"));
    assert_eq!(
        (gh["present"].as_str(), gh["token"].as_str()),
        ("yes", PAT),
        "{gh:?}"
    );
    assert_eq!(gh["args"], "pr list --repo acme/app");
    assert_eq!(gh["pat_env"], "");
    assert_eq!(read_pairs(&work.join("agent.txt"))["gh_exit"], "7");
    assert_eq!(git_token_calls(&worker), 0, "the PAT needs no worker");
    // The agent itself holds no GH_TOKEN; its PATH finds the shim first.
    let env = read_pairs(&work.join("env.txt"));
    assert!(!env.contains_key("GH_TOKEN"), "{env:?}");
    let bin = s.canonical_town_dir(TOWN).join("bin");
    assert_eq!(
        env["PATH"],
        format!("{}:{}:/usr/bin:/bin", bin.display(), fake.display())
    );

    // Run as the agent runs it: the PAT wins over the rig's token, whatever the worker says.
    let report = base.0.join("report.txt");
    let report_env = report.to_str().unwrap();
    let out = run_shim(
        &s,
        Some(RIG),
        fake.to_str().unwrap(),
        &[("GITHUB_CLI_PAT", PAT), ("GH_REPORT", report_env)],
    );
    assert_eq!(token_given(&out, &report).as_deref(), Some(PAT));
    assert_eq!(git_token_calls(&worker), 0);
    assert_eq!(stderr(&out), "");
}

#[test]
fn without_a_pat_gh_gets_the_rigs_fresh_github_token() {
    let base = base();
    // Tokens that live two minutes: always inside the five-minute margin.
    let worker = github_worker(now() + 120);
    let s = server(&base, &worker, &[]);
    let fake = base.0.join("fake");
    let env = json!({ "PATH": format!("{}:/usr/bin:/bin", fake.display()) });
    let work = run_agent(&s, env, None);
    let gh = read_pairs(&work.join("gh.txt"));
    assert_eq!(
        (gh["present"].as_str(), gh["token"].as_str()),
        ("yes", "ghs_1.tok"),
        "{gh:?}"
    );
    // (The agent's exit report, whenever the server sees it, is kept apart: `exits()`.)
    let seen = worker.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", git_token_path(TOWN, RIG).as_str())
    );
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {CONTAINER_TOKEN}").as_str())
    );

    // A token near its expiry is never handed to gh again: every run gets a new one.
    let report = base.0.join("report.txt");
    let report_env = [("GH_REPORT", report.to_str().unwrap())];
    let fake_path = fake.to_str().unwrap();
    let out = run_shim(&s, Some(RIG), fake_path, &report_env);
    assert_eq!(token_given(&out, &report).as_deref(), Some("ghs_2.tok"));
    assert_eq!(stderr(&out), "");
    // A long-lived one is reused from the cache git's helper shares.
    worker.answer(
        200,
        &token_body(
            "ghs_{n}.tok",
            now() + 3600,
            "github_app",
            Some("github.com"),
        ),
    );
    let out = run_shim(&s, Some(RIG), fake_path, &report_env);
    assert_eq!(token_given(&out, &report).as_deref(), Some("ghs_3.tok"));
    let out = run_shim(&s, Some(RIG), fake_path, &report_env);
    assert_eq!(token_given(&out, &report).as_deref(), Some("ghs_3.tok"));
    assert_eq!(git_token_calls(&worker), 3);
    let cache = s
        .town_dir(TOWN)
        .join(".git-tokens")
        .join(format!("{RIG}.json"));
    assert_eq!(read_json(&cache)["token"], "ghs_3.tok");
    assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o600);
    let helper = Command::new(DEBUG_BIN)
        .args(["git-token", "--town", TOWN, "--rig", RIG, "--workdir"])
        .arg(&s.workdir)
        .env_remove(KEY_ENV)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&helper.stdout), "ghs_3.tok\n");
    assert_eq!(git_token_calls(&worker), 3);
    // The token is never printed by the shim.
    assert!(!stderr(&out).contains("ghs_") && out.stdout.is_empty());
}

#[test]
fn gh_gets_no_token_without_github_credentials() {
    let base = base();
    let worker = FakeWorker::start(
        404,
        r#"{"error":{"code":"no_git_credentials","message":"no credentials"}}"#,
    );
    let s = server(&base, &worker, &[]);
    let report = base.0.join("report.txt");
    let report_env = [("GH_REPORT", report.to_str().unwrap())];
    let fake = base.0.join("fake");
    let run = |rig| run_shim(&s, rig, fake.to_str().unwrap(), &report_env);

    // A rig without credentials: absent, and nothing said.
    let out = run(Some(RIG));
    assert_eq!(token_given(&out, &report), None);
    assert_eq!(stderr(&out), "", "a rig without credentials is normal");
    assert_eq!(git_token_calls(&worker), 1);

    // A GitLab token, or the town's token for another host than github.com: not gh's.
    for (source, host) in [
        ("gitlab_oauth", Some("gitlab.com")),
        ("town_config", Some("git.example.org")),
    ] {
        let cache = s
            .town_dir(TOWN)
            .join(".git-tokens")
            .join(format!("{RIG}.json"));
        let _ = std::fs::remove_file(&cache);
        worker.answer(200, &token_body("glo_{n}", now() + 3600, source, host));
        let out = run(Some(RIG));
        assert_eq!(token_given(&out, &report), None, "{source}");
        assert_eq!(stderr(&out), "");
    }
    // The town's own token for a github.com repository is a GitHub token.
    let cache = s
        .town_dir(TOWN)
        .join(".git-tokens")
        .join(format!("{RIG}.json"));
    std::fs::remove_file(&cache).unwrap();
    worker.answer(
        200,
        &token_body(
            "ghp_town_{n}",
            now() + 3600,
            "town_config",
            Some("github.com"),
        ),
    );
    let out = run(Some(RIG));
    assert_eq!(token_given(&out, &report).as_deref(), Some("ghp_town_4"));

    // Another failure: absent too, with one line that names it and no token.
    std::fs::remove_file(&cache).unwrap();
    worker.answer(
        409,
        r#"{"error":{"code":"integration_suspended","message":"x"}}"#,
    );
    let out = run(Some(RIG));
    assert_eq!(token_given(&out, &report), None);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("409") && !err.contains(CONTAINER_TOKEN),
        "{err}"
    );

    // No rig (the mayor): no worker call at all.
    let calls = git_token_calls(&worker);
    let out = run(None);
    assert_eq!(token_given(&out, &report), None);
    assert_eq!(git_token_calls(&worker), calls);
    assert_eq!(stderr(&out), "");
}

#[test]
fn without_a_real_gh_the_shim_says_so_in_one_line_and_gh_path_names_one() {
    let base = base();
    let worker = github_worker(now() + 3600);
    let s = server(&base, &worker, &[]);
    let empty = base.0.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run_shim(&s, Some(RIG), empty.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no gh to run"), "{err}");
    assert!(!err.contains("ghs_"), "{err}");

    // The server's --gh-path is baked into the shim: no gh on PATH is needed.
    let fake_gh = base.0.join("fake/gh");
    let named = server(&base, &worker, &["--gh-path", fake_gh.to_str().unwrap()]);
    let shim = std::fs::read_to_string(named.town_dir(TOWN).join("bin/gh")).unwrap();
    assert!(shim.starts_with("#!/bin/sh\n"), "{shim}");
    assert!(
        shim.contains(&format!("'--gh-path' '{}' '--' \"$@\"", fake_gh.display())),
        "{shim}"
    );
    assert!(!shim.contains("ghs_") && !shim.contains(CONTAINER_TOKEN));
    let report = base.0.join("report.txt");
    let out = run_shim(
        &named,
        Some(RIG),
        empty.to_str().unwrap(),
        &[("GH_REPORT", report.to_str().unwrap())],
    );
    assert!(token_given(&out, &report).is_some_and(|t| t.starts_with("ghs_")));
}

#[test]
fn the_agent_user_runs_the_shim_and_cannot_change_it() {
    if gastown_control::agent_user::server_uid() != Some(0) {
        eprintln!("skipped: starting agents as another user needs root");
        return;
    }
    let base = base();
    let worker = github_worker(now() + 3600);
    let s = server(
        &base,
        &worker,
        &["--agent-uid", "65534", "--agent-gid", "65534"],
    );
    let town = s.canonical_town_dir(TOWN);
    let owner_mode = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner_mode(&town.join("bin")), (0, 65534, 0o710));
    assert_eq!(owner_mode(&town.join("bin/gh")), (0, 65534, 0o750));
    let fake = base.0.join("fake");
    let env = json!({ "PATH": format!("{}:/usr/bin:/bin", fake.display()) });
    let work = run_agent(&s, env, None);
    let gh = read_pairs(&work.join("gh.txt"));
    assert_eq!(
        (gh["present"].as_str(), gh["token"].as_str()),
        ("yes", "ghs_1.tok"),
        "{gh:?}"
    );
    let agent = read_pairs(&work.join("agent.txt"));
    assert_eq!(agent["gh_exit"], "7");
    assert_eq!(agent["shim_write"], "no", "{agent:?}");
    assert_eq!(agent["bin_write"], "no", "{agent:?}");
    // The cache was written by the agent, in its own directory, under its session's name.
    let cache = town.join(".git-tokens").join(format!("{RIG}@{AGENT}.json"));
    assert_eq!(owner_mode(&cache), (65534, 65534, 0o600));
    // A shim opened up meanwhile is closed again on the next refresh.
    std::fs::set_permissions(town.join("bin/gh"), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(refresh(TOWN, "ctok.secret-2").auth(TOWN).send(&s).0, 200);
    assert_eq!(owner_mode(&town.join("bin/gh")), (0, 65534, 0o750));
}

#[test]
fn an_org_towns_agent_gets_the_org_in_its_env_and_kilo_config() {
    let base = base();
    let worker = github_worker(now() + 3600);
    let s = server(&base, &worker, &[]);
    let env = json!({ "PATH": "/usr/bin:/bin" });
    let work = run_agent(&s, env.clone(), Some("org-42"));
    let seen = read_pairs(&work.join("env.txt"));
    assert_eq!(seen["GASTOWN_ORGANIZATION_ID"], "org-42");
    let kilo: Value = serde_json::from_str(&seen["KILO_CONFIG_CONTENT"]).unwrap();
    assert_eq!(
        kilo,
        json!({ "provider": { "kilo": { "options": { "kilocodeOrganizationId": "org-42" } } } })
    );

    // Merged into the config the start's env carries.
    let mut with_config = env.clone();
    with_config["KILO_CONFIG_CONTENT"] = json!(r#"{"model":"kilo/auto"}"#);
    let work = run_agent(&s, with_config, Some("org-42"));
    let seen = read_pairs(&work.join("env.txt"));
    let kilo: Value = serde_json::from_str(&seen["KILO_CONFIG_CONTENT"]).unwrap();
    assert_eq!(
        kilo,
        json!({ "model": "kilo/auto", "provider": { "kilo": { "options": { "kilocodeOrganizationId": "org-42" } } } })
    );

    // A personal town's agent: neither.
    let work = run_agent(&s, env.clone(), None);
    let seen = read_pairs(&work.join("env.txt"));
    assert!(!seen.contains_key("GASTOWN_ORGANIZATION_ID"));
    assert!(!seen.contains_key("KILO_CONFIG_CONTENT"));

    // A config that cannot hold the org id refuses the start, naming no value.
    let mut bad = env;
    bad["KILO_CONFIG_CONTENT"] = json!("[\"not-an-object\"]");
    let body = json!({
        "townId": TOWN, "agent_id": "agent-2", "role": "polecat", "name": "x",
        "rig_id": RIG, "organization_id": "org-42", "env": bad,
    });
    let (code, answer) = start_agent(&s, TOWN, &body);
    assert_eq!(code, 400, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("KILO_CONFIG_CONTENT"));
    assert!(!answer.to_string().contains("not-an-object"));
    assert_eq!(status(&s, TOWN, "agent-2").0, 404, "nothing started");
}

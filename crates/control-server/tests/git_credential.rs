//! The git credential helper (`gastown-control git-credential`, `git-token`) against a fake
//! worker that answers the git-token route as the test tells it and records what it was sent;
//! the files the server keeps for it (`.container-token`, `gitconfig`); and a real `git` run
//! through the generated gitconfig.

mod common;

use common::*;
use gastown_control::workdir::{gitconfig_text, GITCONFIG_FILE, GIT_TOKENS_DIR, WORKDIR_ENV};
use gastown_core::control::{
    git_token_path, CONTAINER_TOKEN_FILE, GATEWAY_ENV_FILE, KEY_ENV, SECRET_ENV, TOWN_ID_ENV,
    WORKER_URL_ENV,
};
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const RIG_ID_ENV: &str = "GASTOWN_RIG_ID";
const TOWN: &str = "town-a";
const RIG: &str = "rig-1";
const CONTAINER_TOKEN: &str = "ctok.secret-1";
/// What git writes to the helper for a push to a GitHub repository.
const GIT_REQUEST: &str = "protocol=https\nhost=github.com\npath=acme/app.git\n\n";

/// What the fake worker saw of one request.
/// A fake worker answering every request with a GitHub App token expiring at `expires_at`.
fn github_worker(expires_at: i64) -> FakeWorker {
    FakeWorker::start(200, &token_body("ghs_{n}.tok", expires_at, "github_app"))
}

fn token_body(token: &str, expires_at: i64, source: &str) -> String {
    json!({ "token": token, "expires_at": expires_at, "source": source }).to_string()
}

/// Reads one request (head, then `content-length` bytes), records it, answers, closes.
/// A work directory holding `town`'s container token, as the server leaves it.
fn workdir_with_token(town: &str) -> PathBuf {
    let workdir = temp_dir("helper");
    std::fs::create_dir_all(workdir.join(town)).unwrap();
    std::fs::write(
        workdir.join(town).join(CONTAINER_TOKEN_FILE),
        format!("{CONTAINER_TOKEN}\n"),
    )
    .unwrap();
    workdir
}

/// `bin <args>` with `input` on stdin, the helper's variables set from `env` and every other
/// variable of this crate's removed (the server's credential above all).
fn run_bin(bin: &str, args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for name in [
        KEY_ENV,
        SECRET_ENV,
        TOWN_ID_ENV,
        WORKDIR_ENV,
        WORKER_URL_ENV,
        RIG_ID_ENV,
    ] {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A helper that refuses its arguments exits without reading: a broken pipe is its answer.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

/// The helper's environment for `rig` of [`TOWN`].
fn helper_env<'a>(worker: &'a str, workdir: &'a Path, rig: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (WORKER_URL_ENV, worker),
        (TOWN_ID_ENV, TOWN),
        (RIG_ID_ENV, rig),
        (WORKDIR_ENV, workdir.to_str().unwrap()),
    ]
}

/// `gastown-control-debug git-credential <action>` with git's request for a GitHub push.
fn credential(action: &str, worker: &str, workdir: &Path, rig: &str, input: &str) -> Output {
    run_bin(
        DEBUG_BIN,
        &["git-credential", action],
        &helper_env(worker, workdir, rig),
        input,
    )
}

fn get(worker: &FakeWorker, workdir: &Path) -> Output {
    credential("get", &worker.url(), workdir, RIG, GIT_REQUEST)
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Asserts a successful `get` and returns its password.
fn password(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix("password="))
        .unwrap_or_else(|| panic!("no password in {out:?}"))
        .to_owned()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn cache_path(workdir: &Path, town: &str, rig: &str) -> PathBuf {
    workdir
        .join(town)
        .join(GIT_TOKENS_DIR)
        .join(format!("{rig}.json"))
}

#[test]
fn get_fetches_with_the_container_token_then_reuses_the_cached_token() {
    let expires_at = now() + 3600;
    let worker = github_worker(expires_at);
    let workdir = workdir_with_token(TOWN);

    let out = get(&worker, &workdir);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        format!("username=x-access-token\npassword=ghs_1.tok\npassword_expiry_utc={expires_at}\n")
    );
    let seen = worker.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, git_token_path(TOWN, RIG));
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {CONTAINER_TOKEN}").as_str())
    );

    // The cache: the worker's answer, private.
    let cache = cache_path(&workdir, TOWN, RIG);
    assert_eq!(
        read_json(&cache),
        json!({ "token": "ghs_1.tok", "expires_at": expires_at, "source": "github_app" })
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&cache), 0o600);
        assert_eq!(mode(cache.parent().unwrap()), 0o700);
    }

    // Within the token's life: no call, same token.
    for _ in 0..3 {
        assert_eq!(password(&get(&worker, &workdir)), "ghs_1.tok");
    }
    assert_eq!(worker.calls(), 1);

    // Another rig has its own cache entry, and a GitLab token its own username.
    worker.answer(200, &token_body("glo_{n}", expires_at, "gitlab_oauth"));
    let out = credential("get", &worker.url(), &workdir, "rig-2", GIT_REQUEST);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        format!("username=oauth2\npassword=glo_2\npassword_expiry_utc={expires_at}\n")
    );
    assert_eq!(worker.seen()[1].path, git_token_path(TOWN, "rig-2"));
    assert_eq!(password(&get(&worker, &workdir)), "ghs_1.tok");
    assert_eq!(worker.calls(), 2);
    std::fs::remove_dir_all(&workdir).unwrap();
}

#[test]
fn a_token_within_five_minutes_of_expiry_is_never_handed_out_again() {
    // The long session: whatever the worker hands out near its expiry is used once, and every
    // later operation gets a fresh one.
    let worker = github_worker(now() + 120);
    let workdir = workdir_with_token(TOWN);
    for n in 1..=3 {
        assert_eq!(password(&get(&worker, &workdir)), format!("ghs_{n}.tok"));
        assert_eq!(worker.calls(), n);
    }

    // The margin, from a cache written by hand: 400 s left is reused, 200 s left is not.
    let cache = cache_path(&workdir, TOWN, RIG);
    let cached = |expires_at: i64| {
        std::fs::write(
            &cache,
            token_body("ghs_cached", expires_at, "github_app").as_bytes(),
        )
        .unwrap();
    };
    cached(now() + 400);
    assert_eq!(password(&get(&worker, &workdir)), "ghs_cached");
    assert_eq!(worker.calls(), 3);
    cached(now() + 200);
    assert_eq!(password(&get(&worker, &workdir)), "ghs_4.tok");
    cached(now() - 10);
    assert_eq!(password(&get(&worker, &workdir)), "ghs_5.tok");
    // A cache that is not one is as good as none.
    std::fs::write(&cache, b"{not json").unwrap();
    assert_eq!(password(&get(&worker, &workdir)), "ghs_6.tok");
    std::fs::write(&cache, token_body("a\nb", now() + 3600, "github_app")).unwrap();
    assert_eq!(password(&get(&worker, &workdir)), "ghs_7.tok");
    std::fs::remove_dir_all(&workdir).unwrap();
}

#[test]
fn erase_makes_the_next_get_fetch_again() {
    let worker = github_worker(now() + 3600);
    let workdir = workdir_with_token(TOWN);
    assert_eq!(password(&get(&worker, &workdir)), "ghs_1.tok");

    // git erases what the remote refused; a token it does not name stays cached.
    let refused = |token: &str| {
        format!(
            "{}username=x-access-token\npassword={token}\n\n",
            &GIT_REQUEST[..GIT_REQUEST.len() - 1]
        )
    };
    let out = credential("erase", &worker.url(), &workdir, RIG, &refused("ghs_other"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "");
    assert_eq!(password(&get(&worker, &workdir)), "ghs_1.tok");
    assert_eq!(worker.calls(), 1);

    let out = credential("erase", &worker.url(), &workdir, RIG, &refused("ghs_1.tok"));
    assert!(out.status.success(), "{out:?}");
    assert!(!cache_path(&workdir, TOWN, RIG).exists());
    assert_eq!(password(&get(&worker, &workdir)), "ghs_2.tok");
    assert_eq!(worker.calls(), 2);

    // `store` keeps nothing and changes nothing.
    let out = credential("store", &worker.url(), &workdir, RIG, &refused("ghs_x"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(password(&get(&worker, &workdir)), "ghs_2.tok");
    // Erasing with nothing cached is fine.
    std::fs::remove_file(cache_path(&workdir, TOWN, RIG)).unwrap();
    let out = credential("erase", &worker.url(), &workdir, RIG, GIT_REQUEST);
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_dir_all(&workdir).unwrap();
}

#[test]
fn failures_print_nothing_on_stdout_and_never_a_token() {
    let worker = FakeWorker::start(409, r#"{"error":"no git integration"}"#);
    let workdir = workdir_with_token(TOWN);
    let check = |out: &Output, names: &str| {
        assert!(!out.status.success(), "{out:?}");
        assert_eq!(stdout(out), "", "{out:?}");
        let err = stderr(out);
        assert!(err.contains(names), "{err:?} should name {names:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        assert!(!err.contains(CONTAINER_TOKEN), "{err:?}");
        assert!(!err.contains("ghs_"), "{err:?}");
    };
    check(&get(&worker, &workdir), "409");
    worker.answer(401, r#"{"error":"bad token"}"#);
    check(&get(&worker, &workdir), "401");
    // A 200 that is not a token usable in git's protocol.
    worker.answer(
        200,
        &token_body("ghs_1\npassword=x", now() + 3600, "github_app"),
    );
    check(&get(&worker, &workdir), "not a git token");
    worker.answer(200, r#"{"token":"ghs_1"}"#);
    check(&get(&worker, &workdir), "not a git token");
    assert_eq!(worker.calls(), 4);
    assert!(!cache_path(&workdir, TOWN, RIG).exists());

    // The worker unreachable: a port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = credential(
        "get",
        &format!("http://127.0.0.1:{port}"),
        &workdir,
        RIG,
        GIT_REQUEST,
    );
    check(&out, "worker not reached");

    // git-token fails the same way.
    worker.answer(409, "{}");
    let out = run_bin(
        DEBUG_BIN,
        &["git-token"],
        &helper_env(&worker.url(), &workdir, RIG),
        "",
    );
    check(&out, "409");

    // No container token: the worker is not even asked.
    worker.answer(200, &token_body("ghs_{n}", now() + 3600, "github_app"));
    let empty = temp_dir("no-token");
    let calls = worker.calls();
    check(&get(&worker, &empty), "no container token");
    assert_eq!(worker.calls(), calls);

    // Ids that could name another file are refused before any path is built.
    for (town, rig) in [("..", RIG), (TOWN, "../x"), (TOWN, "a.b"), (TOWN, "")] {
        let url = worker.url();
        let w = workdir.to_str().unwrap();
        let env = [
            (WORKER_URL_ENV, url.as_str()),
            (TOWN_ID_ENV, town),
            (RIG_ID_ENV, rig),
            (WORKDIR_ENV, w),
        ];
        let out = run_bin(DEBUG_BIN, &["git-credential", "get"], &env, GIT_REQUEST);
        assert_eq!(out.status.code(), Some(2), "{town:?} {rig:?}: {out:?}");
        assert_eq!(stdout(&out), "");
    }
    assert_eq!(worker.calls(), calls);

    // A token never travels over plain HTTP: not our request, nothing said, no call.
    let out = credential(
        "get",
        &worker.url(),
        &workdir,
        RIG,
        "protocol=http\nhost=example.com\n\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "");
    assert_eq!(worker.calls(), calls);

    // An unknown action is a usage error.
    let out = credential("fill", &worker.url(), &workdir, RIG, GIT_REQUEST);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("usage:"));
    std::fs::remove_dir_all(&workdir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn git_token_prints_the_token_alone_and_shares_the_cache() {
    let worker = github_worker(now() + 3600);
    let workdir = workdir_with_token(TOWN);
    let url = worker.url();
    let env = helper_env(&url, &workdir, RIG);
    let out = run_bin(DEBUG_BIN, &["git-token"], &env, "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "ghs_1.tok\n");
    assert_eq!(password(&get(&worker, &workdir)), "ghs_1.tok");
    // The production binary is the same helper, flags standing in for the variables.
    let out = run_bin(
        PROD_BIN,
        &[
            "git-token",
            "--worker-url",
            &url,
            "--town",
            TOWN,
            "--rig",
            RIG,
            "--workdir",
            workdir.to_str().unwrap(),
        ],
        &[],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "ghs_1.tok\n");
    assert_eq!(worker.calls(), 1);
    std::fs::remove_dir_all(&workdir).unwrap();
}

#[test]
fn the_helper_neither_needs_nor_takes_the_server_credential() {
    let worker = github_worker(now() + 3600);
    let workdir = workdir_with_token(TOWN);
    // With a production credential in its environment it is still only the helper (a server
    // would print its listening line, or refuse the half credential).
    let url = worker.url();
    let mut env = helper_env(&url, &workdir, RIG);
    env.push((SECRET_ENV, "x"));
    for bin in [DEBUG_BIN, PROD_BIN] {
        let out = run_bin(bin, &["git-credential", "get"], &env, GIT_REQUEST);
        assert_eq!(password(&out), "ghs_1.tok", "{bin}");
    }
    std::fs::remove_dir_all(&workdir).unwrap();
}

#[test]
fn the_server_keeps_the_container_token_and_gitconfig_and_stop_removes_the_credentials() {
    let worker = github_worker(now() + 3600);
    let s = start(
        DEBUG_BIN,
        &[(KEY_ENV, KEY)],
        &["--worker-url", &worker.url()],
    );
    let dir = s.town_dir(TOWN);
    assert_eq!(refresh(TOWN, CONTAINER_TOKEN).auth(TOWN).send(&s).0, 200);
    let token_file = dir.join(CONTAINER_TOKEN_FILE);
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        format!("{CONTAINER_TOKEN}\n")
    );
    #[cfg(unix)]
    assert_eq!(mode(&token_file), 0o600);

    // The gitconfig names this binary's helper, with the town's directory and worker, and
    // holds no token.
    let gitconfig = std::fs::read_to_string(dir.join(GITCONFIG_FILE)).unwrap();
    let exe = std::fs::canonicalize(DEBUG_BIN).unwrap();
    let workdir = std::fs::canonicalize(&s.workdir).unwrap();
    assert!(gitconfig.contains("[credential]"), "{gitconfig}");
    assert!(gitconfig.contains("useHttpPath = true"), "{gitconfig}");
    for word in [
        format!("\"!'{}' 'git-credential'", exe.display()),
        format!("'--workdir' '{}'", workdir.display()),
        format!("'--town' '{TOWN}'"),
        format!("'--worker-url' '{}'\"", worker.url()),
    ] {
        assert!(gitconfig.contains(&word), "{word} not in {gitconfig}");
    }
    assert!(!gitconfig.contains(CONTAINER_TOKEN));

    // A new container token replaces the file; one a file or a header cannot carry is refused.
    assert_eq!(refresh(TOWN, "ctok.secret-2").auth(TOWN).send(&s).0, 200);
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        "ctok.secret-2\n"
    );
    for bad in ["a\nb", "a b", "$(id)"] {
        assert_eq!(refresh(TOWN, bad).auth(TOWN).send(&s).0, 400, "{bad:?}");
    }
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        "ctok.secret-2\n"
    );
    assert_eq!(town_state(&s, TOWN).1["token"], "ctok.secret-2");

    // The helper uses the server's file.
    let out = credential("get", &worker.url(), &s.workdir, RIG, GIT_REQUEST);
    assert_eq!(password(&out), "ghs_1.tok");
    assert_eq!(
        worker.seen()[0].authorization.as_deref(),
        Some("Bearer ctok.secret-2")
    );
    let settings = json!({ "town": { "role_agents": {} }, "rigs": {} });
    assert_eq!(
        sync(&s, TOWN, json!({ "KILO_JWT": "k.1" }), settings).0,
        200
    );
    assert!(dir.join(GATEWAY_ENV_FILE).exists());
    assert!(cache_path(&s.workdir, TOWN, RIG).exists());

    let (status, body) = req("POST", "/stop")
        .json(&json!({ "townId": TOWN }))
        .auth(TOWN)
        .send(&s);
    assert_eq!((status, body["stopped"].clone()), (200, Value::Bool(true)));
    assert!(!token_file.exists());
    assert!(!dir.join(GATEWAY_ENV_FILE).exists());
    assert!(!dir.join(GIT_TOKENS_DIR).exists());
    assert!(dir.join("settings/config.json").exists());
    assert!(dir.join(GITCONFIG_FILE).exists());
    // After the stop the helper has nothing to fetch with.
    let out = credential("get", &worker.url(), &s.workdir, RIG, GIT_REQUEST);
    assert!(!out.status.success());
    assert_eq!(worker.calls(), 1);
}

#[test]
fn stop_removes_the_files_left_before_a_restart() {
    let s = debug_server();
    let dir = s.town_dir(TOWN);
    std::fs::create_dir_all(dir.join(GIT_TOKENS_DIR)).unwrap();
    std::fs::write(dir.join(CONTAINER_TOKEN_FILE), "old\n").unwrap();
    std::fs::write(dir.join(GIT_TOKENS_DIR).join("r.json"), "{}").unwrap();
    let (status, body) = req("POST", "/stop")
        .json(&json!({ "townId": TOWN }))
        .auth(TOWN)
        .send(&s);
    assert_eq!((status, body["stopped"].clone()), (200, Value::Bool(false)));
    assert!(!dir.join(CONTAINER_TOKEN_FILE).exists());
    assert!(!dir.join(GIT_TOKENS_DIR).exists());
}

/// Runs `git credential fill` as an agent session would: only `GIT_CONFIG_GLOBAL` and
/// `GASTOWN_RIG_ID` set, no system config, no prompt. `None` when git is not installed.
fn git_credential_fill(gitconfig: &Path, cwd: &Path) -> Option<Output> {
    let mut cmd = Command::new("git");
    cmd.args(["credential", "fill"])
        .current_dir(cwd)
        .env("GIT_CONFIG_GLOBAL", gitconfig)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "")
        .env("SSH_ASKPASS", "")
        .env("HOME", cwd)
        .env(RIG_ID_ENV, RIG);
    without_server_env(&mut cmd);
    let mut child = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("git: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(GIT_REQUEST.as_bytes())
        .expect("git reads its request");
    Some(child.wait_with_output().unwrap())
}

#[test]
fn real_git_asks_the_helper_named_in_the_generated_gitconfig() {
    let expires_at = now() + 3600;
    let worker = github_worker(expires_at);
    let s = start(
        DEBUG_BIN,
        &[(KEY_ENV, KEY)],
        &["--worker-url", &worker.url()],
    );
    assert_eq!(refresh(TOWN, CONTAINER_TOKEN).auth(TOWN).send(&s).0, 200);
    let cwd = temp_dir("git-cwd");
    let Some(out) = git_credential_fill(&s.town_dir(TOWN).join(GITCONFIG_FILE), &cwd) else {
        eprintln!("note: git is not installed; skipping the real git run");
        return;
    };
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("password=ghs_1.tok\n"), "{text}");
    assert!(text.contains("username=x-access-token\n"), "{text}");
    assert!(text.contains("host=github.com\n"), "{text}");
    assert_eq!(worker.calls(), 1);
    assert_eq!(worker.seen()[0].path, git_token_path(TOWN, RIG));
    assert_eq!(
        worker.seen()[0].authorization.as_deref(),
        Some(format!("Bearer {CONTAINER_TOKEN}").as_str())
    );
    // A second git operation within the token's life reuses it.
    let out = git_credential_fill(&s.town_dir(TOWN).join(GITCONFIG_FILE), &cwd).unwrap();
    assert!(stdout(&out).contains("password=ghs_1.tok\n"), "{out:?}");
    assert_eq!(worker.calls(), 1);
    std::fs::remove_dir_all(&cwd).unwrap();
}

#[cfg(unix)]
#[test]
fn odd_paths_survive_git_config_quoting_and_the_shell() {
    let worker = github_worker(now() + 3600);
    // A directory whose name holds every character the two quotings must get right.
    let root = temp_dir("quoting");
    let odd = root.join(r#"we ird'"$HOME\x;#`"#);
    std::fs::create_dir_all(&odd).unwrap();
    let exe = odd.join("gastown control");
    std::os::unix::fs::symlink(DEBUG_BIN, &exe).unwrap();
    let workdir = odd.join("work dir");
    std::fs::create_dir_all(workdir.join(TOWN)).unwrap();
    std::fs::write(
        workdir.join(TOWN).join(CONTAINER_TOKEN_FILE),
        format!("{CONTAINER_TOKEN}\n"),
    )
    .unwrap();
    let text = gitconfig_text(&exe, &workdir, TOWN, Some(&worker.url()), None).unwrap();
    let gitconfig = root.join("gitconfig");
    std::fs::write(&gitconfig, &text).unwrap();
    let Some(out) = git_credential_fill(&gitconfig, &root) else {
        eprintln!("note: git is not installed; skipping the real git run");
        return;
    };
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("password=ghs_1.tok\n"), "{out:?}");
    assert!(cache_path(&workdir, TOWN, RIG).exists());
    // A control character cannot be carried at all.
    assert!(gitconfig_text(Path::new("/a\nb"), &workdir, TOWN, None, None).is_none());
    std::fs::remove_dir_all(&root).unwrap();
}

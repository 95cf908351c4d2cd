//! `POST /merge`, the refinery's direct merge, against real git and local bare repositories
//! (the server started with `GASTOWN_ALLOW_LOCAL_GIT=1`, except where its refusal is tested).
//! Over HTTPS the town's credential helper serves the token; that path is the end-to-end
//! suite's.
//!
//! To watch the server's git from the inside, a test adds `remote.origin.uploadpack` to the
//! town's gitconfig (the server's git reads it as `GIT_CONFIG_GLOBAL`): every `git fetch` of
//! a merge then runs a script that records its environment and calls, and on request sleeps,
//! hangs or moves `main` in the remote before serving the fetch.

mod common;

use common::*;
use gastown_core::control::{ALLOW_LOCAL_GIT_ENV, KEY_ENV};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOWN: &str = "town-merge";
const RIG: &str = "rig-1";
const AUTHOR: (&str, &str) = ("Gastown Refinery", "refinery@gastown.invalid");
const DEADLINE_MS_ENV: &str = "GASTOWN_MERGE_DEADLINE_MS";

/// The debug server, local git allowed, with `env` too.
fn server_with(env: &[(&str, &str)]) -> Server {
    let mut all = vec![(KEY_ENV, KEY), (ALLOW_LOCAL_GIT_ENV, "1")];
    all.extend_from_slice(env);
    start(DEBUG_BIN, &all, &["--read-timeout-ms", "1500"])
}

fn server() -> Server {
    server_with(&[])
}

/// The debug server without local git, whatever the test's own environment says.
fn https_only_server() -> Server {
    let workdir = temp_dir("workdir");
    let mut cmd = command(
        DEBUG_BIN,
        &[(KEY_ENV, KEY)],
        &[
            "--read-timeout-ms",
            "1500",
            "--workdir",
            workdir.to_str().unwrap(),
        ],
    );
    cmd.env_remove(ALLOW_LOCAL_GIT_ENV);
    spawn(cmd, workdir)
}

/// The town's container token, as the worker hands it over when the container starts.
fn register(s: &Server, town: &str) {
    let (status, body) = refresh(town, "ctok-1").auth(town).send(s);
    assert_eq!(status, 200, "{body}");
}

fn merge_body(url: &str, branch: &str, base: &str, message: &str) -> Value {
    json!({
        "townId": TOWN,
        "rig_id": RIG,
        "git_url": url,
        "branch": branch,
        "base": base,
        "message": message,
        "author_name": AUTHOR.0,
        "author_email": AUTHOR.1,
    })
}

fn post_merge(s: &Server, body: &Value) -> (u16, Value) {
    req("POST", "/merge").json(body).auth(TOWN).send(s)
}

/// Runs git in `dir` as the test's own, isolated from the machine's configuration; its
/// stdout, trimmed.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository (`main`: `a.txt`, `b.txt`) and a working clone to make branches in.
struct Repo {
    dir: TempDir,
    bare: PathBuf,
    work: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let dir = TempDir::new("merge-repo");
        let bare = dir.0.join("remote.git");
        let work = dir.0.join("work");
        git(
            &dir.0,
            &["init", "--quiet", "--bare", "-b", "main", "remote.git"],
        );
        git(&dir.0, &["init", "--quiet", "-b", "main", "work"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let repo = Repo { dir, bare, work };
        repo.write(&[("a.txt", "one\n"), ("b.txt", "bee\n")]);
        git(&repo.work, &["add", "-A"]);
        git(&repo.work, &["commit", "--quiet", "-m", "initial"]);
        git(
            &repo.work,
            &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
        );
        repo
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    fn write(&self, files: &[(&str, &str)]) {
        for (name, text) in files {
            std::fs::write(self.work.join(name), text).unwrap();
        }
    }

    /// A commit of `files` on `branch`, started from the remote's `from`, pushed; its sha.
    fn commit_on(&self, branch: &str, from: &str, files: &[(&str, &str)]) -> String {
        git(&self.work, &["fetch", "--quiet", "origin"]);
        let start = format!("origin/{from}");
        git(&self.work, &["checkout", "--quiet", "-B", branch, &start]);
        self.write(files);
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "--quiet", "-m", &format!("work on {branch}")],
        );
        let target = format!("HEAD:refs/heads/{branch}");
        git(&self.work, &["push", "--quiet", "origin", &target]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// The remote's `branch`.
    fn head(&self, branch: &str) -> String {
        self.in_bare(&["rev-parse", &format!("refs/heads/{branch}")])
    }

    fn in_bare(&self, args: &[&str]) -> String {
        git(&self.bare, args)
    }
}

/// Makes every fetch of the town's merges run a script (see the module docs), steered by files
/// in the returned directory: `sleep` (seconds), `hang` (its pid to `hang.pid`, then sleeps
/// 30 s), `move-base` (once: a new commit on the remote's `main`, its sha to `moved.txt`). It
/// writes `env.txt` and `uid.txt` on its first run and `start <HOME>` / `end <HOME>` lines to
/// `calls.log`.
fn watch_fetches(s: &Server, town: &str, repo: &Repo) -> PathBuf {
    let ctl = repo.dir.0.join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    let script = ctl.join("upload-pack.sh");
    std::fs::write(
        &script,
        format!(
            r#"ctl='{ctl}'
bare='{bare}'
if [ ! -f "$ctl/env.txt" ]; then
  id -u > "$ctl/uid.txt"
  env > "$ctl/env.tmp" && mv "$ctl/env.tmp" "$ctl/env.txt"
fi
echo "start $HOME" >> "$ctl/calls.log"
if [ -f "$ctl/hang" ]; then echo $$ > "$ctl/hang.pid"; exec sleep 30; fi
if [ -f "$ctl/sleep" ]; then sleep "$(cat "$ctl/sleep")"; fi
if [ -f "$ctl/move-base" ]; then
  rm -f "$ctl/move-base"
  tree=$(git --git-dir="$bare" rev-parse 'refs/heads/main^{{tree}}')
  moved=$(git --git-dir="$bare" commit-tree "$tree" -p refs/heads/main -m 'moved meanwhile')
  git --git-dir="$bare" update-ref refs/heads/main "$moved"
  echo "$moved" > "$ctl/moved.txt"
fi
echo "end $HOME" >> "$ctl/calls.log"
exec git upload-pack "$@"
"#,
            ctl = ctl.display(),
            bare = repo.bare.display(),
        ),
    )
    .unwrap();
    let gitconfig = s.canonical_town_dir(town).join("gitconfig");
    let mut text = std::fs::read_to_string(&gitconfig).expect("the town's gitconfig");
    text.push_str(&format!(
        "[remote \"origin\"]\n\tuploadpack = /bin/sh {}\n",
        script.display()
    ));
    std::fs::write(&gitconfig, text).unwrap();
    ctl
}

/// The `calls.log` lines the fetch script wrote.
fn calls(ctl: &Path) -> Vec<String> {
    std::fs::read_to_string(ctl.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The town's directory of merge scratch directories.
fn merges_dir(s: &Server) -> PathBuf {
    s.canonical_town_dir(TOWN).join(".merges")
}

/// Whether every merge's scratch directory is gone.
fn no_scratch_left(s: &Server) -> bool {
    std::fs::read_dir(merges_dir(s)).map_or(true, |mut d| d.next().is_none())
}

/// The commit's parents, message, author and committer.
fn commit_of(repo: &Repo, sha: &str) -> (Vec<String>, String, String, String) {
    let show = |format: &str| repo.in_bare(&["show", "-s", &format!("--format={format}"), sha]);
    let parents = show("%P").split(' ').map(str::to_owned).collect();
    (parents, show("%B"), show("%an <%ae>"), show("%cn <%ce>"))
}

/// Whether the process runs: it exists and is no zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[test]
fn a_clean_branch_merges_with_a_merge_commit_as_given() {
    let s = server();
    register(&s, TOWN);
    let repo = Repo::new();
    let ctl = watch_fetches(&s, TOWN, &repo);
    let base_before = repo.head("main");
    let tip = repo.commit_on("gastown/toast/bead-1", "main", &[("c.txt", "new\n")]);
    let message = "Merge bead-1: Fix it\n\nFrom the refinery.";

    let (status, body) = post_merge(
        &s,
        &merge_body(&repo.url(), "gastown/toast/bead-1", "main", message),
    );
    assert_eq!(status, 200, "{body}");
    let new_head = repo.head("main");
    assert_eq!(
        body,
        json!({ "outcome": "merged", "sha": new_head, "files": [] })
    );
    let (parents, text, author, committer) = commit_of(&repo, &new_head);
    assert_eq!(
        parents,
        [base_before, tip],
        "a merge commit of base and branch"
    );
    assert_eq!(text, message);
    let person = format!("{} <{}>", AUTHOR.0, AUTHOR.1);
    assert_eq!((author.as_str(), committer.as_str()), (&*person, &*person));
    assert_eq!(
        repo.in_bare(&["show", &format!("{new_head}:c.txt")]),
        "new",
        "the branch's work is in base"
    );
    assert!(no_scratch_left(&s), "the scratch directory is removed");

    // The server's own git: its user, its environment, in the town's scratch directory.
    let env = read_pairs(&ctl.join("env.txt"));
    let get = |k: &str| env.get(k).map(String::as_str);
    let town_dir = s.canonical_town_dir(TOWN);
    let home = PathBuf::from(get("HOME").unwrap());
    assert_eq!(home.parent(), Some(merges_dir(&s).as_path()), "{home:?}");
    assert!(!home.exists(), "gone afterwards");
    let gitconfig = town_dir.join("gitconfig");
    assert_eq!(get("GIT_CONFIG_GLOBAL"), gitconfig.to_str());
    assert_eq!(get("GASTOWN_TOWN_ID"), Some(TOWN));
    assert_eq!(get("GASTOWN_RIG_ID"), Some(RIG));
    assert_eq!(get("GIT_TERMINAL_PROMPT"), Some("0"));
    assert_eq!(get("GIT_ALLOW_PROTOCOL"), Some("https:http:file"));
    assert_eq!(get("GIT_AUTHOR_NAME"), Some(AUTHOR.0));
    assert_eq!(get("GIT_COMMITTER_EMAIL"), Some(AUTHOR.1));
    for absent in [
        "GASTOWN_AGENT_ID",
        "GASTOWN_CONTROL_KEY",
        ALLOW_LOCAL_GIT_ENV,
        "GASTOWN_CONTAINER_TOKEN",
    ] {
        assert_eq!(get(absent), None, "{absent}");
    }
    let uid = std::fs::read_to_string(ctl.join("uid.txt")).unwrap();
    let own = Command::new("id").arg("-u").output().unwrap().stdout;
    assert_eq!(uid.trim(), String::from_utf8_lossy(&own).trim());
    assert_eq!(calls(&ctl).len(), 2, "one fetch: {:?}", calls(&ctl));
}

#[test]
fn a_conflicting_branch_answers_conflict_and_pushes_nothing() {
    let s = server();
    register(&s, TOWN);
    let repo = Repo::new();
    repo.commit_on(
        "gastown/toast/bead-2",
        "main",
        &[
            ("b.txt", "branch bee\n"),
            ("a.txt", "branch one\n"),
            ("d.txt", "clean\n"),
        ],
    );
    repo.commit_on(
        "main",
        "main",
        &[("a.txt", "main one\n"), ("b.txt", "main bee\n")],
    );
    let base_before = repo.head("main");

    let (status, body) = post_merge(
        &s,
        &merge_body(&repo.url(), "gastown/toast/bead-2", "main", "Merge bead-2"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "outcome": "conflict", "sha": null, "files": ["a.txt", "b.txt"] })
    );
    assert_eq!(repo.head("main"), base_before, "nothing pushed");
    assert!(no_scratch_left(&s));
}

#[test]
fn an_already_merged_branch_has_nothing_to_merge() {
    let s = server();
    register(&s, TOWN);
    let repo = Repo::new();
    repo.commit_on("gastown/toast/bead-3", "main", &[("c.txt", "new\n")]);
    let body = merge_body(&repo.url(), "gastown/toast/bead-3", "main", "Merge bead-3");
    let (status, first) = post_merge(&s, &body);
    assert_eq!(
        (status, &first["outcome"]),
        (200, &json!("merged")),
        "{first}"
    );
    let merged = repo.head("main");

    let (status, again) = post_merge(&s, &body);
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again,
        json!({ "outcome": "nothing_to_merge", "sha": merged, "files": [] })
    );
    assert_eq!(repo.head("main"), merged, "nothing pushed");

    // A branch left behind by base has nothing to merge either.
    let old = repo.in_bare(&["rev-parse", "refs/heads/main~1"]);
    repo.in_bare(&["update-ref", "refs/heads/old", &old]);
    let (status, behind) = post_merge(&s, &merge_body(&repo.url(), "old", "main", "Merge old"));
    assert_eq!(
        (status, &behind["outcome"]),
        (200, &json!("nothing_to_merge")),
        "{behind}"
    );
    assert_eq!(behind["sha"], json!(merged));
    assert!(no_scratch_left(&s));
}

#[test]
fn a_branch_or_base_missing_from_the_remote_is_refused() {
    let s = server();
    register(&s, TOWN);
    let repo = Repo::new();
    repo.commit_on("feature", "main", &[("c.txt", "new\n")]);
    let base_before = repo.head("main");

    let (status, body) = post_merge(&s, &merge_body(&repo.url(), "nope", "main", "Merge"));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "the branch nope is not on the remote");

    let (status, body) = post_merge(&s, &merge_body(&repo.url(), "feature", "trunk", "Merge"));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "the base branch trunk is not on the remote");

    assert_eq!(repo.head("main"), base_before);
    assert!(no_scratch_left(&s));
}

#[test]
fn a_town_the_server_holds_no_token_of_is_refused() {
    let s = server();
    let repo = Repo::new();
    repo.commit_on("feature", "main", &[("c.txt", "new\n")]);
    let base_before = repo.head("main");
    let (status, body) = post_merge(&s, &merge_body(&repo.url(), "feature", "main", "Merge"));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "town not started");

    // Nor once the town has stopped.
    register(&s, TOWN);
    let stop = req("POST", "/stop")
        .json(&json!({ "townId": TOWN }))
        .auth(TOWN);
    assert_eq!(stop.send(&s).0, 200);
    let (status, body) = post_merge(&s, &merge_body(&repo.url(), "feature", "main", "Merge"));
    assert_eq!((status, &body["error"]), (409, &json!("town not started")));
    assert_eq!(repo.head("main"), base_before);
    assert!(!merges_dir(&s).exists(), "git never ran");
}

#[test]
fn callers_are_authenticated_as_for_every_route() {
    let s = server();
    register(&s, TOWN);
    register(&s, "town-other");
    let repo = Repo::new();
    repo.commit_on("feature", "main", &[("c.txt", "new\n")]);
    let base_before = repo.head("main");
    let body = merge_body(&repo.url(), "feature", "main", "Merge");

    let wrong = req("POST", "/merge")
        .json(&body)
        .auth_as(TOWN, "not-the-secret");
    assert_eq!(wrong.send(&s).0, 401);
    let anonymous = req("POST", "/merge").json(&body);
    assert_eq!(anonymous.send(&s).0, 401);
    // Another town's credentials, for this town's merge.
    let (status, answer) = req("POST", "/merge")
        .json(&body)
        .auth("town-other")
        .send(&s);
    assert_eq!(status, 403, "{answer}");
    let text = req("POST", "/merge")
        .raw("text/plain", body.to_string().as_bytes())
        .auth(TOWN);
    assert_eq!(text.send(&s).0, 415);
    assert_eq!(req("GET", "/merge").auth(TOWN).send(&s).0, 405);
    let (status, _) = req("POST", "/merge")
        .json(&json!({ "townId": TOWN }))
        .auth(TOWN)
        .send(&s);
    assert_eq!(status, 400, "a body that is no merge");

    assert_eq!(repo.head("main"), base_before);
    assert!(!merges_dir(&s).exists(), "git never ran");
}

#[test]
fn bad_fields_are_refused_before_git_runs() {
    let s = server();
    register(&s, TOWN);
    let repo = Repo::new();
    repo.commit_on("feature", "main", &[("c.txt", "new\n")]);
    let base_before = repo.head("main");
    let good = merge_body(&repo.url(), "feature", "main", "Merge");
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let mut bad = Vec::new();
    for name in [
        "--upload-pack=touch /tmp/x",
        "--upload-pack=x",
        "a b",
        "a..b",
        "-b",
        "",
    ] {
        bad.push(with("branch", json!(name)));
        bad.push(with("base", json!(name)));
    }
    for url in [
        "--upload-pack=touch /tmp/x",
        "https://x-access-token:ghs_secret@github.com/a/b.git",
        "ssh://git@github.com/a/b.git",
        "git@github.com:a/b.git",
        "ext::sh -c touch% /tmp/x",
        "relative/remote.git",
        "",
    ] {
        bad.push(with("git_url", json!(url)));
    }
    bad.push(with("rig_id", json!("../x")));
    bad.push(with("rig_id", json!("")));
    bad.push(with("message", json!("  ")));
    bad.push(with("message", json!("x".repeat(4001))));
    bad.push(with("author_name", json!("A\nB")));
    bad.push(with("author_name", json!("")));
    bad.push(with("author_email", json!("a@b\nX-Evil: 1")));
    bad.push(with("author_email", json!("")));
    for body in &bad {
        let (status, answer) = post_merge(&s, body);
        assert_eq!(status, 422, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(!error.contains("ghs_secret"), "{error}");
    }
    assert_eq!(repo.head("main"), base_before);
    assert!(!merges_dir(&s).exists(), "git never ran");
    // The good body merges.
    let (status, answer) = post_merge(&s, &good);
    assert_eq!(
        (status, &answer["outcome"]),
        (200, &json!("merged")),
        "{answer}"
    );
}

#[test]
fn local_repositories_are_refused_without_local_git() {
    let s = https_only_server();
    register(&s, TOWN);
    let repo = Repo::new();
    repo.commit_on("feature", "main", &[("c.txt", "new\n")]);
    let base_before = repo.head("main");
    for url in [
        repo.url(),
        repo.bare.to_str().unwrap().to_owned(),
        "http://127.0.0.1:9/remote.git".to_owned(),
    ] {
        let (status, body) = post_merge(&s, &merge_body(&url, "feature", "main", "Merge"));
        assert_eq!(status, 422, "{url}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(ALLOW_LOCAL_GIT_ENV), "{error}");
    }
    assert_eq!(repo.head("main"), base_before);
    assert!(!merges_dir(&s).exists(), "git never ran");
}

#[test]
fn a_git_failure_is_a_502_naming_the_step() {
    let s = server();
    register(&s, TOWN);
    let empty = TempDir::new("no-repo");
    let missing = empty.0.join("missing.git");
    let url = format!("file://{}", missing.display());
    let (status, body) = post_merge(&s, &merge_body(&url, "feature", "main", "Merge"));
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("git clone failed: fatal: ") && error.contains("missing.git"),
        "git's cause: {error}"
    );

    // Over HTTPS to no one: the credential helper is never reached, the clone fails.
    let url = "https://127.0.0.1:9/a/b.git";
    let (status, body) = post_merge(&s, &merge_body(url, "feature", "main", "Merge"));
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("git clone failed: "),
        "{body}"
    );
    assert!(no_scratch_left(&s));
}

#[test]
fn a_push_refused_because_base_moved_starts_over_once() {
    let s = server();
    register(&s, TOWN);
    let repo = Repo::new();
    let ctl = watch_fetches(&s, TOWN, &repo);
    let tip = repo.commit_on("feature", "main", &[("c.txt", "new\n")]);
    std::fs::write(ctl.join("move-base"), "").unwrap();

    let (status, body) = post_merge(&s, &merge_body(&repo.url(), "feature", "main", "Merge"));
    assert_eq!(status, 200, "{body}");
    let new_head = repo.head("main");
    assert_eq!(
        body,
        json!({ "outcome": "merged", "sha": new_head, "files": [] })
    );
    let moved = std::fs::read_to_string(ctl.join("moved.txt")).unwrap();
    let (parents, ..) = commit_of(&repo, &new_head);
    assert_eq!(
        parents,
        [moved.trim().to_owned(), tip],
        "merged into base as it moved"
    );
    let fetches = calls(&ctl)
        .iter()
        .filter(|c| c.starts_with("start"))
        .count();
    assert_eq!(fetches, 2, "cloned and fetched again: {:?}", calls(&ctl));
    assert!(no_scratch_left(&s));
}

#[test]
fn merges_of_one_rig_run_one_at_a_time() {
    let s = server();
    register(&s, TOWN);
    let repo = Repo::new();
    let ctl = watch_fetches(&s, TOWN, &repo);
    std::fs::write(ctl.join("sleep"), "0.4").unwrap();
    repo.commit_on("one", "main", &[("one.txt", "1\n")]);
    repo.commit_on("two", "main", &[("two.txt", "2\n")]);

    let merges: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|branch| {
            let body = merge_body(&repo.url(), branch, "main", &format!("Merge {branch}"));
            let addr = s.addr;
            let raw = req("POST", "/merge").json(&body).auth(TOWN).bytes();
            std::thread::spawn(move || exchange(addr, &raw))
        })
        .collect();
    let answers: Vec<(u16, Value)> = merges.into_iter().map(|t| t.join().unwrap()).collect();
    for (status, body) in &answers {
        assert_eq!(
            (*status, &body["outcome"]),
            (200, &json!("merged")),
            "{body}"
        );
    }

    // Never two fetches at once: each merge's start and end are next to each other.
    let log = calls(&ctl);
    assert_eq!(log.len(), 4, "{log:?}");
    for pair in log.chunks(2) {
        let (start, end) = (&pair[0], &pair[1]);
        assert_eq!(
            start.strip_prefix("start "),
            end.strip_prefix("end "),
            "{log:?}"
        );
    }
    // The second merged into what the first pushed.
    let head = repo.head("main");
    let (parents, ..) = commit_of(&repo, &head);
    let shas: Vec<&Value> = answers.iter().map(|(_, b)| &b["sha"]).collect();
    assert!(shas.contains(&&json!(head)), "{shas:?}");
    assert!(shas.contains(&&json!(parents[0])), "{shas:?} {parents:?}");
    for file in ["one.txt", "two.txt"] {
        repo.in_bare(&["show", &format!("{head}:{file}")]);
    }
    assert!(no_scratch_left(&s));
}

#[test]
fn a_merge_past_its_deadline_answers_504_and_kills_git() {
    let s = server_with(&[(DEADLINE_MS_ENV, "1000")]);
    register(&s, TOWN);
    let repo = Repo::new();
    let ctl = watch_fetches(&s, TOWN, &repo);
    std::fs::write(ctl.join("hang"), "").unwrap();
    repo.commit_on("feature", "main", &[("c.txt", "new\n")]);
    let base_before = repo.head("main");

    let (status, body) = post_merge(&s, &merge_body(&repo.url(), "feature", "main", "Merge"));
    assert_eq!(status, 504, "{body}");
    let pid: u32 = std::fs::read_to_string(ctl.join("hang.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !running(pid)),
        "git's hung child is killed"
    );
    assert_eq!(repo.head("main"), base_before);
    assert!(no_scratch_left(&s));
}

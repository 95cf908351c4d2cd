//! The files a sync leaves in the town's work directory for new agent sessions: the settings
//! files (town and rigs) and `.env.gateway`.

mod common;

use common::*;
use gastown_core::agent_settings::AgentSettings;
use gastown_core::control::{GATEWAY_ENV_FILE, KEY_ENV};
use serde_json::{json, Value};
use std::path::Path;

/// The settings file's content, checked to be exactly an `AgentSettings` as serde writes it.
fn settings_file(path: &Path) -> Value {
    let value = read_json(path);
    let parsed: AgentSettings = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{} is no AgentSettings: {e}", path.display()));
    assert_eq!(serde_json::to_value(&parsed).unwrap(), value);
    value
}

fn files_under(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn sync_writes_the_town_and_rig_settings_files() {
    let s = debug_server();
    let settings = json!({
        "town": {
            "role_agents": { "mayor": { "model": "kilo/town-mayor" }, "polecat": { "model": "kilo/p" } },
            "small_model": "kilo/small"
        },
        "rigs": {
            "r1": { "role_agents": { "mayor": { "model": "kilo/r1-mayor" } } },
            "rig_2-b": { "role_agents": {} }
        }
    });
    let (status, body) = sync(&s, "town-a", json!({ "A": "1" }), settings.clone());
    assert_eq!((status, body["names"].clone()), (200, json!(["A"])));

    let dir = s.town_dir("town-a");
    assert_eq!(
        settings_file(&dir.join("settings/config.json")),
        settings["town"]
    );
    assert_eq!(
        settings_file(&dir.join("r1/settings/config.json")),
        settings["rigs"]["r1"]
    );
    assert_eq!(
        settings_file(&dir.join("rig_2-b/settings/config.json")),
        json!({ "role_agents": {} })
    );
    assert_eq!(
        files_under(&dir),
        [
            "r1/settings/config.json",
            "rig_2-b/settings/config.json",
            "settings/config.json"
        ],
        "no temporary file left, no gateway file without KILO_JWT"
    );
    // Another town's files go to its own directory.
    assert_eq!(
        sync(
            &s,
            "town-b",
            json!({}),
            json!({ "town": { "role_agents": {} }, "rigs": {} })
        )
        .0,
        200
    );
    assert_eq!(files_under(&s.town_dir("town-b")), ["settings/config.json"]);
}

#[test]
fn a_sync_without_settings_writes_an_empty_town_file() {
    let s = debug_server();
    // `settings` is optional in the body (an older worker does not send it).
    let r = req("POST", "/sync-config")
        .json(&json!({ "env": {}, "townId": "a" }))
        .auth("a");
    assert_eq!(r.send(&s).0, 200);
    assert_eq!(
        settings_file(&s.town_dir("a").join("settings/config.json")),
        json!({ "role_agents": {} })
    );
}

#[test]
fn a_later_sync_removes_a_dropped_rig_and_a_cleared_role() {
    let s = debug_server();
    let first = json!({
        "town": { "role_agents": { "mayor": { "model": "m" }, "refinery": { "model": "r" } }, "small_model": "s" },
        "rigs": {
            "r1": { "role_agents": { "polecat": { "model": "p1" } } },
            "r2": { "role_agents": { "polecat": { "model": "p2" } } }
        }
    });
    assert_eq!(sync(&s, "a", json!({}), first).0, 200);
    let dir = s.town_dir("a");
    // Something of r1's that is not its settings must survive.
    std::fs::write(dir.join("r1/checkout.txt"), "work").unwrap();

    let second = json!({
        "town": { "role_agents": { "mayor": { "model": "m" } } },
        "rigs": { "r2": { "role_agents": {} } }
    });
    assert_eq!(sync(&s, "a", json!({}), second).0, 200);
    assert!(!dir.join("r1/settings/config.json").exists(), "dropped rig");
    assert!(dir.join("r1/checkout.txt").exists());
    assert_eq!(
        settings_file(&dir.join("settings/config.json")),
        json!({ "role_agents": { "mayor": { "model": "m" } } }),
        "the cleared refinery model and small model are gone, not null"
    );
    assert_eq!(
        settings_file(&dir.join("r2/settings/config.json")),
        json!({ "role_agents": {} })
    );
}

#[test]
fn stale_rig_files_are_found_on_disk_after_a_restart() {
    let workdir = temp_dir("restart");
    let workdir_arg = workdir.to_str().unwrap();
    let args = ["--workdir", workdir_arg];
    let settings = |rigs: Value| json!({ "town": { "role_agents": {} }, "rigs": rigs });
    {
        let s = start(DEBUG_BIN, &[(KEY_ENV, KEY)], &args);
        let rigs = json!({ "r1": { "role_agents": {} }, "r2": { "role_agents": {} } });
        assert_eq!(sync(&s, "a", json!({}), settings(rigs)).0, 200);
    }
    assert!(workdir.join("a/r1/settings/config.json").exists());
    // A new server (its memory empty) still removes r1's file.
    let s = start(DEBUG_BIN, &[(KEY_ENV, KEY)], &args);
    let rigs = json!({ "r2": { "role_agents": {} } });
    assert_eq!(sync(&s, "a", json!({}), settings(rigs)).0, 200);
    assert!(!workdir.join("a/r1/settings/config.json").exists());
    assert!(workdir.join("a/r2/settings/config.json").exists());
    drop(s);
    std::fs::remove_dir_all(&workdir).unwrap();
}

#[test]
fn a_bad_rig_id_refuses_the_whole_sync() {
    let s = debug_server();
    let long = "r".repeat(129);
    let ok = json!({ "role_agents": { "mayor": { "model": "m" } } });
    for bad in [
        "",
        "settings",
        "a/b",
        "..",
        "../x",
        ".r",
        "a b",
        "r.1",
        "ü",
        long.as_str(),
    ] {
        let settings = json!({
            "town": { "role_agents": {} },
            "rigs": { "good": ok, bad: ok }
        });
        let env = json!({ "KILO_JWT": "a.b.c" });
        let (status, body) = sync(&s, "a", env, settings);
        assert_eq!(status, 400, "{bad:?}");
        assert!(body["error"].is_string(), "{bad:?}: {body}");
        assert_eq!(
            files_under(&s.town_dir("a")),
            Vec::<String>::new(),
            "{bad:?}"
        );
        assert_eq!(
            town_state(&s, "a").0,
            404,
            "{bad:?}: the env was not stored"
        );
    }
    // 128 characters is fine.
    let fine = "r".repeat(128);
    let settings = json!({ "town": { "role_agents": {} }, "rigs": { fine.clone(): ok } });
    assert_eq!(sync(&s, "a", json!({}), settings).0, 200);
    assert!(s
        .town_dir("a")
        .join(&fine)
        .join("settings/config.json")
        .exists());
}

#[test]
fn a_refused_sync_leaves_the_previous_files() {
    let s = debug_server();
    let settings =
        json!({ "town": { "role_agents": {} }, "rigs": { "r1": { "role_agents": {} } } });
    assert_eq!(sync(&s, "a", json!({ "KILO_JWT": "t.1" }), settings).0, 200);
    let bad =
        json!({ "town": { "role_agents": {} }, "rigs": { "settings": { "role_agents": {} } } });
    assert_eq!(sync(&s, "a", json!({}), bad).0, 400);
    let dir = s.town_dir("a");
    assert!(dir.join("r1/settings/config.json").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join(GATEWAY_ENV_FILE)).unwrap(),
        "KILO_JWT=t.1\n"
    );
}

#[test]
fn the_gateway_env_file_follows_the_synced_kilo_jwt() {
    let s = debug_server();
    let no_settings = json!({ "town": { "role_agents": {} }, "rigs": {} });
    let path = s.town_dir("a").join(GATEWAY_ENV_FILE);
    let env = json!({ "KILO_JWT": "eyJhbGciOi.eyJzdWIi.c2ln-_", "OTHER": "x" });
    assert_eq!(sync(&s, "a", env, no_settings.clone()).0, 200);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "KILO_JWT=eyJhbGciOi.eyJzdWIi.c2ln-_\n",
        "exactly one line, only the token"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    // A new token replaces the line.
    let env = json!({ "KILO_JWT": "t.2" });
    assert_eq!(sync(&s, "a", env, no_settings.clone()).0, 200);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "KILO_JWT=t.2\n");

    // A token a shell would act on is refused, and the file keeps the last good one.
    for bad in ["t.3\nrm -rf ~", "$(id)", "a b"] {
        let (status, _) = sync(&s, "a", json!({ "KILO_JWT": bad }), no_settings.clone());
        assert_eq!(status, 400, "{bad:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "KILO_JWT=t.2\n");
    }

    // A sync without it (or with it empty) removes the file.
    assert_eq!(
        sync(&s, "a", json!({ "OTHER": "x" }), no_settings.clone()).0,
        200
    );
    assert!(!path.exists());
    assert_eq!(
        sync(&s, "a", json!({ "KILO_JWT": "t.4" }), no_settings.clone()).0,
        200
    );
    assert!(path.exists());
    assert_eq!(sync(&s, "a", json!({ "KILO_JWT": "" }), no_settings).0, 200);
    assert!(!path.exists());
}

#[test]
fn the_production_binary_writes_the_files_too() {
    let s = start(PROD_BIN, &[(KEY_ENV, KEY)], &[]);
    let settings =
        json!({ "town": { "role_agents": {} }, "rigs": { "r1": { "role_agents": {} } } });
    assert_eq!(sync(&s, "a", json!({ "KILO_JWT": "t.1" }), settings).0, 200);
    let dir = s.town_dir("a");
    assert!(dir.join("settings/config.json").exists());
    assert!(dir.join("r1/settings/config.json").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join(GATEWAY_ENV_FILE)).unwrap(),
        "KILO_JWT=t.1\n"
    );
}

#[test]
fn the_work_directory_comes_from_the_environment_and_is_created() {
    let parent = temp_dir("env-workdir");
    let workdir = parent.join("made/by/the/server");
    let s = start(
        DEBUG_BIN,
        &[
            (KEY_ENV, KEY),
            ("GASTOWN_WORKDIR", workdir.to_str().unwrap()),
        ],
        &["--workdir", ""],
    );
    assert_eq!(
        sync(
            &s,
            "a",
            json!({}),
            json!({ "town": { "role_agents": {} }, "rigs": {} })
        )
        .0,
        200
    );
    assert!(workdir.join("a/settings/config.json").exists());
    let (_, state) = town_state(&s, "a");
    assert_eq!(
        state["workdir"],
        json!(std::fs::canonicalize(&workdir).unwrap().join("a"))
    );
    drop(s);
    std::fs::remove_dir_all(&parent).unwrap();
}

//! A town's files in the work directory: what new agent sessions read when they start.
//!
//! ```text
//! <workdir>/<town>/settings/config.json          the town's AgentSettings
//! <workdir>/<town>/<rig>/settings/config.json    one per rig of the town
//! <workdir>/<town>/.env.gateway                  KILO_JWT=<token>\n   (mode 0600)
//! ```
//!
//! Invariants:
//!
//! * every file is replaced atomically (a temporary file in the same directory, then a
//!   rename), so a session starting at any moment reads a whole old or a whole new file;
//! * the settings files on disk are exactly those of the last sync: a rig not in it loses its
//!   file, found by scanning the disk (not from memory, which a restart empties);
//! * only names this module has checked become paths: a town id or rig id that could step out
//!   of its directory (`/`, `\`, `..`, a leading `.`) is refused, and a rig named like the
//!   town's own `settings` directory too;
//! * the gateway file holds one line whose value is a plain token (JWT characters only), so a
//!   shell that sources it runs nothing else.

use gastown_core::agent_settings::{AgentSettings, SettingsFiles};
use gastown_core::control::{GATEWAY_ENV_FILE, GATEWAY_TOKEN_ENV, SETTINGS_FILE};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The directory of a settings file, under a town's or a rig's directory.
pub const SETTINGS_DIR: &str = "settings";
/// Longest rig id accepted as a directory name.
pub const MAX_RIG_ID_LEN: usize = 128;

/// Mode of the settings files (before the umask).
const SETTINGS_MODE: u32 = 0o644;
/// Mode of the gateway env file: it holds a credential.
const GATEWAY_ENV_MODE: u32 = 0o600;

/// `<root>/<town>`, or `None` for a town id that could name another directory.
#[must_use]
pub fn town_dir(root: &Path, town: &str) -> Option<PathBuf> {
    let unsafe_name = town.is_empty()
        || town.starts_with('.')
        || town.contains(['/', '\\', '\0'])
        || town.contains("..");
    (!unsafe_name).then(|| root.join(town))
}

/// Checks that `rig` can be a directory of the town's.
///
/// # Errors
/// Why it cannot, for the caller's 400.
pub fn check_rig_id(rig: &str) -> Result<(), String> {
    if rig.is_empty() || rig.len() > MAX_RIG_ID_LEN {
        return Err(format!("rig id must have 1 to {MAX_RIG_ID_LEN} characters"));
    }
    if !rig
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!("rig id {rig:?} may hold only A-Z a-z 0-9 _ -"));
    }
    if rig == SETTINGS_DIR {
        return Err(format!("rig id {rig:?} names the town's own settings"));
    }
    Ok(())
}

/// Whether `token` can be the value of the gateway env file's one line as it is: JWT and
/// base64 characters only, nothing a shell would act on.
#[must_use]
pub fn is_plain_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-~+/=".contains(&b))
}

/// Writes the town's settings file and one per rig of `files`, and removes the file of every
/// other rig directory that has one. Rig ids must have passed [`check_rig_id`].
///
/// # Errors
/// The first filesystem failure; files written before it stay written.
pub fn write_settings(town_dir: &Path, files: &SettingsFiles) -> io::Result<()> {
    write_settings_file(&town_dir.join(SETTINGS_FILE), &files.town)?;
    for (rig, settings) in &files.rigs {
        write_settings_file(&town_dir.join(rig).join(SETTINGS_FILE), settings)?;
    }
    remove_stale_rig_settings(town_dir, |rig| files.rigs.contains_key(rig))
}

fn write_settings_file(path: &Path, settings: &AgentSettings) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(settings).map_err(io::Error::other)?;
    write_atomic(path, &json, SETTINGS_MODE)
}

/// Removes `<town>/<rig>/settings/config.json` of every rig directory `keep` refuses.
fn remove_stale_rig_settings(town_dir: &Path, keep: impl Fn(&str) -> bool) -> io::Result<()> {
    let entries = match fs::read_dir(town_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Only real directories that could be a rig's: a symbolic link is never followed.
        if !entry.file_type()?.is_dir() || check_rig_id(&name).is_err() || keep(&name) {
            continue;
        }
        let settings_dir = entry.path().join(SETTINGS_DIR);
        if !is_real_dir(&settings_dir) {
            continue;
        }
        remove_if_present(&entry.path().join(SETTINGS_FILE))?;
        // Left in place when something else lives there.
        let _ = fs::remove_dir(&settings_dir);
    }
    Ok(())
}

/// Writes `KILO_JWT=<token>\n` (mode 0600) for `Some`, removes the file for `None`. The token
/// must pass [`is_plain_token`].
///
/// # Errors
/// A filesystem failure, or `InvalidInput` for a token that is not plain.
pub fn write_gateway_env(town_dir: &Path, token: Option<&str>) -> io::Result<()> {
    let path = town_dir.join(GATEWAY_ENV_FILE);
    match token {
        Some(token) if !is_plain_token(token) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the gateway token holds characters a token does not",
        )),
        Some(token) => write_atomic(
            &path,
            format!("{GATEWAY_TOKEN_ENV}={token}\n").as_bytes(),
            GATEWAY_ENV_MODE,
        ),
        None => remove_if_present(&path),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Replaces `path` with `bytes` at once: a new file beside it (created exclusively, with
/// `mode`), synced, renamed over it. The parent directory is created if missing; one that is
/// not a real directory (a symbolic link, a file) is replaced, so the write cannot be sent
/// elsewhere.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ));
    };
    if fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(dir)?;
    }
    fs::create_dir_all(dir)?;
    let temp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use gastown_core::agent_settings::{Role, RoleAgent};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gastown-workdir-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn settings(model: &str) -> AgentSettings {
        AgentSettings {
            role_agents: [(
                Role::Mayor,
                RoleAgent {
                    model: model.into(),
                },
            )]
            .into(),
            small_model: None,
        }
    }

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn the_settings_dir_is_the_first_part_of_the_settings_file() {
        assert_eq!(
            SETTINGS_FILE.split_once('/').map(|(dir, _)| dir),
            Some(SETTINGS_DIR)
        );
    }

    #[test]
    fn town_dirs_stay_inside_the_root() {
        let root = Path::new("/w");
        assert_eq!(town_dir(root, "town-a"), Some(PathBuf::from("/w/town-a")));
        for bad in [
            "", ".", "..", ".hidden", "a/b", "a\\b", "a..b", "/abs", "a\0b",
        ] {
            assert_eq!(town_dir(root, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rig_ids() {
        for ok in ["r1", "rig_2", "A-b", &"x".repeat(MAX_RIG_ID_LEN)] {
            assert!(check_rig_id(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(MAX_RIG_ID_LEN + 1);
        for bad in ["", "settings", "a/b", "..", ".r", "a b", "r.1", "é", &long] {
            assert!(check_rig_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plain_tokens() {
        assert!(is_plain_token("eyJh.eyJz.c2ln-_"));
        for bad in ["", "a b", "a\nb", "a;b", "$(x)", "a'b", "`x`", "a\"b"] {
            assert!(!is_plain_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn settings_are_written_and_stale_rigs_removed() {
        let dir = temp_dir("settings");
        let files = SettingsFiles {
            town: settings("t"),
            rigs: [("r1".into(), settings("a")), ("r2".into(), settings("b"))].into(),
        };
        write_settings(&dir, &files).unwrap();
        assert_eq!(
            read_json(&dir.join("settings/config.json")),
            serde_json::to_value(&files.town).unwrap()
        );
        assert_eq!(
            read_json(&dir.join("r2/settings/config.json")),
            serde_json::json!({"role_agents": {"mayor": {"model": "b"}}})
        );
        // Something else of r1's survives its settings file; a directory that is no rig's is
        // left alone.
        fs::write(dir.join("r1/notes.txt"), "x").unwrap();
        fs::create_dir_all(dir.join("not.a.rig/settings")).unwrap();
        fs::write(dir.join("not.a.rig/settings/config.json"), "{}").unwrap();

        let only_r2 = SettingsFiles {
            town: AgentSettings::default(),
            rigs: [("r2".into(), settings("c"))].into(),
        };
        write_settings(&dir, &only_r2).unwrap();
        assert!(!dir.join("r1/settings/config.json").exists());
        assert!(!dir.join("r1/settings").exists());
        assert!(dir.join("r1/notes.txt").exists());
        assert!(dir.join("not.a.rig/settings/config.json").exists());
        assert_eq!(
            read_json(&dir.join("settings/config.json")),
            serde_json::json!({"role_agents": {}})
        );
        assert_eq!(
            read_json(&dir.join("r2/settings/config.json"))["role_agents"]["mayor"]["model"],
            "c"
        );
        // No temporary file is left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.join("r2/settings"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["config.json"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_linked_settings_dir_is_replaced_not_followed() {
        let dir = temp_dir("link");
        let elsewhere = temp_dir("elsewhere");
        fs::create_dir_all(dir.join("r1")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("r1/settings")).unwrap();
        let files = SettingsFiles {
            town: AgentSettings::default(),
            rigs: [("r1".into(), settings("a"))].into(),
        };
        write_settings(&dir, &files).unwrap();
        assert!(is_real_dir(&dir.join("r1/settings")));
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[test]
    fn gateway_env_is_one_line_private_and_removable() {
        let dir = temp_dir("gateway");
        write_gateway_env(&dir, Some("a.b.c")).unwrap();
        let path = dir.join(GATEWAY_ENV_FILE);
        assert_eq!(fs::read_to_string(&path).unwrap(), "KILO_JWT=a.b.c\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let refused = write_gateway_env(&dir, Some("x\nrm -rf /")).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(fs::read_to_string(&path).unwrap(), "KILO_JWT=a.b.c\n");
        write_gateway_env(&dir, None).unwrap();
        assert!(!path.exists());
        write_gateway_env(&dir, None).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}

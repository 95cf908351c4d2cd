//! A town's files in the work directory: what new agent sessions read when they start.
//!
//! ```text
//! <workdir>/<town>/settings/config.json          the town's AgentSettings
//! <workdir>/<town>/<rig>/settings/config.json    one per rig of the town
//! <workdir>/<town>/.env.gateway                  KILO_JWT=<token>\n   (mode 0600)
//! <workdir>/<town>/.container-token              <container token>\n (mode 0600)
//! <workdir>/<town>/gitconfig                     [credential] helper = gastown-control …
//! <workdir>/<town>/bin/gh                        exec gastown-control gh … -- "$@" (0755)
//! <workdir>/<town>/.git-tokens/<rig>.json        {"token","expires_at","source"} (0600; dir 0700)
//! ```
//!
//! The server writes the first six; the git credential helper (`gastown-control
//! git-credential`, a child of git in an agent's session) and the `gh` shim (`gastown-control
//! gh`, run by the agent's `gh`) write the git token cache.
//! `/stop` removes the credentials (`.env.gateway`, `.container-token`, `.git-tokens/`) and
//! leaves the rest.
//!
//! # With an agent user
//!
//! Without one (`--agent-uid` unset) the agents run as the server's user and the modes are
//! those above (files before the umask). With one ([`AgentUser`], uid A, gid G), agents run
//! as A:G and must reach what they read without reaching anything else of the server's:
//!
//! ```text
//! <workdir>/                        server:G 0710 when the server creates it (an existing one
//!                                   is left, but must let A pass: checked at start)
//! <workdir>/<town>/                 server:G 0710   )
//! <town>/settings/, <rig>/,         server:G 0710   ) made so on every write into them
//!   <rig>/settings/, <town>/agents/                 )
//! <town>/bin/                       server:G 0710   (made so on every write of the shim)
//! <town>/bin/gh                     server:G 0750   (the agent runs it, cannot change it)
//! every other file above but the    server:G 0640   (written so before the rename)
//!   cache
//! <town>/.git-tokens/               A:G      0700   (made so before every agent start)
//! <town>/agents/<agent>/            A:G      0700   (the agent's work dir, made on each start)
//! <town>/agents/<agent>.log         server   0600   (the agent writes it through its stdout)
//! ```
//!
//! Directories are 0710, not 0750: an agent opens every file by a name it is given (its env,
//! the gitconfig, this layout) and never lists one, so passing through (`x`) is all it needs;
//! the others (`o`) get nothing. A is given exactly two directories, which it needs to write in
//! and nothing of the server's lives in; it can replace neither, since their parents are the
//! server's.
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
//!   shell that sources it runs nothing else; so does the container token file, whose one
//!   line goes into an `authorization` header;
//! * the gitconfig names no token, only the helper that fetches one per git operation; nor
//!   does the `gh` shim, which names only the subcommand that fetches one per run of `gh`.

use crate::agent_user::AgentUser;
use gastown_core::agent_settings::{AgentSettings, SettingsFiles};
use gastown_core::control::{
    GitTokenReply, CONTAINER_TOKEN_FILE, GATEWAY_ENV_FILE, GATEWAY_TOKEN_ENV, SETTINGS_FILE,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The work directory when neither `--workdir` nor [`WORKDIR_ENV`] names one (relative to the
/// directory the server starts in).
pub const DEFAULT_WORKDIR: &str = "gastown-work";
/// Names the work directory when `--workdir` does not.
pub const WORKDIR_ENV: &str = "GASTOWN_WORKDIR";
/// The directory of a settings file, under a town's or a rig's directory.
pub const SETTINGS_DIR: &str = "settings";
/// Longest rig id accepted as a directory name.
pub const MAX_RIG_ID_LEN: usize = 128;

/// Mode of the settings files (before the umask).
const SETTINGS_MODE: u32 = 0o644;
/// Mode of the gateway env file: it holds a credential.
const GATEWAY_ENV_MODE: u32 = 0o600;
/// Mode of every other file holding a credential (container token, git token cache).
const SECRET_MODE: u32 = 0o600;
/// Mode of the git token cache's directory, and of any directory the agent user owns.
const SECRET_DIR_MODE: u32 = 0o700;
/// With an agent user: mode of every file the server writes for the agents (the agent's
/// group reads it).
const AGENT_READ_MODE: u32 = 0o640;
/// With an agent user: mode of every directory on the agent's way to those files (the agent's
/// group passes through, lists nothing).
const AGENT_PASS_MODE: u32 = 0o710;
/// Mode of the `gh` shim (before the umask): a script anyone may run, only its owner change.
const SHIM_MODE: u32 = 0o755;
/// With an agent user: mode of the `gh` shim (the agent's group reads and runs it).
const AGENT_EXEC_MODE: u32 = 0o750;
/// Largest git token cache file read back (one is well under 1 KiB).
const MAX_CACHE_BYTES: u64 = 64 * 1024;

/// The directory, in a town's, of the git token cache: one `<rig>.json` per rig.
pub const GIT_TOKENS_DIR: &str = ".git-tokens";
/// The git config file, in a town's directory, that agent sessions name in
/// `GIT_CONFIG_GLOBAL`.
pub const GITCONFIG_FILE: &str = "gitconfig";
/// The subcommand of `gastown-control` that git runs as its credential helper.
pub const GIT_CREDENTIAL_SUBCOMMAND: &str = "git-credential";
/// The directory, in a town's, that agent sessions find first on their `PATH`: it holds the
/// `gh` shim.
pub const BIN_DIR: &str = "bin";
/// The `gh` shim's name in [`BIN_DIR`]: what an agent runs when it runs `gh`.
pub const GH_SHIM_FILE: &str = "gh";
/// The `gt` shim's name in [`BIN_DIR`]: the agents' tool ([`crate::gt`]).
pub const GT_SHIM_FILE: &str = "gt";
/// The subcommand of `gastown-control` the `gh` shim runs.
pub const GH_SUBCOMMAND: &str = "gh";

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
/// other rig directory that has one. Rig ids must have passed [`check_rig_id`]. With an agent
/// user, laid out for it (see the module docs).
///
/// # Errors
/// The first filesystem failure; files written before it stay written.
pub fn write_settings(
    town_dir: &Path,
    files: &SettingsFiles,
    agent: Option<AgentUser>,
) -> io::Result<()> {
    write_settings_file(town_dir, &[], &files.town, agent)?;
    for (rig, settings) in &files.rigs {
        write_settings_file(town_dir, &[rig], settings, agent)?;
    }
    remove_stale_rig_settings(town_dir, |rig| files.rigs.contains_key(rig))
}

/// `<town>/<under…>/settings/config.json`.
fn write_settings_file(
    town_dir: &Path,
    under: &[&str],
    settings: &AgentSettings,
    agent: Option<AgentUser>,
) -> io::Result<()> {
    let dir = under.iter().fold(town_dir.to_path_buf(), |d, p| d.join(p));
    if let Some(agent) = agent {
        let mut on_the_way = town_dir.to_path_buf();
        pass_dir(&on_the_way, agent)?;
        for part in under.iter().copied().chain([SETTINGS_DIR]) {
            on_the_way.push(part);
            pass_dir(&on_the_way, agent)?;
        }
    }
    let json = serde_json::to_vec_pretty(settings).map_err(io::Error::other)?;
    write_atomic(&dir.join(SETTINGS_FILE), &json, SETTINGS_MODE, agent)
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

/// Writes `KILO_JWT=<token>\n` (mode 0600; with an agent user 0640, group the agent's) for
/// `Some`, removes the file for `None`. The token must pass [`is_plain_token`].
///
/// # Errors
/// A filesystem failure, or `InvalidInput` for a token that is not plain.
pub fn write_gateway_env(
    town_dir: &Path,
    token: Option<&str>,
    agent: Option<AgentUser>,
) -> io::Result<()> {
    let path = town_dir.join(GATEWAY_ENV_FILE);
    match token {
        Some(token) if !is_plain_token(token) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the gateway token holds characters a token does not",
        )),
        Some(token) => {
            if let Some(agent) = agent {
                pass_dir(town_dir, agent)?;
            }
            write_atomic(
                &path,
                format!("{GATEWAY_TOKEN_ENV}={token}\n").as_bytes(),
                GATEWAY_ENV_MODE,
                agent,
            )
        }
        None => remove_if_present(&path),
    }
}

/// Writes `<token>\n` to the town's container token file (mode 0600; with an agent user 0640,
/// group the agent's). The token must pass [`is_plain_token`].
///
/// # Errors
/// A filesystem failure, or `InvalidInput` for a token that is not plain.
pub fn write_container_token(
    town_dir: &Path,
    token: &str,
    agent: Option<AgentUser>,
) -> io::Result<()> {
    if !is_plain_token(token) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the container token holds characters a token does not",
        ));
    }
    if let Some(agent) = agent {
        pass_dir(town_dir, agent)?;
    }
    write_atomic(
        &town_dir.join(CONTAINER_TOKEN_FILE),
        format!("{token}\n").as_bytes(),
        SECRET_MODE,
        agent,
    )
}

/// The town's container token as [`write_container_token`] left it.
///
/// # Errors
/// A filesystem failure (`NotFound` when the town has none), or `InvalidData` for a file that
/// does not hold one plain token.
pub fn read_container_token(town_dir: &Path) -> io::Result<String> {
    let text = fs::read_to_string(town_dir.join(CONTAINER_TOKEN_FILE))?;
    let token = text.strip_suffix('\n').unwrap_or(&text);
    if is_plain_token(token) {
        Ok(token.to_owned())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the container token file does not hold a token",
        ))
    }
}

/// Removes what the town's directory holds of credentials: the gateway env file, the
/// container token file and the git token cache. The settings files and the gitconfig stay.
///
/// # Errors
/// The first filesystem failure other than a file already gone.
pub fn remove_credentials(town_dir: &Path) -> io::Result<()> {
    remove_if_present(&town_dir.join(GATEWAY_ENV_FILE))?;
    remove_if_present(&town_dir.join(CONTAINER_TOKEN_FILE))?;
    let cache = town_dir.join(GIT_TOKENS_DIR);
    match fs::symlink_metadata(&cache) {
        // `remove_dir_all` removes a symbolic link inside it, never what the link names.
        Ok(m) if m.is_dir() => fs::remove_dir_all(&cache),
        Ok(_) => fs::remove_file(&cache),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `<town>/.git-tokens/<rig>.json`. The rig id must be a plain id (the caller checks it).
#[must_use]
pub fn git_token_cache_path(town_dir: &Path, rig: &str) -> PathBuf {
    town_dir.join(GIT_TOKENS_DIR).join(format!("{rig}.json"))
}

/// The cached git token of a rig, `None` when there is none or the file is not one (a file
/// that cannot be used is as good as none: the caller fetches a new token).
#[must_use]
pub fn read_git_token_cache(town_dir: &Path, rig: &str) -> Option<GitTokenReply> {
    let path = git_token_cache_path(town_dir, rig);
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > MAX_CACHE_BYTES {
        return None;
    }
    let cached: GitTokenReply = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
    is_plain_token(&cached.token).then_some(cached)
}

/// Caches a rig's git token: the file (mode 0600) is replaced atomically, in a directory of
/// mode 0700. The token must pass [`is_plain_token`].
///
/// # Errors
/// A filesystem failure, or `InvalidInput` for a token that is not plain.
pub fn write_git_token_cache(town_dir: &Path, rig: &str, reply: &GitTokenReply) -> io::Result<()> {
    if !is_plain_token(&reply.token) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the git token holds characters a token does not",
        ));
    }
    private_dir(&town_dir.join(GIT_TOKENS_DIR))?;
    let json = serde_json::to_vec(reply).map_err(io::Error::other)?;
    // Written by whoever runs the helper (the agent user, when there is one): no chown.
    write_atomic(
        &git_token_cache_path(town_dir, rig),
        &json,
        SECRET_MODE,
        None,
    )
}

/// Removes a rig's cached git token, if any.
///
/// # Errors
/// A filesystem failure other than the file being gone already.
pub fn remove_git_token_cache(town_dir: &Path, rig: &str) -> io::Result<()> {
    remove_if_present(&git_token_cache_path(town_dir, rig))
}

/// Creates `dir` (mode 0700) if missing, replacing anything there that is not a real
/// directory, and takes its mode down to 0700 if it is more open. Run by the helper as the
/// agent user, it finds the cache directory the server gave that user (0700 already) and
/// changes nothing.
fn private_dir(dir: &Path) -> io::Result<()> {
    if fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(dir)?;
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, SECRET_DIR_MODE);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if fs::metadata(dir)?.permissions().mode() & 0o777 != SECRET_DIR_MODE {
            fs::set_permissions(dir, fs::Permissions::from_mode(SECRET_DIR_MODE))?;
        }
    }
    Ok(())
}

/// The town's gitconfig: a `[credential]` section that first clears any helper named by the
/// system's config (so no `store` helper ever writes a token to disk), then names `exe`'s
/// `git-credential` subcommand with the work directory, the town and (when known) the
/// worker's origin, so an agent session needs only `GIT_CONFIG_GLOBAL` and `GASTOWN_RIG_ID`.
/// `useHttpPath` makes git pass the repository's path too.
///
/// `None` when a path or id holds a character git's config or the shell cannot carry
/// (a control character, not UTF-8).
#[must_use]
pub fn gitconfig_text(
    exe: &Path,
    workdir: &Path,
    town: &str,
    worker_url: Option<&str>,
    ca_file: Option<&Path>,
) -> Option<String> {
    let mut words = vec![
        exe.to_str()?,
        GIT_CREDENTIAL_SUBCOMMAND,
        "--workdir",
        workdir.to_str()?,
        "--town",
        town,
    ];
    if let Some(url) = worker_url {
        words.extend(["--worker-url", url]);
    }
    if words.iter().any(|w| w.chars().any(char::is_control)) {
        return None;
    }
    // git runs a helper starting with `!` through the shell, with the action appended.
    let command: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    let helper = format!("!{}", command.join(" "));
    let mut text = format!(
        "# Written by gastown-control for town {town} (kept up to date on each token refresh).\n\
         # No token lives here: git asks the helper for one per operation.\n\
         [credential]\n\
         \thelper =\n\
         \thelper = {}\n\
         \tuseHttpPath = true\n",
        git_config_quote(&helper)
    );
    if let Some(ca) = ca_file {
        let ca = ca.to_str().filter(|p| !p.chars().any(char::is_control))?;
        text.push_str(&format!("[http]\n\tsslCAInfo = {}\n", git_config_quote(ca)));
    }
    Some(text)
}

/// The town's `gh` shim: a POSIX shell script that runs `exe`'s `gh` subcommand with the work
/// directory, the town and (when known) the worker's origin and the real `gh`'s path, then
/// `--` and the arguments it was given. `gastown-control gh` sets `GH_TOKEN` for that one run
/// of `gh` and execs the real one (see [`crate::gh`]). No token lives in it.
///
/// `None` when a path or id holds a character the shell cannot carry (a control character,
/// not UTF-8), or when the work directory's path holds a `:` (its `bin/` could not be on a
/// `PATH`).
#[must_use]
pub fn gh_shim_text(
    exe: &Path,
    workdir: &Path,
    town: &str,
    worker_url: Option<&str>,
    gh_path: Option<&Path>,
) -> Option<String> {
    let workdir_text = workdir.to_str()?;
    if workdir_text.contains(':') {
        return None;
    }
    let mut words = vec![
        exe.to_str()?,
        GH_SUBCOMMAND,
        "--workdir",
        workdir_text,
        "--town",
        town,
    ];
    if let Some(url) = worker_url {
        words.extend(["--worker-url", url]);
    }
    if let Some(path) = gh_path {
        words.extend(["--gh-path", path.to_str()?]);
    }
    words.push("--");
    if words.iter().any(|w| w.chars().any(char::is_control)) {
        return None;
    }
    let command: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    Some(format!(
        "#!/bin/sh\n\
         # Written by gastown-control for town {town} (kept up to date on each token refresh).\n\
         # No token lives here: each run of gh gets GH_TOKEN from `gastown-control gh`.\n\
         exec {} \"$@\"\n",
        command.join(" ")
    ))
}

/// The town's `gt` shim: a POSIX shell script that runs `exe`'s `gt` subcommand with the
/// arguments it was given; the session comes from the agent's env. `None` for a path the
/// shell cannot carry.
#[must_use]
pub fn gt_shim_text(exe: &Path) -> Option<String> {
    let exe = exe.to_str().filter(|e| !e.chars().any(char::is_control))?;
    Some(format!(
        "#!/bin/sh
         # Written by gastown-control: the agents' tool (gt --help). No token lives here.
         exec {} {} \"$@\"
",
        shell_quote(exe),
        shell_quote(crate::gt::GT_SUBCOMMAND)
    ))
}

/// Writes one of the town's shims, `<town>/bin/<name>` (mode 0755; with an agent user 0750,
/// group the agent's, in a `bin/` of mode 0710), when it is missing or differs from `text`
/// (with an agent user: or does not have that group and mode).
///
/// # Errors
/// A filesystem failure.
pub fn write_shim(
    town_dir: &Path,
    name: &str,
    text: &str,
    agent: Option<AgentUser>,
) -> io::Result<()> {
    let bin = town_dir.join(BIN_DIR);
    if let Some(agent) = agent {
        pass_dir(town_dir, agent)?;
        pass_dir(&bin, agent)?;
    }
    let path = bin.join(name);
    if fs::symlink_metadata(&path)
        .is_ok_and(|m| m.is_file() && agent.is_none_or(|a| has_group_mode(&m, a, AGENT_EXEC_MODE)))
        && fs::read(&path).is_ok_and(|old| old == text.as_bytes())
    {
        return Ok(());
    }
    write_atomic_as(
        &path,
        text.as_bytes(),
        SHIM_MODE,
        agent.map(|a| (a, AGENT_EXEC_MODE)),
    )
}

/// `word` in single quotes for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `value` as a double-quoted git config value.
fn git_config_quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', r"\\").replace('"', r#"\""#))
}

/// Writes the town's gitconfig when it is missing or differs from `text` (with an agent user:
/// or is not yet readable by the agent's group as the module docs say).
///
/// # Errors
/// A filesystem failure.
pub fn write_gitconfig(town_dir: &Path, text: &str, agent: Option<AgentUser>) -> io::Result<()> {
    let path = town_dir.join(GITCONFIG_FILE);
    if let Some(agent) = agent {
        pass_dir(town_dir, agent)?;
    }
    if fs::symlink_metadata(&path)
        .is_ok_and(|m| m.is_file() && agent.is_none_or(|a| has_group_mode(&m, a, AGENT_READ_MODE)))
        && fs::read(&path).is_ok_and(|old| old == text.as_bytes())
    {
        return Ok(());
    }
    write_atomic(&path, text.as_bytes(), SETTINGS_MODE, agent)
}

/// Creates the work directory (and its parents) if missing; with an agent user, a work
/// directory it creates is the server's, group the agent's, mode 0710. An existing one is
/// left as it is.
///
/// # Errors
/// A filesystem failure.
pub fn create_root(dir: &Path, agent: Option<AgentUser>) -> io::Result<()> {
    let missing = fs::symlink_metadata(dir).is_err();
    fs::create_dir_all(dir)?;
    match agent {
        Some(agent) if missing => set_group_mode(dir, agent.gid(), AGENT_PASS_MODE),
        _ => Ok(()),
    }
}

/// Makes `dir` a directory the agent passes through: a real directory (anything else there is
/// replaced), created if missing, group the agent's, mode 0710.
///
/// # Errors
/// A filesystem failure.
pub fn pass_dir(dir: &Path, agent: AgentUser) -> io::Result<()> {
    let meta = real_dir_meta(dir)?;
    if has_group_mode(&meta, agent, AGENT_PASS_MODE) {
        return Ok(());
    }
    set_group_mode(dir, agent.gid(), AGENT_PASS_MODE)
}

/// Makes `dir` the agent's own: a real directory (anything else there is replaced), created if
/// missing, owned by the agent's uid and gid, mode 0700. Only the directory itself changes
/// hands, not what it holds.
///
/// # Errors
/// A filesystem failure.
pub fn agent_dir(dir: &Path, agent: AgentUser) -> io::Result<()> {
    let meta = real_dir_meta(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if meta.uid() != agent.uid() || meta.gid() != agent.gid() {
            // `lchown`: should `dir` have been swapped for a link meanwhile, the link changes
            // hands, never what it names.
            std::os::unix::fs::lchown(dir, Some(agent.uid()), Some(agent.gid()))?;
        }
        if meta.mode() & 0o7777 != SECRET_DIR_MODE {
            fs::set_permissions(dir, fs::Permissions::from_mode(SECRET_DIR_MODE))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (meta, agent);
    Ok(())
}

/// The metadata of `dir` once it is a real directory: anything else there is removed, and
/// the directory (with its parents) created if missing.
fn real_dir_meta(dir: &Path) -> io::Result<fs::Metadata> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(m),
        Ok(_) => fs::remove_file(dir)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        Ok(meta)
    } else {
        Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )))
    }
}

/// Whether `meta` has the agent's group and exactly `mode`.
fn has_group_mode(meta: &fs::Metadata, agent: AgentUser, mode: u32) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.gid() == agent.gid() && meta.mode() & 0o7777 == mode
    }
    #[cfg(not(unix))]
    {
        let _ = (meta, agent, mode);
        true
    }
}

/// Gives `path` the group `gid` (its owner unchanged) and exactly `mode`.
fn set_group_mode(path: &Path, gid: u32, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::lchown(path, None, Some(gid))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, gid, mode);
        Ok(())
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
/// elsewhere. With an agent user the new file gets the agent's group and mode 0640 before the
/// rename, so a reader never meets the file with another mode.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32, agent: Option<AgentUser>) -> io::Result<()> {
    write_atomic_as(path, bytes, mode, agent.map(|a| (a, AGENT_READ_MODE)))
}

/// [`write_atomic`] with the agent user's mode given: `Some((agent, mode))` makes the new file
/// the agent's group's with that mode before the rename.
fn write_atomic_as(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    agent: Option<(AgentUser, u32)>,
) -> io::Result<()> {
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
        let mut file = open_with_mode(&mut options, mode, &temp)?;
        #[cfg(unix)]
        if let Some((agent, agent_mode)) = agent {
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::fchown(&file, None, Some(agent.gid()))?;
            file.set_permissions(fs::Permissions::from_mode(agent_mode))?;
        }
        #[cfg(not(unix))]
        let _ = agent;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Opens `path` with `options`, a file it creates getting `mode` (on Unix; elsewhere the
/// system's default).
pub(crate) fn open_with_mode(
    options: &mut OpenOptions,
    mode: u32,
    path: &Path,
) -> io::Result<File> {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
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
        write_settings(&dir, &files, None).unwrap();
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
        write_settings(&dir, &only_r2, None).unwrap();
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
        write_settings(&dir, &files, None).unwrap();
        assert!(is_real_dir(&dir.join("r1/settings")));
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[test]
    fn container_token_file_is_one_plain_line() {
        let dir = temp_dir("ctok");
        write_container_token(&dir, "c.t-1", None).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(CONTAINER_TOKEN_FILE)).unwrap(),
            "c.t-1\n"
        );
        assert_eq!(read_container_token(&dir).unwrap(), "c.t-1");
        let refused = write_container_token(&dir, "a\nb", None).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        fs::write(dir.join(CONTAINER_TOKEN_FILE), "a b\n").unwrap();
        assert_eq!(
            read_container_token(&dir).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn removing_the_credentials_never_follows_a_link() {
        let dir = temp_dir("creds");
        let elsewhere = temp_dir("creds-elsewhere");
        fs::write(elsewhere.join("keep.json"), "{}").unwrap();
        write_container_token(&dir, "c", None).unwrap();
        write_gateway_env(&dir, Some("g"), None).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(GIT_TOKENS_DIR)).unwrap();
        remove_credentials(&dir).unwrap();
        assert!(!dir.join(CONTAINER_TOKEN_FILE).exists());
        assert!(!dir.join(GATEWAY_ENV_FILE).exists());
        assert!(fs::symlink_metadata(dir.join(GIT_TOKENS_DIR)).is_err());
        assert!(elsewhere.join("keep.json").exists());
        // Nothing left to remove is fine.
        remove_credentials(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_git_token_cache_is_private_even_in_an_open_directory() {
        use gastown_core::control::GitTokenSource;
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("cache");
        fs::create_dir_all(dir.join(GIT_TOKENS_DIR)).unwrap();
        fs::set_permissions(dir.join(GIT_TOKENS_DIR), fs::Permissions::from_mode(0o755)).unwrap();
        let reply = GitTokenReply {
            token: "ghs_1".into(),
            expires_at: 5,
            source: GitTokenSource::TownConfig,
            identity: None,
            host: None,
        };
        write_git_token_cache(&dir, "r", &reply).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(GIT_TOKENS_DIR)), 0o700);
        assert_eq!(mode(&git_token_cache_path(&dir, "r")), 0o600);
        assert_eq!(read_git_token_cache(&dir, "r"), Some(reply));
        assert_eq!(read_git_token_cache(&dir, "other"), None);
        remove_git_token_cache(&dir, "r").unwrap();
        assert_eq!(read_git_token_cache(&dir, "r"), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `nobody`'s ids: changing a file's group to them needs root.
    #[cfg(unix)]
    fn nobody() -> Option<AgentUser> {
        if crate::agent_user::server_uid() != Some(0) {
            eprintln!("skipped: changing owners needs root");
            return None;
        }
        Some(AgentUser::new(65534, 65534).unwrap())
    }

    #[cfg(unix)]
    fn owner_mode(path: &Path) -> (u32, u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(path).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    }

    #[cfg(unix)]
    #[test]
    fn with_an_agent_user_its_group_passes_through_and_reads() {
        use std::os::unix::fs::PermissionsExt;
        let Some(agent) = nobody() else { return };
        let root = temp_dir("agent-root");
        let workdir = root.join("work");
        create_root(&workdir, Some(agent)).unwrap();
        assert_eq!(owner_mode(&workdir), (0, 65534, 0o710));
        // An existing work directory is left as it is.
        fs::set_permissions(&workdir, fs::Permissions::from_mode(0o755)).unwrap();
        create_root(&workdir, Some(agent)).unwrap();
        assert_eq!(owner_mode(&workdir).2, 0o755);

        let town = workdir.join("town-a");
        let files = SettingsFiles {
            town: settings("t"),
            rigs: [("r1".into(), settings("a"))].into(),
        };
        write_settings(&town, &files, Some(agent)).unwrap();
        write_container_token(&town, "c.t", Some(agent)).unwrap();
        write_gateway_env(&town, Some("g.t"), Some(agent)).unwrap();
        write_gitconfig(&town, "[credential]\n", Some(agent)).unwrap();
        for dir in ["", "settings", "r1", "r1/settings"] {
            assert_eq!(owner_mode(&town.join(dir)), (0, 65534, 0o710), "{dir:?}");
        }
        for file in [
            SETTINGS_FILE,
            "r1/settings/config.json",
            CONTAINER_TOKEN_FILE,
            GATEWAY_ENV_FILE,
            GITCONFIG_FILE,
        ] {
            assert_eq!(owner_mode(&town.join(file)), (0, 65534, 0o640), "{file}");
        }

        // A gitconfig of the right content but left by a run without an agent user is
        // rewritten; a town dir opened up meanwhile is closed again on the next write.
        fs::remove_file(town.join(GITCONFIG_FILE)).unwrap();
        write_gitconfig(&town, "[credential]\n", None).unwrap();
        fs::set_permissions(&town, fs::Permissions::from_mode(0o755)).unwrap();
        write_gitconfig(&town, "[credential]\n", Some(agent)).unwrap();
        assert_eq!(owner_mode(&town.join(GITCONFIG_FILE)), (0, 65534, 0o640));
        assert_eq!(owner_mode(&town), (0, 65534, 0o710));

        // The agent's own directory: taken over from whoever had it, not its content.
        let cache = town.join(GIT_TOKENS_DIR);
        fs::create_dir(&cache).unwrap();
        fs::write(cache.join("old.json"), "{}").unwrap();
        agent_dir(&cache, agent).unwrap();
        assert_eq!(owner_mode(&cache), (65534, 65534, 0o700));
        assert_eq!(owner_mode(&cache.join("old.json")).0, 0);
        // A link there is replaced, never followed.
        let elsewhere = temp_dir("agent-elsewhere");
        let link = town.join("agents");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        pass_dir(&link, agent).unwrap();
        assert_eq!(owner_mode(&link), (0, 65534, 0o710));
        assert_eq!(owner_mode(&elsewhere).1, 0);
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[test]
    fn the_gitconfig_quotes_for_git_and_the_shell() {
        let text = gitconfig_text(
            Path::new("/opt/it's \"here\"/gastown-control"),
            Path::new("/w"),
            "t",
            None,
            None,
        )
        .unwrap();
        assert!(
            text.contains(
                r#"helper = "!'/opt/it'\\''s \"here\"/gastown-control' 'git-credential' '--workdir' '/w' '--town' 't'""#
            ),
            "{text}"
        );
        assert!(
            text.contains("\thelper =\n"),
            "the system's helpers are cleared"
        );
        assert!(gitconfig_text(Path::new("/a"), Path::new("/w\tx"), "t", None, None).is_none());
        assert!(
            !text.contains("[http]"),
            "the system's certificates by default"
        );
        let with_ca = gitconfig_text(
            Path::new("/opt/gastown-control"),
            Path::new("/w"),
            "t",
            None,
            Some(Path::new("/etc/ca \"x\".pem")),
        )
        .unwrap();
        assert!(
            with_ca.ends_with("[http]\n\tsslCAInfo = \"/etc/ca \\\"x\\\".pem\"\n"),
            "{with_ca}"
        );
        let bad = Path::new("/etc/a\nb.pem");
        assert!(gitconfig_text(Path::new("/a"), Path::new("/w"), "t", None, Some(bad)).is_none());
    }

    #[test]
    fn the_gh_shim_execs_the_subcommand_with_every_word_quoted() {
        let text = gh_shim_text(
            Path::new("/opt/it's/gastown-control"),
            Path::new("/w"),
            "t",
            Some("http://127.0.0.1:8787"),
            Some(Path::new("/usr/bin/gh")),
        )
        .unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{text}");
        assert!(
            text.ends_with(
                "\nexec '/opt/it'\\''s/gastown-control' 'gh' '--workdir' '/w' '--town' 't' \
                 '--worker-url' 'http://127.0.0.1:8787' '--gh-path' '/usr/bin/gh' '--' \"$@\"\n"
            ),
            "{text}"
        );
        let bare = gh_shim_text(Path::new("/a"), Path::new("/w"), "t", None, None).unwrap();
        assert!(
            bare.ends_with("exec '/a' 'gh' '--workdir' '/w' '--town' 't' '--' \"$@\"\n"),
            "{bare}"
        );
        // What a shell or a PATH cannot carry.
        assert!(gh_shim_text(Path::new("/a\nb"), Path::new("/w"), "t", None, None).is_none());
        assert!(gh_shim_text(Path::new("/a"), Path::new("/w:x"), "t", None, None).is_none());
        assert!(gh_shim_text(Path::new("/a"), Path::new("/w"), "t\r", None, None).is_none());
    }

    #[cfg(unix)]
    #[test]
    fn the_gh_shim_is_rewritten_only_when_it_changes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("shim");
        let path = dir.join(BIN_DIR).join(GH_SHIM_FILE);
        write_shim(&dir, GH_SHIM_FILE, "#!/bin/sh\nexec a\n", None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexec a\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o700, 0o700, "its owner runs it: {mode:o}");
        assert_eq!(mode & 0o022, 0, "only its owner changes it: {mode:o}");
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&path);
        write_shim(&dir, GH_SHIM_FILE, "#!/bin/sh\nexec a\n", None).unwrap();
        assert_eq!(inode(&path), before, "the same text is left alone");
        write_shim(&dir, GH_SHIM_FILE, "#!/bin/sh\nexec b\n", None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexec b\n");
        // A link in its place is replaced, never followed.
        let elsewhere = temp_dir("shim-elsewhere");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("target"), &path).unwrap();
        write_shim(&dir, GH_SHIM_FILE, "#!/bin/sh\nexec c\n", None).unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
        assert!(!elsewhere.join("target").exists());
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn with_an_agent_user_the_gh_shim_is_the_servers_and_runnable_by_the_agent() {
        let Some(agent) = nobody() else { return };
        let dir = temp_dir("shim-agent");
        write_shim(&dir, GH_SHIM_FILE, "#!/bin/sh\n", Some(agent)).unwrap();
        assert_eq!(owner_mode(&dir), (0, 65534, 0o710));
        assert_eq!(owner_mode(&dir.join(BIN_DIR)), (0, 65534, 0o710));
        assert_eq!(
            owner_mode(&dir.join(BIN_DIR).join(GH_SHIM_FILE)),
            (0, 65534, 0o750)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gateway_env_is_one_line_private_and_removable() {
        let dir = temp_dir("gateway");
        write_gateway_env(&dir, Some("a.b.c"), None).unwrap();
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
        let refused = write_gateway_env(&dir, Some("x\nrm -rf /"), None).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(fs::read_to_string(&path).unwrap(), "KILO_JWT=a.b.c\n");
        write_gateway_env(&dir, None, None).unwrap();
        assert!(!path.exists());
        write_gateway_env(&dir, None, None).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}

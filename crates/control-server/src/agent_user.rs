//! The unprivileged user the agents run as (`--agent-uid` and `--agent-gid`, or
//! [`AGENT_UID_ENV`] and [`AGENT_GID_ENV`]), and the start-up checks that it can work.
//!
//! With an agent user, the server (root) starts every agent with that uid and gid and no
//! supplementary group (std's `CommandExt::uid`/`gid` drop them when the parent is root), so
//! an agent can read neither the server's memory nor its `/proc/<pid>/environ`. The town's
//! files are then laid out for that user (see [`crate::workdir`]): the agent reads what it is
//! given by name through directories of the server's that only its group may pass through,
//! and owns only its work dir and the git token cache.
//!
//! Invariants:
//!
//! * an [`AgentUser`] is never root: uid and gid 0 are refused, and so is 4294967295
//!   (`(uid_t)-1`, which `chown` reads as "leave unchanged");
//! * the uid and gid come both or neither;
//! * one agent user serves every town of a server: in production a container runs one town,
//!   and in local dev (several towns, one server) the agents of different towns are not kept
//!   apart from each other, only from the server.

use std::io;
use std::path::{Path, PathBuf};

/// Names the agents' uid when `--agent-uid` does not.
pub const AGENT_UID_ENV: &str = "GASTOWN_AGENT_UID";
/// Names the agents' gid when `--agent-gid` does not.
pub const AGENT_GID_ENV: &str = "GASTOWN_AGENT_GID";

/// The uid and gid every agent runs as; never root's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentUser {
    uid: u32,
    gid: u32,
}

impl AgentUser {
    /// # Errors
    /// For root's uid or gid, or the id `chown` reads as "unchanged".
    pub fn new(uid: u32, gid: u32) -> Result<AgentUser, String> {
        for (name, id) in [("uid", uid), ("gid", gid)] {
            if id == 0 {
                return Err(format!("the agent {name} must not be root's (0)"));
            }
            if id == u32::MAX {
                return Err(format!("the agent {name} {id} is no id"));
            }
        }
        Ok(AgentUser { uid, gid })
    }

    /// From the values of `--agent-uid` and `--agent-gid` (each already fallen back to its
    /// variable): both or neither. `uid_from` and `gid_from` name where each came from, for the
    /// message.
    ///
    /// # Errors
    /// A message for the operator naming the option or variable.
    pub fn from_values(
        uid: Option<(&str, &str)>,
        gid: Option<(&str, &str)>,
    ) -> Result<Option<AgentUser>, String> {
        let number = |(from, text): (&str, &str)| {
            text.trim()
                .parse::<u32>()
                .map_err(|_| format!("{from} needs a numeric id, not {text:?}"))
        };
        match (uid, gid) {
            (None, None) => Ok(None),
            (Some(uid), Some(gid)) => AgentUser::new(number(uid)?, number(gid)?).map(Some),
            (Some((from, _)), None) | (None, Some((from, _))) => Err(format!(
                "{from} needs its pair: set both --agent-uid and --agent-gid (or \
                 {AGENT_UID_ENV} and {AGENT_GID_ENV}), or neither"
            )),
        }
    }

    #[must_use]
    pub fn uid(self) -> u32 {
        self.uid
    }

    #[must_use]
    pub fn gid(self) -> u32 {
        self.gid
    }

    /// Whether the agent may pass through (search) a directory of this owner, group and mode,
    /// by the mode bits as the kernel reads them: the owner's bits for the owner, else the
    /// group's for the group (the agent has no other group), else the others'.
    #[must_use]
    pub fn may_pass(self, owner: u32, group: u32, mode: u32) -> bool {
        let bit = if owner == self.uid {
            0o100
        } else if group == self.gid {
            0o010
        } else {
            0o001
        };
        mode & bit != 0
    }

    /// The first directory from `/` down to `dir` (included) the agent may not pass through,
    /// by [`AgentUser::may_pass`]; `None` when it reaches `dir`. `dir` should be canonical
    /// (a symbolic link on the way is judged as the directory it names).
    ///
    /// # Errors
    /// When a directory on the way cannot be looked at.
    #[cfg(unix)]
    pub fn first_closed_dir(self, dir: &Path) -> io::Result<Option<PathBuf>> {
        use std::os::unix::fs::MetadataExt;
        for step in dir.ancestors().collect::<Vec<_>>().into_iter().rev() {
            let meta = std::fs::metadata(step)?;
            if !self.may_pass(meta.uid(), meta.gid(), meta.mode()) {
                return Ok(Some(step.to_path_buf()));
            }
        }
        Ok(None)
    }

    /// Without Unix ids nothing can be checked.
    ///
    /// # Errors
    /// Never.
    #[cfg(not(unix))]
    pub fn first_closed_dir(self, _dir: &Path) -> io::Result<Option<PathBuf>> {
        Ok(None)
    }
}

/// The uid this process runs as, when the system says (Linux: the owner of `/proc/self`).
#[must_use]
pub fn server_uid() -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").ok().map(|m| m.uid())
    }
    #[cfg(not(unix))]
    None
}

/// Checks, at start-up, that the server can start agents as another user: it must be root (to
/// change uid, and to give the agent its directories).
///
/// # Errors
/// A message for the operator.
pub fn check_server() -> Result<(), String> {
    if !cfg!(unix) {
        return Err("--agent-uid needs a Unix system".to_owned());
    }
    match server_uid() {
        Some(uid) if uid != 0 => Err(format!(
            "--agent-uid needs the server to run as root (it runs as uid {uid}): only root \
             can start a process as another user"
        )),
        _ => Ok(()),
    }
}

/// Checks, at start-up, that `agent` can pass through every directory from `/` down to the
/// work directory `workdir` (canonical).
///
/// # Errors
/// A message for the operator naming the first directory it cannot pass.
pub fn check_workdir(agent: AgentUser, workdir: &Path) -> Result<(), String> {
    let closed = agent
        .first_closed_dir(workdir)
        .map_err(|e| format!("cannot look at the work directory's path: {e}"))?;
    match closed {
        Some(dir) => Err(format!(
            "the agent user (uid {}, gid {}) cannot pass through {}: it needs o+x there, or \
             g+x with group {}",
            agent.uid,
            agent.gid,
            dir.display(),
            agent.gid
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_root_nor_the_unchanged_id() {
        assert!(AgentUser::new(10001, 10001).is_ok());
        assert!(AgentUser::new(0, 10001).is_err());
        assert!(AgentUser::new(10001, 0).is_err());
        assert!(AgentUser::new(u32::MAX, 1).is_err());
        assert!(AgentUser::new(1, u32::MAX).is_err());
    }

    #[test]
    fn both_or_neither() {
        let uid = Some(("--agent-uid", "10001"));
        let gid = Some(("--agent-gid", "10002"));
        assert_eq!(AgentUser::from_values(None, None), Ok(None));
        let user = AgentUser::from_values(uid, gid).unwrap().unwrap();
        assert_eq!((user.uid(), user.gid()), (10001, 10002));
        assert!(AgentUser::from_values(uid, None)
            .unwrap_err()
            .contains("--agent-uid"));
        assert!(AgentUser::from_values(None, Some((AGENT_GID_ENV, "5")))
            .unwrap_err()
            .contains(AGENT_GID_ENV));
        for bad in ["", "x", "-1", "1.5", "0", "4294967296"] {
            assert!(
                AgentUser::from_values(Some(("--agent-uid", bad)), gid).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn passing_through_reads_the_bits_of_the_first_class_that_matches() {
        let agent = AgentUser::new(100, 200).unwrap();
        // Owner root, group the agent's.
        assert!(agent.may_pass(0, 200, 0o710));
        assert!(
            !agent.may_pass(0, 200, 0o701),
            "the group's bits, not the others'"
        );
        assert!(!agent.may_pass(0, 0, 0o710));
        assert!(agent.may_pass(0, 0, 0o711));
        assert!(agent.may_pass(0, 0, 0o755));
        assert!(!agent.may_pass(0, 0, 0o700));
        // The agent's own.
        assert!(agent.may_pass(100, 0, 0o700));
        assert!(
            !agent.may_pass(100, 200, 0o070),
            "the owner's bits, not the group's"
        );
    }
}

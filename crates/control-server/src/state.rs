//! What the control server holds in memory: its configuration, each town's container token,
//! env and self-refresh counts, the failures injected through `/debug/fail`, the towns' agent
//! processes and whether the eviction drain began, all behind [`Shared`], which every handler,
//! the self-refresh thread and the drain's thread receive.
//!
//! Lock order: the agents' registry, then the state, never the other way round. The state's
//! lock is also held while a town's files are written, so the files and the state never
//! disagree; it is never held across a call to the worker.

use crate::agents;
use crate::http::{error, Reply};
use crate::self_refresh;
use crate::server::Config;
use crate::workdir;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// What the server holds for one town.
#[derive(Default)]
pub(crate) struct Town {
    /// The container token from the last `/refresh-token`.
    pub(crate) token: Option<String>,
    pub(crate) token_updates: u64,
    /// The env from the last `/sync-config`, with `KILO_JWT` replaced by each self-refresh.
    pub(crate) env: BTreeMap<String, String>,
    /// Syncs only: the self-refresh does not count, so `had_env` stays a worker's matter.
    pub(crate) env_updates: u64,
    pub(crate) gateway_refresh: self_refresh::Counts,
}

/// Everything the server holds for the towns.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) towns: HashMap<String, Town>,
    #[cfg(feature = "debug-routes")]
    pub(crate) fail: crate::debug::FailModes,
}

/// What every connection's thread and the self-refresh thread share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Also held while a town's files are written, so the files and `towns` never disagree
    /// (the files are small; the self-refresh never holds it across a call to the worker).
    pub(crate) state: Mutex<State>,
    /// The towns' agent processes (locked before `state` when both are needed).
    pub(crate) agents: agents::Registry,
    /// Set once, when the eviction drain begins (`crate::drain`); never cleared.
    pub(crate) draining: AtomicBool,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic never leaves the state half-written (every update is a few assignments).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the eviction drain began: no agent starts any more.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// `<workdir>/<town>`.
    pub(crate) fn town_dir(&self, town: &str) -> Result<PathBuf, Reply> {
        workdir::town_dir(&self.config.workdir, town)
            .ok_or_else(|| error(400, "town id cannot name a directory"))
    }
}

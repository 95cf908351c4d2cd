//! What every integration test of this crate shares: the harness (`harness.rs`, which the
//! tests of `gastown-standins` share too) and this crate's binaries.

#![allow(dead_code)] // each test file uses its own part of the harness

mod harness;

use gastown_core::control::KEY_ENV;
pub use harness::*;

pub const DEBUG_BIN: &str = env!("CARGO_BIN_EXE_gastown-control-debug");
pub const PROD_BIN: &str = env!("CARGO_BIN_EXE_gastown-control");

/// The debug server in local-dev mode (master key), with a short read deadline.
pub fn debug_server() -> Server {
    start(DEBUG_BIN, &[(KEY_ENV, KEY)], &["--read-timeout-ms", "1500"])
}

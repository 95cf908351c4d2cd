//! What every integration test of this crate shares: the control server's test harness (one
//! file, `crates/control-server/tests/common/harness.rs`, included here so that both crates'
//! tests drive their binaries the same way) and this crate's binaries.

#![allow(dead_code)] // each test file uses its own part of the harness

#[path = "../../../control-server/tests/common/harness.rs"]
mod harness;

pub use harness::*;
use std::path::{Path, PathBuf};

pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_gastown-gateway");
pub const DEMO_BIN: &str = env!("CARGO_BIN_EXE_gastown-demo-agent");

/// `gastown-control-debug`, from the target directory this crate's binaries are built in.
/// Cargo builds it there when the control server's tests are built in the same run
/// (`cargo test --workspace`, as `npm test` does, or `-p gastown-control -p gastown-standins`):
/// a package's tests get only their own package's binaries.
pub fn control_debug_bin() -> String {
    let path: PathBuf = Path::new(DEMO_BIN).with_file_name("gastown-control-debug");
    assert!(
        path.is_file(),
        "{} is missing: run these tests with the control server's, as `cargo test --workspace` \
         does",
        path.display()
    );
    path.to_str().unwrap().to_owned()
}

/// Starts the stand-in gateway with `secret` as `NEXTAUTH_SECRET`.
pub fn start_gateway(secret: &str) -> Server {
    let mut cmd = command(GATEWAY_BIN, &[("NEXTAUTH_SECRET", secret)], &[]);
    cmd.args(["--read-timeout-ms", "1500"]);
    spawn(cmd, PathBuf::new())
}

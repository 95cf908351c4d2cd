//! `gastown-gateway`: the stand-in Kilo gateway, for local dev and tests (never deployed); see
//! `gastown_standins::gateway`.
//!
//! Usage: `NEXTAUTH_SECRET=… gastown-gateway [--host 127.0.0.1] [--port 8787]
//! [--read-timeout-ms 5000]`.

fn main() {
    std::process::exit(gastown_standins::gateway::cli_main());
}

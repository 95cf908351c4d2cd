//! `gastown-control`, the production control server of a town's container: see the library
//! docs. It has no debug routes; `--debug` is refused.
//!
//! Usage: `GASTOWN_CONTROL_SECRET=… GASTOWN_TOWN_ID=… gastown-control [--host 127.0.0.1]
//! [--port 8080] [--allowed-host NAME]... [--read-timeout-ms 5000] [--workdir ./gastown-work]
//! [--worker-url URL] [--gateway-refresh-ms 43200000] [--agent-command PATH]` (or
//! `GASTOWN_CONTROL_KEY=…` to serve every town, as local dev does; `GASTOWN_WORKDIR`,
//! `GASTOWN_WORKER_URL` and `GASTOWN_AGENT_COMMAND` stand in for the three options).
//!
//! `gastown-control git-credential <get|store|erase>` and `gastown-control git-token` are the
//! git credential helper of agent sessions (see the library docs); they need no credential.

fn main() {
    std::process::exit(gastown_control::cli_main(
        gastown_control::Build::Production,
    ));
}

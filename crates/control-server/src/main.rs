//! `gastown-control`, the production control server of a town's container: see the library
//! docs. It has no debug routes; `--debug` is refused.
//!
//! Usage: `GASTOWN_CONTROL_SECRET=… GASTOWN_TOWN_ID=… gastown-control [--host 127.0.0.1]
//! [--port 8080] [--allowed-host NAME]... [--read-timeout-ms 5000] [--workdir ./gastown-work]
//! [--worker-url URL] [--gateway-refresh-ms 43200000] [--agent-command PATH]
//! [--agent-uid N --agent-gid N] [--gh-path PATH] [--git-ca-file PATH]
//! [--drain-grace-ms 20000]` (or `GASTOWN_CONTROL_KEY=…` to serve every town, as local dev does;
//! `GASTOWN_WORKDIR`, `GASTOWN_WORKER_URL`, `GASTOWN_AGENT_COMMAND`, `GASTOWN_AGENT_UID`,
//! `GASTOWN_AGENT_GID`, `GASTOWN_GH_PATH`, `GASTOWN_GIT_CA_FILE` and `GASTOWN_DRAIN_GRACE_MS`
//! stand in for the options). On `SIGTERM` (the container's eviction) it drains its agents,
//! saving their work, and exits 0. In
//! the image it runs as root with `--agent-uid 10001 --agent-gid 10001`, so that agents run as
//! the unprivileged `agent`.
//!
//! `gastown-control git-credential <get|store|erase>` and `gastown-control git-token` are the
//! git credential helper of agent sessions, and `gastown-control gh -- ARGS` is their `gh`
//! (see the library docs); they need no credential.

fn main() {
    std::process::exit(gastown_control::cli_main(
        gastown_control::Build::Production,
    ));
}

//! `gastown-demo-agent`: the stand-in coding agent the control server runs by default; see
//! `gastown_standins::demo_agent`. It takes everything from its environment (as
//! `POST /agents/start` sets it) and no arguments.

fn main() {
    std::process::exit(gastown_standins::demo_agent::cli_main());
}

//! `gastown-control-debug`: the control server plus its `/debug/...` routes, for the end-to-end
//! and integration tests only (built with `--features debug-routes`; never in the image). Like
//! `gastown-control`, it is also the git credential helper (`git-credential`, `git-token`) and
//! the agents' `gh` (`gh`).

fn main() {
    std::process::exit(gastown_control::cli_main(gastown_control::Build::Debug));
}

//! `gastown-control`: the control server a town's container runs on port 8080 (DESIGN.md §7).
//! `TownContainerDO` calls it to hand over a fresh container token and the town's env; the
//! processes it will run read both from here, so a refresh reaches them without a restart.
//! The wire contract (bodies, headers, secret derivation) is [`gastown_core::control`].
//!
//! # Routes
//!
//! * `GET /health` → `{"status":"ok"}`, the only route open to anyone;
//! * `POST /refresh-token` `{token, townId}`: the town's container token (see below);
//! * `POST /sync-config` `{env, settings, townId}`: the town's env and settings files;
//! * `POST /stop` `{townId}`: the town's container stops: token, env and credential files
//!   dropped, its agents killed;
//! * `POST /agents/start` (`AgentStartBody`) → `AgentProcessStatus`: runs one agent (503
//!   once the eviction drain began, see below);
//! * `POST /agents/:id/stop` `{townId}` → `{"ok":true,"stopped":<was running>}`;
//! * `GET /agents/:id/status` → `AgentProcessStatus` (404 for an agent never started);
//! * `POST /agents/:id/message` `{townId, text}` → 202: a further message to the agent's running
//!   Kilo session ([`kilo`]; 409 when it has none);
//! * `POST /merge` (`MergeBody`) → `MergeReply`: the refinery's direct merge of a rig's branch
//!   into its base, by the server's own git (see "Merges" below);
//! * with the debug routes only: `GET /debug/towns/:id`, `POST /debug/fail`, `GET /debug/env`.
//!
//! # Who may call it
//!
//! The coding agents run in the same container and can reach this port, so nothing but
//! `GET /health` (which says only `{"status":"ok"}`) is answered without proof that the caller is
//! the worker:
//!
//! * `authorization: Bearer <secret>` and `x-gastown-town-id: <town>`, where the secret is
//!   `control_secret(GASTOWN_CONTROL_KEY, town)`, compared in constant time (401 otherwise);
//! * a body's `townId` equal to that header (403);
//! * in production (one town per container, [`Auth::Town`](auth::Auth::Town)) only the container's own town (403);
//! * `content-type: application/json` on every POST (415), so a browser's cross-site "simple"
//!   request (text/plain, form) is refused before anything is read;
//! * a `Host` on the allow-list (default `container`, `localhost`, `127.0.0.1`, `[::1]`, any
//!   port), so a DNS-rebound page cannot talk to it (421);
//! * a `content-length` of at most 256 KiB (413; 411 without one).
//!
//! # Keeping the secret from the agents
//!
//! The credential arrives in the environment (`GASTOWN_CONTROL_SECRET` + `GASTOWN_TOWN_ID` in
//! production, `GASTOWN_CONTROL_KEY` in local dev and tests) and [`Auth::take_from_env`](auth::Auth::take_from_env) removes
//! it from this process's environment before the first connection is accepted, so a process
//! this server starts later does not inherit it; from then on it lives only in this process's
//! memory. `/proc/<pid>/environ` still shows the environment the process was *started* with,
//! and `/proc/<pid>/mem` shows its memory, but both are readable only by the same user (and
//! root): the agents must run as another, unprivileged user (`agent` in `container/Dockerfile`),
//! never as the server's user and never as root.
//!
//! # The agent user
//!
//! `--agent-uid N --agent-gid N` (or `GASTOWN_AGENT_UID` and `GASTOWN_AGENT_GID`; both or
//! neither, numeric, never 0) make the server, which must then run as root, start every agent
//! with that uid and gid and no supplementary group. The town's files are laid out so that the
//! agent reaches what it reads and nothing else: directories on its way are the server's,
//! group N, mode 0710 (pass through, never list); the files it reads (`.container-token`,
//! `.env.gateway`, `gitconfig`, the settings files) are the server's, group N, mode 0640; the
//! `gh` shim it runs, `bin/gh`, is the server's, group N, mode 0750, in a `bin/` of mode 0710,
//! so the agent can run it but never change it; it owns its work dir and the git token cache
//! `.git-tokens/` (mode 0700), nothing else. A work
//! directory the server creates is made the server's, group N, mode 0710; an existing one is
//! left as it is, but the server refuses to start unless the agent can pass through every
//! directory from `/` down to it. [`workdir`] has the whole layout; [`agent_user`] the rules.
//! Without the options nothing changes hands and the modes are those below.
//!
//! # The town's files
//!
//! Each town's files live in `<workdir>/<townId>/` (`--workdir`, or `GASTOWN_WORKDIR`, default
//! `./gastown-work`, created at start), where every new agent session reads them; see
//! [`workdir`] for the layout and its invariants. Every `POST /sync-config` rewrites them:
//!
//! * `settings/config.json` and `<rigId>/settings/config.json`: the body's `settings`, each an
//!   [`AgentSettings`](gastown_core::agent_settings::AgentSettings) as serde writes it; the file
//!   of a rig the body no longer names is removed. A bad rig id refuses the whole sync (400,
//!   nothing written).
//! * `.env.gateway`: `KILO_JWT=<token>` and a newline, mode 0600 (0640, group the agent's,
//!   with an agent user), while the synced env holds `KILO_JWT` (non-empty); removed when it
//!   does not. A `KILO_JWT` with characters no token has (a newline, a space, `$`, …) refuses
//!   the whole sync (400), since shells source the file.
//!
//! Each file is replaced atomically. No token is ever logged.
//!
//! # Git credentials for agents
//!
//! No token is ever baked into a git remote: agents' git asks a credential helper for one per
//! operation. On every `POST /refresh-token` the server also writes, in the town's directory,
//!
//! * `.container-token`: the container token and a newline, mode 0600 (0640, group the
//!   agent's, with an agent user: agents of the town call the worker with it anyway; the
//!   helper, a child of git and not of this server, reads it from here). A token with
//!   characters no token has is refused (400);
//! * `gitconfig` (when missing or different): a `[credential]` section that clears the
//!   helpers of the system's config, names `<this executable> git-credential --workdir
//!   <workdir> --town <town> [--worker-url <worker>]` as the helper (a `!` shell command,
//!   each word single-quoted, the whole double-quoted for git's config) and sets
//!   `useHttpPath = true`. No token lives in it.
//!
//! An agent session points `GIT_CONFIG_GLOBAL` at `<workdir>/<town>/gitconfig` and sets
//! `GASTOWN_RIG_ID` to its rig; then every `git fetch`/`git push` over HTTPS runs
//! `gastown-control git-credential get`, which hands git the rig's token from the cache
//! `<workdir>/<town>/.git-tokens/<rig>.json` while it has more than 5 minutes to live, and
//! otherwise fetches a new one from the worker (`POST <worker>/api/towns/<town>/rigs/<rig>/
//! git-token`, with the container token). `gastown-control git-token` prints the same token
//! alone, for `GIT_TOKEN=$(gastown-control git-token)`. Both subcommands exist in both server
//! binaries and never need or read the server's credential. [`git_credential`] states the
//! rules. `POST /stop` removes `.container-token`, `.env.gateway` and `.git-tokens/`.
//!
//! # `gh` for agents
//!
//! Agents that use the GitHub CLI find `GH_TOKEN` per run of `gh`, never as a copy in their
//! environment. On every `POST /refresh-token` the server also writes `bin/gh` in the town's
//! directory: a shell script that execs `<this executable> gh --workdir <workdir> --town <town>
//! [--worker-url <worker>] [--gh-path <gh>] -- "$@"` (no token in it), and every agent's
//! `PATH` starts with that `bin/`. `gastown-control gh` sets `GH_TOKEN` for that one run: the
//! town's `GITHUB_CLI_PAT` when set, else the rig's current token (the git credential
//! helper's cache and refresh) when it is a GitHub one, else none; then it execs the real `gh`
//! (`--gh-path`, or `GASTOWN_GH_PATH`, else the first `gh` on `PATH` past the shim; none: one
//! line on stderr, exit 127). [`gh`] states the rules.
//!
//! # The gateway token's self-refresh
//!
//! The gateway token (`KILO_JWT`, a sandbox token of 24 h) must not lapse while the town runs,
//! whether or not the worker syncs again. With `--worker-url` (or `GASTOWN_WORKER_URL`), a
//! background thread wakes every `--gateway-refresh-ms` (12 h by default) and, for each town
//! whose container token it holds, asks the worker for a new gateway token with that container
//! token (`POST <worker>/api/towns/<town>/sandbox-token`), then stores it in the town's env and
//! rewrites `.env.gateway`. A failure is logged (the status, never a token) and retried at the
//! next wake. The private module `self_refresh` states the rules.
//!
//! # Agents
//!
//! `POST /agents/start` runs one of the town's agents as a child process of this server (as
//! the agent user when one is configured, see above): the agent command (`--agent-command
//! PATH [ARGS]`, or `GASTOWN_AGENT_COMMAND`, split on whitespace, no shell; by default
//! `gastown-demo-agent` beside this executable) in
//! `<workdir>/<town>/agents/<agentId>/` (emptied on each start; also its `HOME`), stdout and
//! stderr appended to `<workdir>/<town>/agents/<agentId>.log`. Its environment starts empty:
//! `PATH`, the body's `env`, then the server's own variables (which win): `GASTOWN_TOWN_ID`,
//! `GASTOWN_AGENT_ID`, `GASTOWN_AGENT_ROLE`, `GASTOWN_AGENT_NAME`, `GASTOWN_RIG_ID`,
//! `GASTOWN_BEAD_ID`, `GASTOWN_BEAD_TITLE`, `GASTOWN_BEAD_BODY`, `GASTOWN_GIT_URL`,
//! `GASTOWN_DEFAULT_BRANCH`, `GASTOWN_BRANCH`, `GASTOWN_MODEL` (each when known),
//! `GASTOWN_WORKER_URL` (the body's `worker_url`, else `--worker-url`; 400 with neither),
//! `GASTOWN_CONTAINER_TOKEN_FILE`, `GASTOWN_GATEWAY_ENV_FILE`, `GIT_CONFIG_GLOBAL` (when the
//! town has a gitconfig), `HOME` and `GASTOWN_WORK_DIR`; for an org town (the start's
//! `organization_id`) `GASTOWN_ORGANIZATION_ID` and the org id in `KILO_CONFIG_CONTENT` as
//! `provider.kilo.options.kilocodeOrganizationId` (merged into the body's, which must then be
//! a JSON object); `PATH` starts with the town's `bin/` (the `gh` shim), and `GH_TOKEN` and
//! `GITHUB_TOKEN` are never set. An agent reads the container token
//! from its file on every call, so a `/refresh-token` reaches running agents. A start needs the
//! town's container token (409 `town not started` otherwise); one for a running agent id kills
//! that process first; at most 32 agents run at once (503). `POST /stop` kills the town's
//! agents. The public module [`agents`] states the rules. The demo agent, a stand-in, lives
//! in the crate `gastown-standins` (as does the stand-in Kilo gateway, `gastown-gateway`).
//!
//! # Merges
//!
//! `POST /merge` `{townId, rig_id, git_url, branch, base, message, author_name, author_email}`
//! merges `branch` into `base` in a scratch clone, `<workdir>/<town>/.merges/<random>/` (mode
//! 0700, removed afterwards whatever happens), with git run as the server's own user (never
//! the agent user), no shell, no prompt, an environment of its own (`PATH`, `HOME` = the
//! scratch directory, `GIT_CONFIG_GLOBAL` = the town's gitconfig so its credential helper
//! serves HTTPS, `GASTOWN_TOWN_ID`, `GASTOWN_RIG_ID` and no `GASTOWN_AGENT_ID`: the helper asks
//! for the rig's token as the town), author and committer as given, `commit.gpgsign=false`:
//! `git clone --single-branch --branch <base>`, `git fetch origin refs/heads/<branch>`,
//! `git merge --no-ff --no-edit -m <message> FETCH_HEAD`, `git push origin
//! HEAD:refs/heads/<base>` (started over once from the clone when `base` moved meanwhile).
//! It answers 200 `{"outcome":"merged","sha":<base's new head>,"files":[]}`,
//! `{"outcome":"nothing_to_merge","sha":<base's head>,"files":[]}` (the branch is in `base`
//! already) or `{"outcome":"conflict","sha":null,"files":[<paths>]}` (merge aborted, nothing
//! pushed); 422 for a field refused before git runs (ids as the credential helper's, `branch`
//! and `base` plain branch names, `git_url` `https://` without credentials, or `file://`,
//! `http://` and absolute paths only when the server's environment has
//! `GASTOWN_ALLOW_LOCAL_GIT=1`, `message` 1 to 4000 characters, author name and email one line
//! each) and for a `base` or `branch` the remote does not have; 409 `town not started` without
//! the town's container token; 502 `git <step> failed: <git's line of error>` (no credentials
//! in it); 504 past the deadline (120 s from the request's arrival; git killed). One merge of a
//! (town, rig) runs at a time: a second waits for it, within its own deadline. The private
//! module `merges` states the rules.
//!
//! # Eviction drain
//!
//! When the platform evicts the container it sends `SIGTERM`, then `SIGKILL` a while later.
//! On `SIGTERM` the server drains instead of dying with its agents' work: `POST /agents/start`
//! answers 503 from then on (the other routes keep working); every running agent's process
//! group gets `SIGTERM` and up to `--drain-grace-ms` (or `GASTOWN_DRAIN_GRACE_MS`; default
//! 20000, 0 allowed) to exit, then `SIGKILL`; each rig agent started with a `git_url` and a
//! `branch` has its work saved by git run as the agent, with the agent's environment, in its
//! clone (`<workdir>/<town>/agents/<agentId>/repo`): uncommitted changes committed as
//! `WIP: saved when the container was evicted`, then `HEAD` pushed to `refs/heads/<branch>`
//! of the `git_url` when the remote's branch lacks it; each agent's end is reported as its
//! watcher would (the exit callback, the mayor's `idle` state), a saved agent's with
//! `drained: {branch, pushed, head, error}`; and the server exits 0, at most 20 s past the
//! grace. The private module `drain` states the rules.
//!
//! # Head-of-line blocking
//!
//! Every connection gets its own thread (at most [`http::MAX_CONNECTIONS`] at once) and one
//! request; its head and body must arrive within the read deadline (5 s by default) or the
//! connection is answered 408 and closed, so a stalled upload holds only its own thread.
//!
//! # Debug routes
//!
//! With the cargo feature `debug-routes`, and only in the `gastown-control-debug` binary
//! (`Build::Debug`), `/debug/...` routes let tests read a town's state, make the server fail on
//! purpose and check the credential left the environment. `/debug/towns/:id` shows what the
//! server holds for the town (container token, env, update counts), its `workdir` and the
//! self-refresh counts (`gateway_refresh_attempts`, `gateway_refreshes`,
//! `gateway_refresh_failures`), its `agents` (`[{agent_id, state, pid, exit_code, starts}]`)
//! and `agents_start_attempts` (every `/agents/start` for the town past authentication,
//! refused or not); it answers 404 only for a town the server holds nothing of (neither token
//! nor env nor an agent start). `POST /debug/fail` takes `{"refresh_token", "sync_config",
//! "agents_start"}` (booleans, each false when absent; the last makes every `/agents/start`
//! answer 503). They take the same headers as the other routes. The production binary
//! `gastown-control` answers 404 there. The debug binary also takes a merge's deadline from
//! `GASTOWN_MERGE_DEADLINE_MS` when its environment sets it (tests of the 504).
//!
//! # Where things are
//!
//! [`server`] starts the server and runs its accept loop; [`options`] reads its command line
//! with [`cli`], which every binary of the container shares; [`auth`] decides who may call;
//! `routes` puts each request through its checks in order and hands it to its handlers:
//! `towns` (token, config, stop), [`agents`] (the agents' processes), `merges` (the
//! refinery's direct merge) and, with the debug routes, `debug`; `drain` stops the agents and
//! saves their work on `SIGTERM`; `child` runs their git (and the merges') with a deadline and
//! signals the agents' process groups. `state` is what the server holds in memory,
//! [`workdir`] what it keeps on disk, [`agent_user`] whom the agents run as. `self_refresh` renews the gateway tokens,
//! [`git_credential`] is git's credential helper and [`gh`] the agents' `gh`, all calling the
//! worker through [`client`]; [`gt`] is the agents' tool, which calls back for an agent's bead
//! through [`callbacks`] and, for the mayor, calls its tools through [`mayor_tools`];
//! [`http`] is the HTTP/1.1 plumbing.

pub mod agent_user;
pub mod agents;
pub mod auth;
pub mod callbacks;
mod child;
pub mod cli;
pub mod client;
#[cfg(feature = "debug-routes")]
mod debug;
mod drain;
pub mod events;
pub mod gh;
pub mod git_credential;
pub mod gt;
pub mod http;
pub mod kilo;
pub mod mayor_tools;
mod merges;
pub mod options;
pub mod relay;
mod routes;
mod self_refresh;
pub mod server;
mod state;
mod towns;
pub mod workdir;

pub use server::{cli_main, Build};

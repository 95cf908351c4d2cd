//! The wire contract between `TownContainerDO` (the worker) and `gastown-control`, the control
//! server in a town's container (DESIGN.md §7). Both sides use these types and this derivation,
//! so neither can drift from the other.
//!
//! # Authentication
//!
//! Every request except `GET /health` carries
//!
//! ```text
//! authorization: Bearer <control_secret(GASTOWN_CONTROL_KEY, townId)>
//! x-gastown-town-id: <townId>
//! content-type: application/json            (POST)
//! ```
//!
//! where `control_secret(key, town) = base64url-no-pad(HMAC-SHA256(key, "gastown-control-v1:" +
//! town))`. The worker holds the master key `GASTOWN_CONTROL_KEY`; a production container is
//! started with only its own derived secret (`GASTOWN_CONTROL_SECRET`) and town
//! (`GASTOWN_TOWN_ID`), so a container that leaks its secret leaks nothing about other towns.
//! A body's `townId` must equal the `x-gastown-town-id` header.
//!
//! Nothing here touches the Workers runtime; it compiles for wasm32 and natively.

use crate::agent_settings::SettingsFiles;
use crate::ids::{AgentId, OrgId, RigId, TownId};
use crate::vocab::Role;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// Header naming the town a control request is for (also checked against the body's `townId`).
pub const TOWN_ID_HEADER: &str = "x-gastown-town-id";
/// Header carrying `Bearer <control_secret>`.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// The only content type a control POST may have.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Master key (worker secret; also the control server's key in local dev and tests, where one
/// server serves every town).
pub const KEY_ENV: &str = "GASTOWN_CONTROL_KEY";
/// The derived secret a production container's control server is started with.
pub const SECRET_ENV: &str = "GASTOWN_CONTROL_SECRET";
/// The one town a production container serves.
pub const TOWN_ID_ENV: &str = "GASTOWN_TOWN_ID";

/// Domain separation of the derived secret; bump the version to rotate every container at once.
pub const SECRET_CONTEXT: &str = "gastown-control-v1:";

/// Largest request body the control server reads.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub const HEALTH_PATH: &str = "/health";
pub const REFRESH_TOKEN_PATH: &str = "/refresh-token";
pub const SYNC_CONFIG_PATH: &str = "/sync-config";
pub const STOP_PATH: &str = "/stop";

/// The worker's public origin, given to the control server so it can refresh the town's gateway
/// token itself (`--worker-url` or this variable).
pub const WORKER_URL_ENV: &str = "GASTOWN_WORKER_URL";
/// How often the control server renews each town's gateway token itself (`--gateway-refresh-ms`
/// or this variable), in milliseconds.
pub const GATEWAY_REFRESH_MS_ENV: &str = "GASTOWN_GATEWAY_REFRESH_MS";

/// The environment `TownContainerDO` starts a production container with: the control server's
/// credential (its per-town secret and its town), the worker's origin (where agents call back
/// and where the server renews the gateway token itself) and how often it renews. The image's
/// `CMD` names none of these, so without them the self-refresh never runs in production.
#[must_use]
pub fn startup_env(
    secret: &str,
    town: &str,
    worker_url: &str,
    gateway_refresh_ms: u64,
) -> [(&'static str, String); 4] {
    [
        (SECRET_ENV, secret.to_owned()),
        (TOWN_ID_ENV, town.to_owned()),
        (WORKER_URL_ENV, worker_url.to_owned()),
        (GATEWAY_REFRESH_MS_ENV, gateway_refresh_ms.to_string()),
    ]
}

// Defined in `vocab` because the town config derives them too; the old path stays.
pub use crate::vocab::{GATEWAY_TOKEN_ENV, GH_TOKEN_ENV, GITHUB_CLI_PAT_ENV};
/// The file, in the town's work directory, that every new agent session sources: one line
/// `KILO_JWT=<token>`, rewritten whenever the token changes.
pub const GATEWAY_ENV_FILE: &str = ".env.gateway";
/// The town-level settings file under the town's work directory; a rig's is
/// `<rig id>/` + this (see `agent_settings`).
pub const SETTINGS_FILE: &str = "settings/config.json";
/// The stand-in gateway's one model route, as the Kilo gateway names it.
pub const GATEWAY_CHAT_PATH: &str = "/api/gateway/chat/completions";

/// The file, in the town's work directory, holding the container token the control server was
/// last given (mode 0600): agent processes of the town authenticate to the worker with it, and
/// the git credential helper reads it.
pub const CONTAINER_TOKEN_FILE: &str = ".container-token";
/// A git token is reused until this long before its expiry, then fetched again (the default;
/// the town's env sets it as [`GIT_TOKEN_MARGIN_ENV`] from the worker's
/// `GIT_TOKEN_REFRESH_MARGIN_S`).
pub const GIT_TOKEN_REUSE_MARGIN_SECS: i64 = 300;
/// The agents' env variable holding the git token reuse margin, in seconds.
pub const GIT_TOKEN_MARGIN_ENV: &str = "GASTOWN_GIT_TOKEN_MARGIN_S";

/// The reuse margin an agent's git credential helper applies: `value` of
/// [`GIT_TOKEN_MARGIN_ENV`] when it is a number of seconds, else
/// [`GIT_TOKEN_REUSE_MARGIN_SECS`].
#[must_use]
pub fn git_token_margin(value: Option<&str>) -> i64 {
    value
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|s| *s >= 0)
        .unwrap_or(GIT_TOKEN_REUSE_MARGIN_SECS)
}

/// Where a git token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitTokenSource {
    /// A GitHub App installation token scoped to the rig's repository.
    GithubApp,
    /// A GitHub App user-to-server token of the town's owner (commits as the user).
    GithubUser,
    /// A GitLab OAuth access token of the rig's integration.
    GitlabOauth,
    /// The town's manual `git_auth` token for the repository's host.
    TownConfig,
}

impl GitTokenSource {
    /// The username git sends with the token over HTTPS for this source.
    #[must_use]
    pub fn git_username(self) -> &'static str {
        match self {
            GitTokenSource::GithubApp | GitTokenSource::GithubUser | GitTokenSource::TownConfig => {
                "x-access-token"
            }
            GitTokenSource::GitlabOauth => "oauth2",
        }
    }
}

/// The answer of both git-token routes: a token for one rig's repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitTokenReply {
    pub token: String,
    /// Seconds since the epoch.
    pub expires_at: i64,
    pub source: GitTokenSource,
    /// For GitHub tokens: whose identity the token carries (the user's, with the git author
    /// to commit as, or the bot's and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::integrations::GitIdentity>,
    /// The repository's host (lowercase, no port): a credential helper hands the token to this
    /// host only, so a submodule elsewhere never receives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The host of github.com's repositories, for the one case the source alone does not say.
pub const GITHUB_COM_HOST: &str = "github.com";

impl GitTokenReply {
    /// Whether the token is one for GitHub's API, and so one the GitHub CLI may be given: a
    /// GitHub App installation or user token, or the town's manual token when the worker
    /// picked it for a repository on github.com (a manual token for any other host, like a
    /// GitLab token, is not GitHub's).
    #[must_use]
    pub fn is_for_github(&self) -> bool {
        match self.source {
            GitTokenSource::GithubApp | GitTokenSource::GithubUser => true,
            GitTokenSource::TownConfig => self
                .host
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(GITHUB_COM_HOST)),
            GitTokenSource::GitlabOauth => false,
        }
    }
}

/// Whether git's `host` (which may carry a `:port`) is the token's `host`. A reply without a
/// host names none, and matches any.
#[must_use]
pub fn host_matches(token_host: Option<&str>, asked: Option<&str>) -> bool {
    let bare = |h: &str| {
        let h = h.trim().to_ascii_lowercase();
        match h.rsplit_once(':') {
            Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                name.to_owned()
            }
            _ => h,
        }
    };
    match (token_host, asked) {
        (None, _) => true,
        (Some(t), Some(a)) => bare(t) == bare(a),
        (Some(_), None) => false,
    }
}

/// The worker route where a town's container gets a git token for one of its rigs.
#[must_use]
pub fn git_token_path(town_id: &str, rig_id: &str) -> String {
    format!("/api/towns/{town_id}/rigs/{rig_id}/git-token")
}

/// The worker route where a container exchanges its container token for a fresh gateway
/// token; answers `protocol::town::IssuedToken` (`{token, expires_at}`, seconds).
#[must_use]
pub fn sandbox_token_path(town_id: &str) -> String {
    format!("/api/towns/{town_id}/sandbox-token")
}

/// `POST /refresh-token`: the container token its processes use from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshTokenBody {
    pub token: String,
    #[serde(rename = "townId")]
    pub town_id: String,
}

/// The answer to `POST /refresh-token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshTokenReply {
    pub ok: bool,
    /// False when the server holds no env for the town (it started, or restarted, since the
    /// last sync): the worker then sends it the stored env.
    #[serde(default)]
    pub had_env: bool,
}

/// `POST /sync-config`: the town's whole env (a key not sent is removed from the container) and
/// its agents' settings files (a file of a rig not sent is removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncConfigBody {
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub settings: SettingsFiles,
    #[serde(rename = "townId")]
    pub town_id: String,
}

/// `POST /merge`: the refinery's direct merge. The control server merges `branch` into `base`
/// in a fresh clone of `git_url` (`git merge --no-ff`, as `author_name <author_email>`), pushes
/// `base` through the town's git credential helper, and answers how it went: merged (with the
/// new head of `base`), nothing to merge, or a conflict (with the conflicting paths; nothing is
/// pushed).
pub const MERGE_PATH: &str = "/merge";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeBody {
    #[serde(rename = "townId")]
    pub town_id: String,
    pub rig_id: String,
    /// The rig's repository (no credentials in it).
    pub git_url: String,
    pub branch: String,
    pub base: String,
    /// The merge commit's message.
    pub message: String,
    pub author_name: String,
    pub author_email: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeOutcome {
    /// Merged and pushed: `sha` is `base`'s new head.
    Merged,
    /// `base` already has the branch's commits: nothing pushed.
    NothingToMerge,
    /// The merge conflicts in `files`: nothing pushed.
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeReply {
    pub outcome: MergeOutcome,
    #[serde(default)]
    pub sha: Option<String>,
    #[serde(default)]
    pub files: Vec<String>,
}

/// `POST /agents/start`: runs one agent of the town as a child process of the control server.
pub const AGENTS_START_PATH: &str = "/agents/start";

/// `POST /agents/:id/stop`.
#[must_use]
pub fn agent_stop_path(agent_id: &str) -> String {
    format!("/agents/{agent_id}/stop")
}

/// `POST /agents/:id/message`.
#[must_use]
pub fn agent_message_path(agent_id: &str) -> String {
    format!("/agents/{agent_id}/message")
}

/// `POST /agents/:id/message` `{townId, text}`: a further message to a running session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMessageBody {
    #[serde(rename = "townId")]
    pub town_id: String,
    pub text: String,
}

/// The org id of an org town's agent ([`AgentStartBody::organization_id`]).
pub const ORGANIZATION_ID_ENV: &str = "GASTOWN_ORGANIZATION_ID";
/// The Kilo CLI's inline config (JSON), merged into whatever the config files say; an org
/// town's agent gets `{"provider":{"kilo":{"options":{"kilocodeOrganizationId":"<org>"}}}}`
/// in it.
pub const KILO_CONFIG_CONTENT_ENV: &str = "KILO_CONFIG_CONTENT";

/// Set in an agent's env to `1` only where a `file://` rig is acceptable (local development):
/// the demo agent refuses `file://` repositories without it. Production never sets it.
/// The town's configured git author (`git_author_name` / `git_author_email`), in the container
/// env; an agent session gets the identity its commits carry in these and in git's own
/// `GIT_AUTHOR_*` / `GIT_COMMITTER_*`.
pub const GIT_AUTHOR_NAME_ENV: &str = "GASTOWN_GIT_AUTHOR_NAME";
pub const GIT_AUTHOR_EMAIL_ENV: &str = "GASTOWN_GIT_AUTHOR_EMAIL";
/// Who commits when neither the user's identity nor a configured author applies.
pub const DEFAULT_GIT_AUTHOR_NAME: &str = "Gastown Agent";
pub const DEFAULT_GIT_AUTHOR_EMAIL: &str = "agent@gastown.invalid";
/// The AI agent named in the `Co-authored-by` trailer ([`coauthor_trailer`]).
pub const AI_AGENT_NAME_ENV: &str = "GASTOWN_AI_AGENT_NAME";
pub const DEFAULT_AI_AGENT_NAME: &str = "Kilo";
/// `1` or `true`: no `Co-authored-by` trailer (the town's `disable_ai_coauthor`).
pub const DISABLE_AI_COAUTHOR_ENV: &str = "GASTOWN_DISABLE_AI_COAUTHOR";
/// Whose identity an agent session commits as: `user` or `bot:<reason>` (or `none`: no git
/// token said, the town's author then).
pub const COMMIT_IDENTITY_ENV: &str = "GASTOWN_COMMIT_IDENTITY";

/// The `Co-authored-by` trailer naming the AI agent `name`.
#[must_use]
pub fn coauthor_trailer(name: &str) -> String {
    let mailbox: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mailbox = if mailbox.is_empty() {
        "agent"
    } else {
        &mailbox
    };
    format!("Co-authored-by: {name} <{mailbox}@gastown.invalid>")
}

pub const ALLOW_LOCAL_GIT_ENV: &str = "GASTOWN_ALLOW_LOCAL_GIT";

/// The work item an agent is started on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBead {
    pub id: String,
    pub title: String,
    pub body: String,
}

/// `POST /agents/start`: everything one agent needs. The control server runs its agent command
/// with `env` (the town's env as the worker derives it, with this dispatch's container and
/// gateway tokens, git author and the user's env vars) plus the identity variables it sets
/// itself; a start for an agent id that is still running replaces that process.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStartBody {
    /// `townId` on the wire, as every body of the control server names the town.
    #[serde(rename = "townId")]
    pub town_id: TownId,
    pub agent_id: AgentId,
    pub role: Role,
    pub name: String,
    /// `None` for the mayor.
    pub rig_id: Option<RigId>,
    pub bead: Option<AgentBead>,
    /// The rig's repository (no credentials in it: git asks the credential helper).
    pub git_url: Option<String>,
    /// The rig's default branch, to start from.
    pub default_branch: Option<String>,
    /// The branch the agent pushes its work to.
    pub branch: Option<String>,
    /// The model the agent runs with (`agent_settings::effective_model`).
    pub model: Option<String>,
    /// The worker's origin the agent calls back; the control server's `--worker-url` is used
    /// when this is absent.
    #[serde(default)]
    pub worker_url: Option<String>,
    /// The organisation of an org town (`None` for a personal town): the control server puts
    /// it in the agent's env as [`ORGANIZATION_ID_ENV`] and in its Kilo config
    /// ([`KILO_CONFIG_CONTENT_ENV`]) as `provider.kilo.options.kilocodeOrganizationId`, so
    /// the agent's model calls are billed to the organisation. Absent from the JSON when
    /// `None`, so bodies from before it read and write as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<OrgId>,
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for AgentStartBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The env holds tokens: names only.
        f.debug_struct("AgentStartBody")
            .field("town_id", &self.town_id)
            .field("agent_id", &self.agent_id)
            .field("role", &self.role)
            .field("rig_id", &self.rig_id)
            .field("bead", &self.bead.as_ref().map(|b| &b.id))
            .field("branch", &self.branch)
            .field("organization_id", &self.organization_id)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Whether an agent process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentProcessState {
    Running,
    Exited,
}

/// The answer of `POST /agents/start` and `GET /agents/:id/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProcessStatus {
    pub agent_id: String,
    pub state: AgentProcessState,
    pub pid: Option<u32>,
    /// Set once exited (`None` when killed by a signal).
    pub exit_code: Option<i32>,
}

/// An agent's callback route on the worker: `kind` is `heartbeat`, `status` or `done`.
#[must_use]
pub fn agent_callback_path(town_id: &str, rig_id: &str, agent_id: &str, kind: &str) -> String {
    format!("/api/towns/{town_id}/rigs/{rig_id}/agents/{agent_id}/{kind}")
}

/// Longest `message` or `summary` an agent callback may send, in characters (a `branch` is at
/// most 255).
pub const MAX_CALLBACK_TEXT: usize = 4000;

/// `POST .../status`: what the agent is doing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatusCallback {
    pub message: String,
}

/// `POST .../done`: the agent finished its bead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDoneCallback {
    pub summary: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub pr_url: Option<String>,
}

/// `POST /api/towns/:t/rigs/:r/agents/:a/exit`: the control server saw the agent's process
/// end (the code, or none when a signal ended it, and the last lines it printed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentExitCallback {
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub output_tail: String,
    /// Set when the agent was stopped by an eviction drain (the control server's SIGTERM):
    /// what was saved of its work. The bead is then resumed on that branch, not started over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<Drained>,
}

/// What an eviction drain saved of one agent's work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    /// The branch the work in progress was pushed to (the one the agent was started on).
    pub branch: String,
    /// Whether the branch's remote now holds the agent's work (committed and pushed); false
    /// when there was nothing to push or the push failed (then `error` says why).
    pub pushed: bool,
    /// The commit the branch's remote was left at, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AgentExitCallback {
    /// How the bead's events say it.
    #[must_use]
    pub fn reason(&self) -> String {
        let how = match self.exit_code {
            Some(code) => format!("its agent exited with code {code}"),
            None => "its agent was killed by a signal".to_owned(),
        };
        let tail = self.output_tail.trim();
        if tail.is_empty() {
            how
        } else {
            format!("{how}: {tail}")
        }
    }
}

/// `POST /agents/:id/stop` carries the town: `{"townId": ...}`.
pub type AgentStopBody = StopBody;

/// `POST /stop`: the town's container stops; its token and env are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopBody {
    #[serde(rename = "townId")]
    pub town_id: String,
}

/// The per-town control secret: base64url-no-pad(HMAC-SHA256(key, "gastown-control-v1:" +
/// town_id)), 43 characters.
#[must_use]
pub fn control_secret(key: &[u8], town_id: &str) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(SECRET_CONTEXT.as_bytes());
    mac.update(town_id.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// The value of the `authorization` header for `town_id`.
#[must_use]
pub fn authorization_value(key: &[u8], town_id: &str) -> String {
    format!("Bearer {}", control_secret(key, town_id))
}

/// The token of a `Bearer` authorization header (scheme case-insensitive), if any.
#[must_use]
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `presented` equals `expected`, in time independent of where they differ.
#[must_use]
pub fn secret_matches(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_production_container_starts_with_its_credential_and_the_worker() {
        let env = startup_env("s3cret", "t1", "https://gastown.example", 43_200_000);
        let names: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "GASTOWN_CONTROL_SECRET",
                "GASTOWN_TOWN_ID",
                "GASTOWN_WORKER_URL",
                "GASTOWN_GATEWAY_REFRESH_MS"
            ]
        );
        assert_eq!(env[2].1, "https://gastown.example");
        assert_eq!(env[3].1, "43200000");
    }

    const KEY: &[u8] = b"dev-gastown-control-key-change-me-0123456789";

    #[test]
    fn refresh_token_json_is_pinned() {
        let body = RefreshTokenBody {
            token: "t1".into(),
            town_id: "town-a".into(),
        };
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(json, r#"{"token":"t1","townId":"town-a"}"#);
        assert_eq!(
            serde_json::from_str::<RefreshTokenBody>(&json).unwrap(),
            body
        );
        assert!(
            serde_json::from_str::<RefreshTokenBody>(r#"{"token":"t1","town_id":"a"}"#).is_err()
        );
    }

    #[test]
    fn sync_config_json_is_pinned() {
        let body = SyncConfigBody {
            env: BTreeMap::from([("B".into(), "2".into()), ("A".into(), "1".into())]),
            settings: SettingsFiles::default(),
            town_id: "town-a".into(),
        };
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(
            json,
            r#"{"env":{"A":"1","B":"2"},"settings":{"town":{"role_agents":{}},"rigs":{}},"townId":"town-a"}"#
        );
        assert_eq!(serde_json::from_str::<SyncConfigBody>(&json).unwrap(), body);
        assert!(serde_json::from_str::<SyncConfigBody>(r#"{"townId":"a"}"#).is_err());
    }

    #[test]
    fn git_token_reply_is_pinned() {
        let reply = GitTokenReply {
            token: "ghs_x".into(),
            expires_at: 1_700_000_000,
            source: GitTokenSource::GithubApp,
            identity: None,
            host: None,
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"token":"ghs_x","expires_at":1700000000,"source":"github_app"}"#
        );
        assert_eq!(GitTokenSource::GitlabOauth.git_username(), "oauth2");
        assert!(host_matches(Some("github.com"), Some("GitHub.com")));
        assert!(host_matches(Some("127.0.0.1"), Some("127.0.0.1:8080")));
        assert!(!host_matches(Some("github.com"), Some("evil.example")));
        assert!(!host_matches(Some("github.com"), None));
        assert!(host_matches(None, Some("anything")));
        assert_eq!(git_token_path("t", "r"), "/api/towns/t/rigs/r/git-token");
    }

    #[test]
    fn only_github_tokens_are_for_the_github_cli() {
        let reply = |source, host: Option<&str>| GitTokenReply {
            token: "t".into(),
            expires_at: 1,
            source,
            identity: None,
            host: host.map(str::to_owned),
        };
        assert!(reply(GitTokenSource::GithubApp, None).is_for_github());
        assert!(reply(GitTokenSource::GithubUser, Some("127.0.0.1")).is_for_github());
        assert!(reply(GitTokenSource::TownConfig, Some("GitHub.com")).is_for_github());
        assert!(!reply(GitTokenSource::TownConfig, Some("gitlab.com")).is_for_github());
        assert!(!reply(GitTokenSource::TownConfig, None).is_for_github());
        assert!(!reply(GitTokenSource::GitlabOauth, Some("github.com")).is_for_github());
    }

    #[test]
    fn agent_start_json_is_pinned_with_and_without_an_organization() {
        let mut body = AgentStartBody {
            town_id: TownId::parse("t1").unwrap(),
            agent_id: AgentId::parse("a1").unwrap(),
            role: Role::Polecat,
            name: "p".into(),
            rig_id: None,
            bead: None,
            git_url: None,
            default_branch: None,
            branch: None,
            model: None,
            worker_url: None,
            organization_id: None,
            env: BTreeMap::new(),
        };
        let personal = r#"{"townId":"t1","agent_id":"a1","role":"polecat","name":"p","rig_id":null,"bead":null,"git_url":null,"default_branch":null,"branch":null,"model":null,"worker_url":null,"env":{}}"#;
        assert_eq!(serde_json::to_string(&body).unwrap(), personal);
        assert_eq!(
            serde_json::from_str::<AgentStartBody>(personal).unwrap(),
            body
        );
        body.organization_id = Some(OrgId::parse("org-1").unwrap());
        let org = r#"{"townId":"t1","agent_id":"a1","role":"polecat","name":"p","rig_id":null,"bead":null,"git_url":null,"default_branch":null,"branch":null,"model":null,"worker_url":null,"organization_id":"org-1","env":{}}"#;
        assert_eq!(serde_json::to_string(&body).unwrap(), org);
        assert_eq!(serde_json::from_str::<AgentStartBody>(org).unwrap(), body);
        let bad = org.replace(r#""org-1""#, r#""a b""#);
        assert!(serde_json::from_str::<AgentStartBody>(&bad).is_err());
        assert!(format!("{body:?}").contains("org-1"));
    }

    #[test]
    fn secret_derivation_is_pinned() {
        // Computed independently: Node `createHmac("sha256", KEY).update("gastown-control-v1:town-a")
        // .digest("base64url")` and Python's hmac give the same.
        assert_eq!(
            control_secret(KEY, "town-a"),
            "u5Gz87oy3320TWluHukWQMppSQSJcreR2Ts8AdzIvcg"
        );
        assert_ne!(control_secret(KEY, "town-a"), control_secret(KEY, "town-b"));
        assert_ne!(
            control_secret(KEY, "town-a"),
            control_secret(b"other", "town-a")
        );
        assert_eq!(control_secret(KEY, "x").len(), 43);
        assert_eq!(
            authorization_value(KEY, "town-a"),
            "Bearer u5Gz87oy3320TWluHukWQMppSQSJcreR2Ts8AdzIvcg"
        );
    }

    #[test]
    fn bearer_and_comparison() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
        let s = control_secret(KEY, "t");
        assert!(secret_matches(&s, &s.clone()));
        assert!(!secret_matches(&s, &control_secret(KEY, "u")));
        assert!(!secret_matches(&s, ""));
        assert!(!secret_matches("", ""));
    }
}

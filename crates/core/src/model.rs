//! The records the API returns and the Durable Objects store: towns and rigs, and the validated
//! input that creates them. JSON field names here are the HTTP contract (DESIGN.md §5).

use crate::body::{parse_object, Fields};
use crate::error::ApiError;
use crate::ids::{AgentId, OrgId, RigId, TownId, UserId};
use crate::vocab::Role;
use serde::{Deserialize, Serialize};

pub const MAX_TOWN_NAME: usize = 100;
pub const MAX_RIG_NAME: usize = 64;
pub const MAX_GIT_URL: usize = 2048;
pub const MAX_BRANCH: usize = 255;
pub const MAX_INTEGRATION_ID: usize = 128;
pub const DEFAULT_BRANCH: &str = "main";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerType {
    User,
    Org,
}

impl OwnerType {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerType::User => "user",
            OwnerType::Org => "org",
        }
    }
}

/// Who owns a town: a user (personal town) or an organisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    User(UserId),
    Org(OrgId),
}

impl Owner {
    pub fn kind(&self) -> OwnerType {
        match self {
            Owner::User(_) => OwnerType::User,
            Owner::Org(_) => OwnerType::Org,
        }
    }

    /// The owning organisation, for org towns.
    pub fn org(&self) -> Option<&OrgId> {
        match self {
            Owner::User(_) => None,
            Owner::Org(org) => Some(org),
        }
    }

    /// The owner's id (a user id or an org id), as recorded in the rig index.
    pub fn id(&self) -> &str {
        match self {
            Owner::User(user) => user.as_str(),
            Owner::Org(org) => org.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TownStatus {
    Active,
    Stopped,
    /// An org town whose creator's account was deleted: stopped, acting as no one, until an
    /// owner of the org claims it.
    CreatorDeleted,
}

impl TownStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TownStatus::Active => "active",
            TownStatus::Stopped => "stopped",
            TownStatus::CreatorDeleted => "creator_deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(TownStatus::Active),
            "stopped" => Some(TownStatus::Stopped),
            "creator_deleted" => Some(TownStatus::CreatorDeleted),
            _ => None,
        }
    }

    /// Nothing runs: no alarm, no container, no dispatch.
    #[must_use]
    pub fn is_stopped(self) -> bool {
        !matches!(self, TownStatus::Active)
    }
}

/// A town as the API shows it and the DOs store it. Its JSON is flat (`owner_type`,
/// `owner_user_id`, `organization_id`: the HTTP contract); in memory the owner is an [`Owner`],
/// checked once when a town is read, so an org town without its org cannot exist.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "TownRecord")]
pub struct Town {
    pub id: TownId,
    pub name: String,
    pub owner: Owner,
    /// The user the town's tokens act as: the personal owner, or an org town's creator. `None`
    /// only for a record written without one.
    pub owner_user_id: Option<UserId>,
    pub created_by_user_id: UserId,
    pub status: TownStatus,
    pub created_at: String,
}

/// The flat form of a [`Town`] (JSON and SQL rows).
#[derive(Serialize, Deserialize)]
struct TownRecord<Id = TownId, U = UserId, O = OrgId, S = String> {
    id: Id,
    name: S,
    owner_type: OwnerType,
    owner_user_id: Option<U>,
    organization_id: Option<O>,
    created_by_user_id: U,
    status: TownStatus,
    created_at: S,
}

impl TryFrom<TownRecord> for Town {
    type Error = String;

    fn try_from(r: TownRecord) -> Result<Self, Self::Error> {
        let owner = match (r.owner_type, r.organization_id) {
            (OwnerType::Org, Some(org)) => Owner::Org(org),
            (OwnerType::Org, None) => return Err(format!("org town {} has no org", r.id)),
            (OwnerType::User, _) => Owner::User(
                r.owner_user_id
                    .clone()
                    .ok_or_else(|| format!("personal town {} has no owner", r.id))?,
            ),
        };
        Ok(Town {
            id: r.id,
            name: r.name,
            owner,
            owner_user_id: r.owner_user_id,
            created_by_user_id: r.created_by_user_id,
            status: r.status,
            created_at: r.created_at,
        })
    }
}

impl Serialize for Town {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TownRecord {
            id: &self.id,
            name: self.name.as_str(),
            owner_type: self.owner.kind(),
            owner_user_id: self.owner_user_id.as_ref(),
            organization_id: self.owner.org(),
            created_by_user_id: &self.created_by_user_id,
            status: self.status,
            created_at: self.created_at.as_str(),
        }
        .serialize(serializer)
    }
}

impl Town {
    /// A new personal town: the user owns and created it.
    pub fn personal(id: TownId, new: NewTown, user: &UserId, created_at: String) -> Self {
        Town {
            id,
            name: new.name,
            owner: Owner::User(user.clone()),
            owner_user_id: Some(user.clone()),
            created_by_user_id: user.clone(),
            status: TownStatus::Active,
            created_at,
        }
    }

    /// A new org town: the org owns it; the creating member is recorded as its owner user, so
    /// credentials and container tokens act as that person.
    pub fn for_org(
        id: TownId,
        new: NewTown,
        org: &OrgId,
        creator: &UserId,
        created_at: String,
    ) -> Self {
        Town {
            id,
            name: new.name,
            owner: Owner::Org(org.clone()),
            owner_user_id: Some(creator.clone()),
            created_by_user_id: creator.clone(),
            status: TownStatus::Active,
            created_at,
        }
    }

    /// A new town of `owner`, created by `creator`.
    pub fn new(id: TownId, new: NewTown, owner: &Owner, creator: &UserId, at: String) -> Self {
        match owner {
            Owner::User(user) => Town::personal(id, new, user, at),
            Owner::Org(org) => Town::for_org(id, new, org, creator, at),
        }
    }

    /// The user a token minted for the town acts as: the owner (the creator, or the org owner
    /// who claimed it, for org towns).
    ///
    /// # Errors
    /// 409 `creator_deleted` for a town whose user was deleted (it acts as no one), and for a
    /// record without a user (never written by this worker).
    pub fn token_user_id(&self) -> Result<&str, ApiError> {
        match (&self.owner_user_id, self.status) {
            (_, TownStatus::CreatorDeleted) | (None, _) => Err(ApiError::CreatorDeleted),
            (Some(user), _) => Ok(user.as_str()),
        }
    }
}

/// Columns of a town row, in the order of the worker's `town_values`; owner DOs and the TownDO
/// store the same record.
pub const TOWN_COLUMNS: &str =
    "id, name, owner_type, owner_user_id, organization_id, created_by_user_id, status, created_at";

/// A SQLite expression that builds a town row's JSON, exactly as [`Town`] serialises (pinned by
/// a test), so a DO can answer reads without decoding rows.
pub const TOWN_JSON: &str = "json_object('id', id, 'name', name, 'owner_type', owner_type, 'owner_user_id', owner_user_id, 'organization_id', organization_id, 'created_by_user_id', created_by_user_id, 'status', status, 'created_at', created_at)";

/// What an agent is doing, as its town last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Idle,
    Working,
    Stalled,
}

impl AgentStatus {
    /// The stored value (bound into queries, never written in them).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Idle => "idle",
            AgentStatus::Working => "working",
            AgentStatus::Stalled => "stalled",
        }
    }
}

/// An agent a town knows: the mayor (town-wide, no rig), or a polecat or refinery of one rig.
/// Container callbacks are honoured only for agents recorded here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    pub role: Role,
    pub name: String,
    pub rig_id: Option<RigId>,
    pub status: AgentStatus,
    pub current_bead_id: Option<String>,
    pub dispatch_attempts: u32,
    /// RFC 3339; the last heartbeat or callback.
    pub last_activity_at: Option<String>,
    pub created_at: String,
}

/// Columns of an agent row, in the order of [`Agent`]'s fields.
pub const AGENT_COLUMNS: &str = "id, role, name, rig_id, status, current_bead_id, dispatch_attempts, last_activity_at, created_at";

/// As [`TOWN_JSON`], for [`Agent`].
pub const AGENT_JSON: &str = "json_object('id', id, 'role', role, 'name', name, 'rig_id', rig_id, 'status', status, 'current_bead_id', current_bead_id, 'dispatch_attempts', dispatch_attempts, 'last_activity_at', last_activity_at, 'created_at', created_at)";

/// Columns of a rig row, in the order of the worker's `rig_values`.
pub const RIG_COLUMNS: &str =
    "id, town_id, name, git_url, default_branch, platform_integration_id, created_at";

/// As [`TOWN_JSON`], for [`Rig`].
pub const RIG_JSON: &str = "json_object('id', id, 'town_id', town_id, 'name', name, 'git_url', git_url, 'default_branch', default_branch, 'platform_integration_id', platform_integration_id, 'created_at', created_at)";

/// A rig as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rig {
    pub id: RigId,
    pub town_id: TownId,
    pub name: String,
    pub git_url: String,
    pub default_branch: String,
    pub platform_integration_id: Option<String>,
    pub created_at: String,
}

impl Rig {
    /// A rig from a body whose repository is a URL given by hand.
    ///
    /// # Errors
    /// Internal, for a body whose repository comes from an integration: the worker must resolve
    /// that first ([`Rig::from_repository`]).
    pub fn new(id: RigId, new: NewRig, created_at: String) -> Result<Self, ApiError> {
        match new.source {
            RigSource::Url {
                git_url,
                platform_integration_id,
            } => Ok(Rig {
                id,
                town_id: new.town_id,
                name: new.name,
                git_url,
                default_branch: new
                    .default_branch
                    .unwrap_or_else(|| DEFAULT_BRANCH.to_owned()),
                platform_integration_id,
                created_at,
            }),
            RigSource::Integration { .. } => Err(ApiError::internal(
                "a rig from an integration needs its repository resolved",
            )),
        }
    }

    /// A rig of an integration's repository, as the provider describes it.
    pub fn from_repository(
        id: RigId,
        new: NewRig,
        integration_id: String,
        git_url: String,
        default_branch: String,
        created_at: String,
    ) -> Self {
        Rig {
            id,
            town_id: new.town_id,
            name: new.name,
            git_url,
            default_branch: new.default_branch.unwrap_or(default_branch),
            platform_integration_id: Some(integration_id),
            created_at,
        }
    }
}

/// A validated `POST .../towns` body. Fields other than `name` are ignored: ownership comes from
/// the route and the token, never from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTown {
    pub name: String,
}

impl NewTown {
    /// # Errors
    /// 400 for a body that is not a JSON object; 422 naming the bad field.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let map = parse_object(body)?;
        let name = Fields(&map).required_str("name", MAX_TOWN_NAME)?;
        Ok(NewTown {
            name: name.to_owned(),
        })
    }
}

/// Where a new rig's repository comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RigSource {
    /// A `git_url` given by hand (credentials then come from the town's `git_auth`).
    Url {
        git_url: String,
        /// With an integration, `git_url` must name one of its repositories, and the rig takes
        /// the provider's URL for it (the worker checks both against the provider).
        platform_integration_id: Option<String>,
    },
    /// A repository (`owner/name`) of a platform integration: the worker fills `git_url` and
    /// the default branch from the provider.
    Integration {
        integration_id: String,
        repo: String,
    },
}

/// A validated `POST .../rigs` body. Credential fields a client might add are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRig {
    pub town_id: TownId,
    pub name: String,
    pub source: RigSource,
    /// `None`: the provider's default branch for an integration's repository, else `main`.
    pub default_branch: Option<String>,
}

impl NewRig {
    /// # Errors
    /// 400 for a body that is not a JSON object; 422 naming the bad field.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Self::parse_with(body, false)
    }

    /// As [`NewRig::parse`]; with `allow_local_git` (development only, `GASTOWN_ALLOW_LOCAL_GIT`)
    /// a `git_url` may also be a local repository, `file:///absolute/path`.
    ///
    /// # Errors
    /// As [`NewRig::parse`].
    pub fn parse_with(body: &[u8], allow_local_git: bool) -> Result<Self, ApiError> {
        let map = parse_object(body)?;
        let f = Fields(&map);
        let town_id = TownId::parse(f.required_str("town_id", crate::ids::MAX_ID_LEN)?)
            .map_err(|e| ApiError::invalid("town_id", e.to_string()))?;
        let name = f.required_str("name", MAX_RIG_NAME)?;
        check_rig_name(name)?;
        let default_branch = f.optional_str("default_branch", MAX_BRANCH)?;
        if let Some(branch) = default_branch {
            check_branch(branch)?;
        }
        let platform_integration_id = f
            .optional_str("platform_integration_id", MAX_INTEGRATION_ID)?
            .map(str::to_owned);
        let repo = f.optional_str("repo", MAX_REPO_NAME)?;
        let source = match (repo, f.optional_str("git_url", MAX_GIT_URL)?) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "repo",
                    "give either repo (with platform_integration_id) or git_url, not both",
                ))
            }
            (Some(repo), None) => {
                check_repo_name(repo)?;
                let integration_id = platform_integration_id.ok_or_else(|| {
                    ApiError::invalid(
                        "platform_integration_id",
                        "is required with repo: the integration the repository comes from",
                    )
                })?;
                crate::ids::IntegrationId::parse(&integration_id)
                    .map_err(|e| ApiError::invalid("platform_integration_id", e.to_string()))?;
                RigSource::Integration {
                    integration_id,
                    repo: repo.to_owned(),
                }
            }
            (None, Some(git_url)) => {
                if !(allow_local_git && is_local_git_url(git_url)?) {
                    check_git_url(git_url)?;
                }
                RigSource::Url {
                    git_url: git_url.to_owned(),
                    platform_integration_id,
                }
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "git_url",
                    "is required (or repo with platform_integration_id)",
                ))
            }
        };
        Ok(NewRig {
            town_id,
            name: name.to_owned(),
            source,
            default_branch: default_branch.map(str::to_owned),
        })
    }
}

pub const MAX_REPO_NAME: usize = 255;

/// `owner/name` (GitLab: `group/sub/name`): segments of `[A-Za-z0-9._-]`, none starting with
/// `.` or `-`.
pub(crate) fn check_repo_name(repo: &str) -> Result<(), ApiError> {
    let segments: Vec<&str> = repo.split('/').collect();
    let ok = segments.len() >= 2
        && segments.iter().all(|s| {
            !s.is_empty()
                && !s.starts_with(['.', '-'])
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid("repo", "must be owner/name"))
    }
}

/// Rig names become directory names in the container: `[A-Za-z0-9._-]`, not starting with
/// `.` or `-`.
pub(crate) fn check_rig_name(name: &str) -> Result<(), ApiError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok_chars || name.starts_with(['.', '-']) {
        return Err(ApiError::invalid(
            "name",
            "may hold only letters, digits, '.', '_' and '-', and may not start with '.' or '-'",
        ));
    }
    Ok(())
}

/// `https://host/path`, `http://host/path`, `ssh://[user@]host/path` or `git@host:path`; never
/// with a password or token inside: credentials come from integrations, not URLs. No part of
/// the authority (user, host, port) may start with `-`: git hands `[user@]host` to ssh as one
/// argument, and `ssh://-oProxyCommand=…/x` would make it an option that runs a command. A port
/// is digits only.
/// Whether `url` is a `file://` URL (then: an absolute path without `..` segments, whitespace
/// or control characters, or 422).
pub(crate) fn is_local_git_url(url: &str) -> Result<bool, ApiError> {
    let Some(path) = url.strip_prefix("file://") else {
        return Ok(false);
    };
    let ok = path.starts_with('/')
        && !path.split('/').any(|seg| seg == "..")
        && !path.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(true)
    } else {
        Err(ApiError::invalid(
            "git_url",
            "a file:// URL must name an absolute path without '..'",
        ))
    }
}

pub(crate) fn check_git_url(url: &str) -> Result<(), ApiError> {
    const OPTION_LIKE: &str = "must not name a host, user or port starting with '-'";
    let bad = |msg: &str| Err(ApiError::invalid("git_url", msg));
    if url.chars().any(char::is_whitespace) {
        return bad("must not contain whitespace");
    }
    let (rest, scp_like) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("ssh://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("git@") {
        (rest, true)
    } else {
        return bad("must start with https://, http://, ssh:// or git@");
    };
    if scp_like {
        let Some((host, path)) = rest.split_once(':') else {
            return bad("git@ URLs must look like git@host:owner/repo");
        };
        if host.is_empty() || path.is_empty() || host.contains(['/', '@']) {
            return bad("git@ URLs must look like git@host:owner/repo");
        }
        if host.starts_with('-') {
            return bad(OPTION_LIKE);
        }
        return Ok(());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if userinfo.is_some_and(|u| u.contains(':'))
        || (userinfo.is_some() && !url.starts_with("ssh://"))
    {
        return bad("must not carry credentials; connect an integration instead");
    }
    if host.is_empty() || host.starts_with([':', '.']) {
        return bad("must name a host");
    }
    let port = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(_, after)| after),
        None => host.rsplit_once(':').map(|(_, port)| port),
    };
    let port = port.map(|p| p.strip_prefix(':').unwrap_or(p));
    if host.starts_with('-')
        || userinfo.is_some_and(|u| u.starts_with('-'))
        || port.is_some_and(|p| p.starts_with('-'))
    {
        return bad(OPTION_LIKE);
    }
    if port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
        return bad("must have a numeric port");
    }
    let path = &rest[authority.len()..];
    if path.trim_matches('/').is_empty() {
        return bad("must name a repository path");
    }
    Ok(())
}

/// A subset of git's ref-name rules, enough to keep a branch name safe on a command line.
pub(crate) fn check_branch(branch: &str) -> Result<(), ApiError> {
    let forbidden = branch.contains("..")
        || branch.contains("@{")
        || branch.contains("//")
        || branch
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
        || branch.starts_with(['-', '/', '.'])
        || branch.ends_with(['/', '.'])
        || branch.ends_with(".lock");
    if forbidden {
        return Err(ApiError::invalid(
            "default_branch",
            "is not a valid git branch name",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::Invalid { field, .. } => field,
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn local_repositories_only_when_allowed() {
        let body = br#"{"town_id":"t1","name":"app","git_url":"file:///srv/git/app.git"}"#;
        assert!(
            matches!(NewRig::parse(body), Err(ApiError::Invalid { .. })),
            "never by default"
        );
        let rig = NewRig::parse_with(body, true).unwrap();
        assert!(
            matches!(rig.source, RigSource::Url { ref git_url, .. } if git_url == "file:///srv/git/app.git")
        );
        for bad in ["file://relative/x", "file:///a/../etc", "file:///a b"] {
            let body = format!(r#"{{"town_id":"t1","name":"app","git_url":"{bad}"}}"#);
            assert!(
                matches!(
                    NewRig::parse_with(body.as_bytes(), true),
                    Err(ApiError::Invalid { .. })
                ),
                "{bad}"
            );
        }
        let https = br#"{"town_id":"t1","name":"app","git_url":"https://github.com/a/b"}"#;
        assert!(NewRig::parse_with(https, true).is_ok());
    }

    #[test]
    fn town_body() {
        assert_eq!(
            NewTown::parse(br#"{"name":" Alpha "}"#).unwrap().name,
            "Alpha"
        );
        let ignored =
            NewTown::parse(br#"{"name":"a","owner_user_id":"evil","kilocode_token":"x"}"#).unwrap();
        assert_eq!(ignored, NewTown { name: "a".into() });
        assert_eq!(
            field_of(NewTown::parse(br#"{"name":5}"#).unwrap_err()),
            "name"
        );
        assert_eq!(field_of(NewTown::parse(br#"{}"#).unwrap_err()), "name");
        let long = format!(r#"{{"name":"{}"}}"#, "n".repeat(MAX_TOWN_NAME + 1));
        assert_eq!(
            field_of(NewTown::parse(long.as_bytes()).unwrap_err()),
            "name"
        );
        assert!(matches!(
            NewTown::parse(b"[1]"),
            Err(ApiError::InvalidJson(_))
        ));
    }

    fn rig(fields: &str) -> Result<NewRig, ApiError> {
        NewRig::parse(format!(r#"{{"town_id":"t1","name":"repo",{fields}}}"#).as_bytes())
    }

    #[test]
    fn rig_from_an_integration_names_its_repo() {
        let r = rig(r#""platform_integration_id":"i-1","repo":"acme/app""#).unwrap();
        assert_eq!(
            r.source,
            RigSource::Integration {
                integration_id: "i-1".into(),
                repo: "acme/app".into()
            }
        );
        assert!(
            Rig::new(RigId::parse("r1").unwrap(), r.clone(), "now".into()).is_err(),
            "must be resolved first"
        );
        let made = Rig::from_repository(
            RigId::parse("r1").unwrap(),
            r,
            "i-1".into(),
            "https://github.com/acme/app.git".into(),
            "trunk".into(),
            "now".into(),
        );
        assert_eq!(made.default_branch, "trunk");
        assert_eq!(made.platform_integration_id.as_deref(), Some("i-1"));
        for (fields, field) in [
            (r#""repo":"acme/app""#, "platform_integration_id"),
            (
                r#""repo":"acme/app","git_url":"https://github.com/a/b","platform_integration_id":"i""#,
                "repo",
            ),
            (r#""repo":"noslash","platform_integration_id":"i""#, "repo"),
            (r#""repo":"../etc/x","platform_integration_id":"i""#, "repo"),
            (r#""repo":"a/-b","platform_integration_id":"i""#, "repo"),
            (r#""name2":"x""#, "git_url"),
        ] {
            assert_eq!(field_of(rig(fields).unwrap_err()), field, "{fields}");
        }
    }

    #[test]
    fn rig_body_defaults_and_urls() {
        let r = rig(r#""git_url":"https://github.com/o/r.git""#).unwrap();
        assert_eq!(r.default_branch, None);
        assert_eq!(
            r.source,
            RigSource::Url {
                git_url: "https://github.com/o/r.git".into(),
                platform_integration_id: None
            }
        );
        let made = Rig::new(RigId::parse("r1").unwrap(), r, "now".into()).unwrap();
        assert_eq!(made.default_branch, "main");
        for ok in [
            "https://github.com/o/r",
            "http://git.local:8080/o/r.git",
            "ssh://git@github.com/o/r.git",
            "git@github.com:o/r.git",
            "https://gitlab.example.com/group/sub/r",
            "ssh://git@github.com:22/o/r.git",
            "ssh://git@[::1]:22/o/r.git",
            "https://git-host.example/o/r",
            "git@git-host.example:o/-r",
        ] {
            assert!(rig(&format!(r#""git_url":"{ok}""#)).is_ok(), "{ok}");
        }
        for bad in [
            "github.com/o/r",
            "file:///etc/passwd",
            "https://user:ghp_secret@github.com/o/r",
            "https://ghp_token@github.com/o/r",
            "https://github.com",
            "https:///o/r",
            "git@github.com",
            "git@:o/r",
            "ext::sh -c id",
            "https://github.com/o/r x",
            "ssh://-oProxyCommand=x/y",
            "ssh://-oProxyCommand=touch%20pwned/o/r",
            "ssh://git@-oProxyCommand=x/o/r",
            "ssh://-oProxyCommand=x@github.com/o/r",
            "ssh://github.com:-oProxyCommand=x/o/r",
            "ssh://github.com:22x/o/r",
            "git@-oProxyCommand=x:o/r",
            "git@-x:o/r",
            "https://-x/o/r",
            "http://-x:8080/o/r",
        ] {
            assert_eq!(
                field_of(rig(&format!(r#""git_url":"{bad}""#)).unwrap_err()),
                "git_url",
                "{bad}"
            );
        }
    }

    #[test]
    fn rig_body_names_and_branches() {
        let url = r#""git_url":"https://github.com/o/r""#;
        for bad_name in ["../x", ".hidden", "-rf", "a b", "a/b", ""] {
            let body = format!(r#"{{"town_id":"t1","name":"{bad_name}",{url}}}"#);
            assert_eq!(
                field_of(NewRig::parse(body.as_bytes()).unwrap_err()),
                "name",
                "{bad_name}"
            );
        }
        for bad in ["a..b", "-x", "x.lock", "a b", "x~1", "/x", "x/", "a:b"] {
            assert_eq!(
                field_of(rig(&format!(r#"{url},"default_branch":"{bad}""#)).unwrap_err()),
                "default_branch",
                "{bad}"
            );
        }
        let r = rig(&format!(
            r#"{url},"default_branch":"release/1.x","platform_integration_id":"pi-1""#
        ))
        .unwrap();
        assert_eq!(r.default_branch.as_deref(), Some("release/1.x"));
        assert!(matches!(
            r.source,
            RigSource::Url { platform_integration_id: Some(ref id), .. } if id == "pi-1"
        ));
        let e =
            NewRig::parse(br#"{"town_id":5,"name":"r","git_url":"https://h/o/r"}"#).unwrap_err();
        assert_eq!(field_of(e), "town_id");
    }

    #[test]
    fn no_token_acts_as_a_deleted_creator() {
        let id = TownId::parse("t1").unwrap();
        let user = UserId::parse("u1").unwrap();
        let org = OrgId::parse("o1").unwrap();
        let mut town = Town::for_org(id, NewTown { name: "n".into() }, &org, &user, "x".into());
        assert_eq!(town.token_user_id().unwrap(), "u1");
        town.status = TownStatus::CreatorDeleted;
        assert!(matches!(
            town.token_user_id(),
            Err(ApiError::CreatorDeleted)
        ));
        town.status = TownStatus::Stopped;
        town.owner_user_id = None;
        assert!(matches!(
            town.token_user_id(),
            Err(ApiError::CreatorDeleted)
        ));
        assert!(TownStatus::CreatorDeleted.is_stopped() && !TownStatus::Active.is_stopped());
        assert_eq!(
            TownStatus::parse("creator_deleted"),
            Some(TownStatus::CreatorDeleted)
        );
    }

    /// `json_object('k1', c1, 'k2', c2, ...)` → the keys and the columns.
    fn json_object_pairs(expr: &str) -> Vec<(String, String)> {
        let inner = expr
            .strip_prefix("json_object(")
            .and_then(|e| e.strip_suffix(')'))
            .unwrap();
        let parts: Vec<&str> = inner.split(", ").collect();
        parts
            .chunks(2)
            .map(|kv| (kv[0].trim_matches('\'').to_owned(), kv[1].to_owned()))
            .collect()
    }

    #[test]
    fn sqlite_json_matches_the_records() {
        for (expr, columns, value) in [
            (
                TOWN_JSON,
                TOWN_COLUMNS,
                serde_json::to_value(fixtures::town("t1", "u1")).unwrap(),
            ),
            (
                RIG_JSON,
                RIG_COLUMNS,
                serde_json::to_value(fixtures::rig("r1", "t1")).unwrap(),
            ),
            (
                AGENT_JSON,
                AGENT_COLUMNS,
                serde_json::to_value(Agent {
                    id: AgentId::parse("a1").unwrap(),
                    role: Role::Mayor,
                    name: "mayor".into(),
                    rig_id: None,
                    status: AgentStatus::Idle,
                    current_bead_id: None,
                    dispatch_attempts: 0,
                    last_activity_at: None,
                    created_at: "2026-12-02T00:00:00.000Z".into(),
                })
                .unwrap(),
            ),
        ] {
            let pairs = json_object_pairs(expr);
            let mut keys: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let json_keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
            let mut sorted = json_keys.clone();
            sorted.sort_unstable();
            keys.sort_unstable();
            assert_eq!(sorted, keys, "exactly the record's fields");
            for (k, c) in &pairs {
                assert_eq!(k, c, "each key is its own column");
            }
            let cols: Vec<&str> = columns.split(", ").collect();
            assert_eq!(json_keys, cols, "and the stored columns");
        }
    }

    #[test]
    fn town_json_is_pinned() {
        let town = Town::personal(
            TownId::parse("t1").unwrap(),
            NewTown {
                name: "Alpha".into(),
            },
            &UserId::parse("u1").unwrap(),
            "2026-11-23T00:00:00.000Z".into(),
        );
        assert_eq!(
            serde_json::to_string(&town).unwrap(),
            r#"{"id":"t1","name":"Alpha","owner_type":"user","owner_user_id":"u1","organization_id":null,"created_by_user_id":"u1","status":"active","created_at":"2026-11-23T00:00:00.000Z"}"#
        );
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A personal town of `user`.
    pub fn town(id: &str, user: &str) -> Town {
        Town::personal(
            TownId::parse(id).unwrap(),
            NewTown { name: "n".into() },
            &UserId::parse(user).unwrap(),
            "2026-11-23T00:00:00.000Z".into(),
        )
    }

    /// A rig of town `town`.
    pub fn rig(id: &str, town: &str) -> Rig {
        Rig {
            id: RigId::parse(id).unwrap(),
            town_id: TownId::parse(town).unwrap(),
            name: "web".into(),
            git_url: "https://github.com/acme/web.git".into(),
            default_branch: "main".into(),
            platform_integration_id: None,
            created_at: "2026-11-23T00:00:00.000Z".into(),
        }
    }
}

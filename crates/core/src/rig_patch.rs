//! Changing a rig after it was made: `PATCH .../rigs/:rigId`. A patch renames the rig, changes
//! its default branch, or changes where its repository and credentials come from: another
//! repository of its integration, another integration (the "Reconnect" of a rig whose
//! integration was removed), or from a hand-given URL to an integration and back.
//!
//! [`RigPatch::parse`] checks the body; [`RigPatch::plan`] says, against the rig as it is, what
//! the worker must ask the provider ([`SourcePlan`]); the worker then builds the [`RigChange`]
//! the owner's DO applies. Nothing here talks to a provider.

use crate::body::{parse_object, Fields};
use crate::error::ApiError;
use crate::ids::IntegrationId;
use crate::integrations::repo_full_name;
use crate::model::{
    check_branch, check_git_url, check_repo_name, check_rig_name, is_local_git_url, Rig,
    MAX_BRANCH, MAX_GIT_URL, MAX_INTEGRATION_ID, MAX_REPO_NAME, MAX_RIG_NAME,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a patch does with the rig's integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntegrationChange {
    /// The field is absent: the rig keeps its integration (or its lack of one).
    Keep,
    /// `null`: the rig's repository becomes a hand-given URL, credentials from the town.
    Clear,
    /// The rig's repository comes from this integration.
    Set(String),
}

/// A validated `PATCH .../rigs/:rigId` body. Fields it does not know are ignored, as a new
/// rig's are; a body that changes nothing is a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RigPatch {
    pub name: Option<String>,
    pub default_branch: Option<String>,
    pub git_url: Option<String>,
    /// `owner/name` of a repository of the integration.
    pub repo: Option<String>,
    pub integration: IntegrationChange,
}

impl RigPatch {
    /// `allow_local_git` as for a new rig (`file://` URLs, development only).
    ///
    /// # Errors
    /// 400 for a body that is not a JSON object; 422 naming the bad field.
    pub fn parse(body: &[u8], allow_local_git: bool) -> Result<Self, ApiError> {
        let map = parse_object(body)?;
        let f = Fields(&map);
        let name = f.optional_str("name", MAX_RIG_NAME)?;
        if let Some(name) = name {
            check_rig_name(name)?;
        }
        let default_branch = f.optional_str("default_branch", MAX_BRANCH)?;
        if let Some(branch) = default_branch {
            check_branch(branch)?;
        }
        let git_url = f.optional_str("git_url", MAX_GIT_URL)?;
        if let Some(url) = git_url {
            if !(allow_local_git && is_local_git_url(url)?) {
                check_git_url(url)?;
            }
        }
        let repo = f.optional_str("repo", MAX_REPO_NAME)?;
        if let Some(repo) = repo {
            check_repo_name(repo)?;
        }
        if repo.is_some() && git_url.is_some() {
            return Err(ApiError::invalid(
                "repo",
                "give either repo or git_url, not both",
            ));
        }
        let integration = match map.get("platform_integration_id") {
            None => IntegrationChange::Keep,
            Some(Value::Null) => IntegrationChange::Clear,
            Some(_) => {
                let id = f
                    .optional_str("platform_integration_id", MAX_INTEGRATION_ID)?
                    .unwrap_or_default();
                IntegrationId::parse(id)
                    .map_err(|e| ApiError::invalid("platform_integration_id", e.to_string()))?;
                IntegrationChange::Set(id.to_owned())
            }
        };
        let patch = RigPatch {
            name: name.map(str::to_owned),
            default_branch: default_branch.map(str::to_owned),
            git_url: git_url.map(str::to_owned),
            repo: repo.map(str::to_owned),
            integration,
        };
        if patch == RigPatch::nothing() {
            return Err(ApiError::invalid(
                "body",
                "changes nothing: give name, default_branch, git_url, repo or platform_integration_id",
            ));
        }
        Ok(patch)
    }

    fn nothing() -> Self {
        RigPatch {
            name: None,
            default_branch: None,
            git_url: None,
            repo: None,
            integration: IntegrationChange::Keep,
        }
    }

    /// What becomes of `rig`'s repository: unchanged, a hand-given URL, or a repository of an
    /// integration for the worker to look up. Without `repo` or `git_url`, an integration
    /// given anew keeps the rig's repository (the reconnect), and clearing the integration
    /// keeps its URL.
    ///
    /// # Errors
    /// 422 for a repository the patch cannot name.
    pub fn plan(&self, rig: &Rig) -> Result<SourcePlan, ApiError> {
        let touched = self.integration != IntegrationChange::Keep
            || self.git_url.is_some()
            || self.repo.is_some();
        if !touched {
            return Ok(SourcePlan::Keep);
        }
        let integration = match &self.integration {
            IntegrationChange::Keep => rig.platform_integration_id.clone(),
            IntegrationChange::Clear => None,
            IntegrationChange::Set(id) => Some(id.clone()),
        };
        let Some(integration_id) = integration else {
            if self.repo.is_some() {
                return Err(ApiError::invalid(
                    "repo",
                    "needs platform_integration_id: the integration the repository comes from",
                ));
            }
            return Ok(SourcePlan::Url {
                git_url: self.git_url.clone().unwrap_or_else(|| rig.git_url.clone()),
            });
        };
        let repo = match (&self.repo, &self.git_url) {
            (Some(repo), _) => repo.clone(),
            (None, Some(url)) => repo_full_name(url)
                .ok_or_else(|| ApiError::invalid("git_url", "names no owner/repository"))?,
            (None, None) => repo_full_name(&rig.git_url).ok_or_else(|| {
                ApiError::invalid(
                    "repo",
                    "is required: the rig's URL names no repository of an integration",
                )
            })?,
        };
        let same_repo = repo_full_name(&rig.git_url).is_some_and(|r| r.eq_ignore_ascii_case(&repo));
        Ok(SourcePlan::Integration {
            integration_id,
            repo,
            git_url: self.git_url.clone(),
            same_repo,
        })
    }
}

/// Where a patched rig's repository comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePlan {
    /// As it is.
    Keep,
    /// A hand-given URL, no integration.
    Url { git_url: String },
    /// `repo` of `integration_id`, to be looked up with the provider (which must list it for
    /// the town's owner); a given `git_url` must name that same repository.
    Integration {
        integration_id: String,
        repo: String,
        git_url: Option<String>,
        /// The rig already names this repository: it keeps its default branch unless the
        /// patch gives one.
        same_repo: bool,
    },
}

/// Where a rig's repository comes from, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RigSourceFields {
    pub git_url: String,
    pub platform_integration_id: Option<String>,
}

impl RigSourceFields {
    #[must_use]
    pub fn of(rig: &Rig) -> Self {
        RigSourceFields {
            git_url: rig.git_url.clone(),
            platform_integration_id: rig.platform_integration_id.clone(),
        }
    }
}

/// What the owner's DO changes in a rig: only the fields that are `Some`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RigChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceChange>,
}

/// A new source, and the one it was decided against: when the rig's source changed meanwhile
/// (a concurrent patch), the change is refused rather than applied to what it never saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceChange {
    pub to: RigSourceFields,
    pub from: RigSourceFields,
}

impl RigChange {
    /// `rig` with the change applied.
    ///
    /// # Errors
    /// 409 when the source changed since the change was decided.
    pub fn apply(&self, rig: &Rig) -> Result<Rig, ApiError> {
        let mut next = rig.clone();
        if let Some(name) = &self.name {
            next.name.clone_from(name);
        }
        if let Some(branch) = &self.default_branch {
            next.default_branch.clone_from(branch);
        }
        if let Some(source) = &self.source {
            if RigSourceFields::of(rig) != source.from {
                return Err(ApiError::Conflict(
                    "the rig's repository changed while this change was made: read it and try again"
                        .into(),
                ));
            }
            next.git_url.clone_from(&source.to.git_url);
            next.platform_integration_id
                .clone_from(&source.to.platform_integration_id);
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::rig;

    fn parse(body: &str) -> Result<RigPatch, ApiError> {
        RigPatch::parse(body.as_bytes(), false)
    }

    fn field(e: ApiError) -> String {
        match e {
            ApiError::Invalid { field, .. } => field,
            other => panic!("not a 422: {other:?}"),
        }
    }

    #[test]
    fn bodies() {
        let p = parse(r#"{"default_branch":"dev"}"#).unwrap();
        assert_eq!(p.default_branch.as_deref(), Some("dev"));
        assert_eq!(p.integration, IntegrationChange::Keep);
        let p = parse(r#"{"platform_integration_id":null}"#).unwrap();
        assert_eq!(p.integration, IntegrationChange::Clear);
        let p = parse(r#"{"platform_integration_id":"int-2","repo":"a/b"}"#).unwrap();
        assert_eq!(p.integration, IntegrationChange::Set("int-2".into()));
        for (bad, named) in [
            ("{}", "body"),
            (r#"{"token":"x"}"#, "body"),
            (r#"{"name":"-x"}"#, "name"),
            (r#"{"name":7}"#, "name"),
            (r#"{"default_branch":"a..b"}"#, "default_branch"),
            (r#"{"git_url":"https://u:p@h/a/b"}"#, "git_url"),
            (r#"{"git_url":"file:///tmp/x"}"#, "git_url"),
            (r#"{"repo":"nope"}"#, "repo"),
            (r#"{"repo":"a/b","git_url":"https://h/a/b"}"#, "repo"),
            (
                r#"{"platform_integration_id":""}"#,
                "platform_integration_id",
            ),
            (
                r#"{"platform_integration_id":5}"#,
                "platform_integration_id",
            ),
            (
                r#"{"platform_integration_id":"a b"}"#,
                "platform_integration_id",
            ),
        ] {
            assert_eq!(field(parse(bad).unwrap_err()), named, "{bad}");
        }
        assert!(matches!(parse("[]"), Err(ApiError::InvalidJson(_))));
        assert!(RigPatch::parse(br#"{"git_url":"file:///tmp/x"}"#, true).is_ok());
    }

    #[test]
    fn plans() {
        let mut manual = rig("r1", "t1");
        manual.git_url = "https://github.com/acme/app.git".into();
        let mut linked = manual.clone();
        linked.platform_integration_id = Some("int-1".into());

        let p = |body: &str| parse(body).unwrap();
        assert_eq!(
            p(r#"{"name":"x"}"#).plan(&linked).unwrap(),
            SourcePlan::Keep
        );
        // The reconnect: another integration, the same repository.
        assert_eq!(
            p(r#"{"platform_integration_id":"int-2"}"#)
                .plan(&linked)
                .unwrap(),
            SourcePlan::Integration {
                integration_id: "int-2".into(),
                repo: "acme/app".into(),
                git_url: None,
                same_repo: true,
            }
        );
        // Another repository of the same integration.
        assert_eq!(
            p(r#"{"repo":"acme/web"}"#).plan(&linked).unwrap(),
            SourcePlan::Integration {
                integration_id: "int-1".into(),
                repo: "acme/web".into(),
                git_url: None,
                same_repo: false,
            }
        );
        // From a URL to an integration, and back.
        assert!(matches!(
            p(r#"{"platform_integration_id":"int-1"}"#)
                .plan(&manual)
                .unwrap(),
            SourcePlan::Integration {
                same_repo: true,
                ..
            }
        ));
        assert_eq!(
            p(r#"{"platform_integration_id":null}"#)
                .plan(&linked)
                .unwrap(),
            SourcePlan::Url {
                git_url: manual.git_url.clone()
            }
        );
        assert_eq!(
            p(r#"{"git_url":"https://gitlab.com/g/x.git"}"#)
                .plan(&manual)
                .unwrap(),
            SourcePlan::Url {
                git_url: "https://gitlab.com/g/x.git".into()
            }
        );
        // A repository needs an integration.
        assert_eq!(
            field(p(r#"{"repo":"acme/web"}"#).plan(&manual).unwrap_err()),
            "repo"
        );
    }

    #[test]
    fn changes_apply_to_what_they_saw() {
        let mut r = rig("r1", "t1");
        r.git_url = "https://github.com/acme/app.git".into();
        let change = RigChange {
            name: Some("renamed".into()),
            default_branch: None,
            source: Some(SourceChange {
                from: RigSourceFields::of(&r),
                to: RigSourceFields {
                    git_url: "https://github.com/acme/web.git".into(),
                    platform_integration_id: Some("int-1".into()),
                },
            }),
        };
        let next = change.apply(&r).unwrap();
        assert_eq!(next.name, "renamed");
        assert_eq!(next.git_url, "https://github.com/acme/web.git");
        assert_eq!(next.platform_integration_id.as_deref(), Some("int-1"));
        assert_eq!(next.default_branch, r.default_branch);
        // Applied again, to the rig it already changed: the source it saw is gone.
        assert!(matches!(change.apply(&next), Err(ApiError::Conflict(_))));
        let json = serde_json::to_string(&RigChange {
            default_branch: Some("dev".into()),
            ..RigChange::default()
        })
        .unwrap();
        assert_eq!(json, r#"{"default_branch":"dev"}"#);
    }
}

//! Git tokens for a rig, asked by the town's container (for the rig its token names) or with the
//! internal key: the town's Durable Object says which credentials the rig may use, and
//! [`git_token::for_rig`] mints or refreshes the token.

use crate::dos::town as town_do;
use crate::http::{json, read_json_body};
use crate::platforms::git_token;
use crate::rig_index;
use gastown_core::authz::ContainerCaller;
use gastown_core::error::ApiError;
use gastown_core::ids::{AgentId, RigId};
use gastown_core::integrations::{BotReason, GitIdentity};
use gastown_core::protocol::town::{NoteGitIdentity, RigCredentials};
use worker::{Env, Request, Response};

type Handled = Result<Response, ApiError>;

/// `POST /api/towns/:townId/rigs/:rigId/git-token` (the town's container token). A JSON body
/// may name the asking agent, `{"agent_id": "…"}`: the token is then minted for the user the
/// agent's work runs as, and the identity it carries is recorded for the agent's session (a
/// change, such as a fall back to the bot after the user revoked, goes to the bead's events).
pub async fn container_git_token(
    req: &mut Request,
    env: &Env,
    caller: &ContainerCaller,
) -> Handled {
    let rig_id = caller
        .rig_id
        .clone()
        .ok_or_else(|| ApiError::BadRequest("the route names the rig".into()))?;
    let agent_id = asking_agent(req).await?;
    let stub = town_do::stub(env, &caller.town_id)?;
    let creds = stub
        .call(RigCredentials {
            credential: Some(caller.credential),
            rig_id,
            agent_id: agent_id.clone(),
        })
        .await?;
    let recorded = creds.session_identity.clone();
    let reply = git_token::for_rig(env, creds).await?;
    if let (Some(agent_id), Some(identity)) = (agent_id, &reply.identity) {
        let key = identity_key(identity);
        if recorded.as_deref() != Some(key.as_str()) {
            let message = identity_message(identity, recorded.as_deref());
            stub.call(NoteGitIdentity {
                agent_id,
                identity: key,
                message,
            })
            .await?;
        }
    }
    Ok(json(200, &reply))
}

/// The agent a git-token request names, if its body names one.
async fn asking_agent(req: &mut Request) -> Result<Option<AgentId>, ApiError> {
    let has_body = req.headers().get("content-type").ok().flatten().is_some();
    if !has_body {
        return Ok(None);
    }
    let body = read_json_body(req).await?;
    let map = gastown_core::body::parse_object(&body)?;
    gastown_core::body::Fields(&map)
        .optional_str("agent_id", gastown_core::ids::MAX_ID_LEN)?
        .map(|id| AgentId::parse(id).map_err(|e| ApiError::invalid("agent_id", e.to_string())))
        .transpose()
}

/// How an identity is recorded for a session: `user:<email>` or `bot:<reason>`.
fn identity_key(identity: &GitIdentity) -> String {
    match identity {
        GitIdentity::User { email, .. } => format!("user:{email}"),
        GitIdentity::Bot { reason } => format!("bot:{}", reason.as_str()),
    }
}

/// What the bead's events say of a session's identity, for the dashboard to show.
fn identity_message(identity: &GitIdentity, before: Option<&str>) -> String {
    let why = |reason: BotReason| match reason {
        BotReason::Disabled => "commit-as-user is off for this town",
        BotReason::NotConnected => "the user has not connected GitHub",
        BotReason::Revoked => "the user's GitHub authorization was revoked",
        BotReason::NoRepoAccess => "the user has no push access to the repository",
        BotReason::RefreshFailed => "the user's GitHub token could not be refreshed",
    };
    let was_user = before.is_some_and(|b| b.starts_with("user:"));
    match identity {
        GitIdentity::User { name, email } => format!("commits as {name} <{email}>"),
        GitIdentity::Bot { reason } if was_user => format!(
            "fell back to the bot mid-session ({}): {}",
            reason.as_str(),
            why(*reason)
        ),
        GitIdentity::Bot { reason } => {
            format!("commits as the bot ({}): {}", reason.as_str(), why(*reason))
        }
    }
}

/// `POST /api/internal/rigs/:rigId/git-token` (the internal key).
pub async fn internal_git_token(env: &Env, rig: &RigId) -> Handled {
    let location = rig_index::find(env, rig)
        .await?
        .ok_or_else(|| ApiError::NotFound("rig not found".into()))?;
    let creds = town_do::stub(env, &location.town_id)?
        .call(RigCredentials {
            credential: None,
            rig_id: rig.clone(),
            agent_id: None,
        })
        .await?;
    Ok(json(200, &git_token::for_rig(env, creds).await?))
}

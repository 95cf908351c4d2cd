//! Container routes: called by a town's agents with the town's container token (or a legacy
//! agent token), already verified and scoped to the route's town by the router.

use crate::dos::town;
use crate::http::read_json_body;
use crate::http::{json, json_reply, query};
use gastown_core::authz::ContainerCaller;
use gastown_core::beads::{BeadFilter, BeadPatch, NewBead, SlingBatch};
use gastown_core::body::{only_fields, parse_object, Fields};
use gastown_core::control::{
    AgentDoneCallback, AgentExitCallback, AgentStatusCallback, Drained, MAX_CALLBACK_TEXT,
};
use gastown_core::error::ApiError;
use gastown_core::events::EventBatch;
use gastown_core::ids::{AgentId, RigId};
use gastown_core::mayor::{self, MAYOR_KEY_HEADER};
use gastown_core::page::Page;
use gastown_core::protocol::town::{
    AgentDone, AgentEventsOp, AgentExited, AgentStatus, Heartbeat, IssueContainerToken,
    IssueSandboxToken, MayorTool, MayorToolOp,
};
use gastown_core::routes::MayorToolRoute;
use worker::{Env, Request, Response};

type Handled = Result<Response, ApiError>;

/// A fresh container token for a container holding a valid one: the one route whose purpose is
/// to hand a token to its rightful caller. Its identity comes from the town, not the old token.
pub async fn refresh_token(env: &Env, caller: &ContainerCaller) -> Handled {
    let issued = town::stub(env, &caller.town_id)?
        .call(IssueContainerToken {
            credential: caller.credential,
        })
        .await?;
    Ok(json(200, &issued))
}

/// The rig and agent a callback speaks for.
fn agent_scope(caller: &ContainerCaller) -> Result<(RigId, AgentId), ApiError> {
    match (caller.rig_id.clone(), caller.agent_id.clone()) {
        (Some(rig), Some(agent)) => Ok((rig, agent)),
        _ => Err(ApiError::BadRequest(
            "an agent callback names its rig and agent".into(),
        )),
    }
}

pub async fn heartbeat(env: &Env, caller: &ContainerCaller) -> Handled {
    let (rig_id, agent_id) = agent_scope(caller)?;
    let ack = town::stub(env, &caller.town_id)?
        .call(Heartbeat {
            credential: caller.credential,
            rig_id,
            agent_id,
        })
        .await?;
    Ok(json(200, &ack))
}

/// `POST .../status {message}`: recorded on the agent's bead.
pub async fn agent_status(req: &mut Request, env: &Env, caller: &ContainerCaller) -> Handled {
    let (rig_id, agent_id) = agent_scope(caller)?;
    let body = parse_object(&read_json_body(req).await?)?;
    only_fields(&body, &["message"])?;
    let message = Fields(&body)
        .required_str("message", MAX_CALLBACK_TEXT)?
        .to_owned();
    let ack = town::stub(env, &caller.town_id)?
        .call(AgentStatus {
            credential: caller.credential,
            rig_id,
            agent_id,
            status: AgentStatusCallback { message },
        })
        .await?;
    Ok(json(200, &ack))
}

/// `POST .../done {summary, branch?, pr_url?}`: the agent's bead is closed (or in review) and
/// the agent freed.
pub async fn agent_done(req: &mut Request, env: &Env, caller: &ContainerCaller) -> Handled {
    let (rig_id, agent_id) = agent_scope(caller)?;
    let body = parse_object(&read_json_body(req).await?)?;
    only_fields(&body, &["summary", "branch", "pr_url"])?;
    let f = Fields(&body);
    let done = AgentDoneCallback {
        summary: f.required_str("summary", MAX_CALLBACK_TEXT)?.to_owned(),
        branch: f.optional_str("branch", 255)?.map(str::to_owned),
        pr_url: f.optional_str("pr_url", 2000)?.map(str::to_owned),
    };
    let bead = town::stub(env, &caller.town_id)?
        .call(AgentDone {
            credential: caller.credential,
            rig_id,
            agent_id,
            done,
        })
        .await?;
    Ok(json(200, &bead))
}

/// `POST .../events {run, events}`: a batch of the agent's events.
pub async fn agent_events(req: &mut Request, env: &Env, caller: &ContainerCaller) -> Handled {
    let (rig_id, agent_id) = agent_scope(caller)?;
    let batch = EventBatch::parse(&read_json_body(req).await?)?;
    let stored = town::stub(env, &caller.town_id)?
        .call(AgentEventsOp {
            credential: caller.credential,
            rig_id,
            agent_id,
            batch,
        })
        .await?;
    Ok(json(200, &stored))
}

/// The container saw the agent's process end.
pub async fn agent_exit(req: &mut Request, env: &Env, caller: &ContainerCaller) -> Handled {
    let (rig_id, agent_id) = agent_scope(caller)?;
    let body = parse_object(&read_json_body(req).await?)?;
    only_fields(&body, &["exit_code", "output_tail", "drained"])?;
    let exit_code = match body.get("exit_code") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| ApiError::invalid("exit_code", "must be an integer or null"))?,
        ),
    };
    // Several lines are the point of a tail: kept as text, control characters but newlines
    // dropped, capped.
    let output_tail = match body.get("output_tail") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s
            .chars()
            .filter(|c| *c == '\n' || !c.is_control())
            .take(MAX_CALLBACK_TEXT)
            .collect(),
        Some(_) => return Err(ApiError::invalid("output_tail", "must be a string")),
    };
    town::stub(env, &caller.town_id)?
        .call(AgentExited {
            credential: caller.credential,
            rig_id,
            agent_id,
            exit: AgentExitCallback {
                exit_code,
                output_tail,
                drained: match body.get("drained") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(value) => Some(drained(value)?),
                },
            },
        })
        .await?;
    Ok(json(200, &gastown_core::protocol::Ack::OK))
}

/// `drained` of an exit report: what an eviction drain saved. The town checks the branch is
/// the one the agent was given; here only the shapes.
fn drained(value: &serde_json::Value) -> Result<Drained, ApiError> {
    let field = "drained";
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::invalid(field, "must be an object"))?;
    if let Some(extra) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "branch" | "pushed" | "head" | "error"))
    {
        return Err(ApiError::invalid(
            field,
            format!("has an unknown field {extra:?}"),
        ));
    }
    let branch = object
        .get("branch")
        .and_then(serde_json::Value::as_str)
        .filter(|b| !b.is_empty() && b.len() <= 255 && !b.chars().any(char::is_control))
        .ok_or_else(|| ApiError::invalid(field, "branch must be a branch name"))?;
    let pushed = object
        .get("pushed")
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| ApiError::invalid(field, "pushed must be true or false"))?;
    let head = match object.get("head") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(h))
            if (4..=64).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Some(h.to_ascii_lowercase())
        }
        Some(_) => return Err(ApiError::invalid(field, "head must be a commit id")),
    };
    let error = match object.get("error") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(e)) => Some(
            e.chars()
                .filter(|c| !c.is_control())
                .take(MAX_CALLBACK_TEXT)
                .collect(),
        ),
        Some(_) => return Err(ApiError::invalid(field, "error must be a string")),
    };
    Ok(Drained {
        branch: branch.to_owned(),
        pushed,
        head,
        error,
    })
}

/// A mayor tool: the container token (checked by the router, its generation by the town) and
/// the mayor session's key, which only the town can check (it keeps the key's hash): a caller
/// without one is refused there, after its token's generation, so a revoked token still hears
/// `token_revoked` and a stopped town `town_stopped`.
pub async fn mayor_tool(
    req: &mut Request,
    env: &Env,
    caller: &ContainerCaller,
    route: MayorToolRoute,
) -> Handled {
    let key = req
        .headers()
        .get(MAYOR_KEY_HEADER)
        .ok()
        .flatten()
        .filter(|k| k.len() <= 128)
        .unwrap_or_default();
    let created = matches!(
        route,
        MayorToolRoute::CreateBead
            | MayorToolRoute::Sling
            | MayorToolRoute::SlingBatch
            | MayorToolRoute::Reply
    );
    let tool = match mayor_tool_of(req, route).await {
        Ok(tool) => tool,
        Err(bad) => {
            // The caller hears first what the town says of them (403 for no mayor).
            town::stub(env, &caller.town_id)?
                .call(MayorToolOp {
                    credential: caller.credential,
                    key,
                    tool: MayorTool::Admit,
                })
                .await?;
            return Err(bad);
        }
    };
    let answer = town::stub(env, &caller.town_id)?
        .call(MayorToolOp {
            credential: caller.credential,
            key,
            tool,
        })
        .await?;
    Ok(json_reply(if created { 201 } else { 200 }, answer))
}

/// The container's own gateway-token refresh: a container token of the town's current
/// generation gets a fresh 24-hour sandbox token (legacy agent tokens were refused by the
/// router: this route names no agent).
pub async fn sandbox_token(env: &Env, caller: &ContainerCaller) -> Handled {
    let issued = town::stub(env, &caller.town_id)?
        .call(IssueSandboxToken {
            credential: Some(caller.credential),
        })
        .await?;
    Ok(json(200, &issued))
}

/// The tool a route asks for, its query or body checked.
async fn mayor_tool_of(req: &mut Request, route: MayorToolRoute) -> Result<MayorTool, ApiError> {
    Ok(match route {
        MayorToolRoute::Rigs => MayorTool::Rigs,
        MayorToolRoute::ListBeads => {
            let q = query(req);
            MayorTool::ListBeads {
                filter: BeadFilter::parse(q.as_deref())?,
                page: Page::parse(q.as_deref())?,
            }
        }
        MayorToolRoute::GetBead(bead_id) => MayorTool::GetBead { bead_id },
        MayorToolRoute::CreateBead => MayorTool::CreateBead {
            bead: NewBead::parse(&read_json_body(req).await?)?,
        },
        MayorToolRoute::Sling => MayorTool::CreateBead {
            bead: NewBead::parse_sling(&read_json_body(req).await?)?,
        },
        MayorToolRoute::PatchBead(bead_id) => MayorTool::PatchBead {
            bead_id,
            patch: BeadPatch::parse(&read_json_body(req).await?)?,
        },
        MayorToolRoute::SlingBatch => MayorTool::SlingBatch {
            batch: SlingBatch::parse(&read_json_body(req).await?)?,
        },
        MayorToolRoute::ListAgents => MayorTool::ListAgents,
        MayorToolRoute::ResetAgent(agent_id) => MayorTool::ResetAgent { agent_id },
        MayorToolRoute::AckEscalation(bead_id) => MayorTool::AckEscalation { bead_id },
        MayorToolRoute::Reply => MayorTool::Reply {
            text: mayor::parse_text(&read_json_body(req).await?)?,
        },
        MayorToolRoute::State => MayorTool::State {
            status: mayor::parse_state(&read_json_body(req).await?)?,
        },
        MayorToolRoute::Events => MayorTool::Events {
            batch: EventBatch::parse(&read_json_body(req).await?)?,
        },
    })
}

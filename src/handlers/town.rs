//! Town routes, `/api/towns/:townId/...` (user token): one call to the town's own DO each. The
//! operation carries the caller (`authz::TownCaller`), and the DO decides access from its own
//! record before it does the work (404 for an unknown or destroyed town, 403 for a caller its
//! ownership does not admit), so no owner DO is consulted and personal and org towns take the
//! same path.
//!
//! Bodies and query strings are checked here, before any DO is called. A bad one still answers
//! as it did when access was checked first: a caller the town does not admit hears 404 or 403,
//! not 422, at the cost of one access call on that (error) path only.

use crate::config;
use crate::dos::town as town_do;
use crate::http::{json, json_reply, page, query, read_json_body};
use gastown_core::auth::UserClaims;
use gastown_core::authz::{self, TownCaller};
use gastown_core::beads::{BeadFilter, BeadPatch, NewBead, SlingBatch};
use gastown_core::error::ApiError;
use gastown_core::ids::TownId;
use gastown_core::mayor;
use gastown_core::page::SeqPage;
use gastown_core::protocol::town as t;
use gastown_core::routes::{StreamRoute, TownAction};
use gastown_core::stream::{self, IssuedTicket, StreamOpen, StreamScope, TicketClaims};
use gastown_core::time::rfc3339;
use gastown_core::town_config::ConfigPatch;
use serde::Serialize;
use worker::{Env, Headers, Method, Request, RequestInit, Response};

type Handled = Result<Response, ApiError>;

/// A town route: `action` on `town` for the user of `claims`.
///
/// # Errors
/// As each operation answers.
pub async fn route(
    req: &mut Request,
    env: &Env,
    claims: &UserClaims,
    town: TownId,
    action: TownAction,
) -> Handled {
    let caller = TownCaller::of(claims)?;
    let stub = town_do::stub(env, &town)?;
    match action {
        TownAction::Get => Ok(json(200, &stub.call(t::Get { caller }).await?)),
        TownAction::ListRigs => {
            let page = admitted(&stub, &caller, page(req), None).await?;
            Ok(json_reply(
                200,
                stub.call(t::ListRigs { caller, page }).await?,
            ))
        }
        TownAction::PatchRig(rig_id) => {
            // The town's DO admits the caller and names the owner whose DO holds the rig; a
            // rig may be changed by whoever may create one there.
            let owner = stub.call(t::Get { caller }).await?.owner;
            crate::handlers::owned::patch_rig(req, env, &owner, rig_id, Some(town)).await
        }
        TownAction::GetConfig => Ok(json_reply(200, stub.call(t::GetConfig { caller }).await?)),
        TownAction::PatchConfig => {
            let body = read_json_body(req).await;
            let patch = admitted(
                &stub,
                &caller,
                body.and_then(|b| ConfigPatch::parse(&b)),
                Some("change its config"),
            )
            .await?;
            Ok(json_reply(
                200,
                stub.call(t::PatchConfig { caller, patch }).await?,
            ))
        }
        TownAction::GetContainer => Ok(json(200, &stub.call(t::ContainerStatus { caller }).await?)),
        TownAction::StartContainer => {
            Ok(json(200, &stub.call(t::StartContainer { caller }).await?))
        }
        TownAction::ForceContainerTokenRefresh => {
            let pushed = stub.call(t::ForceTokenRefresh { caller }).await?;
            #[derive(Serialize)]
            struct Expiry {
                token_expires_at: Option<i64>,
            }
            Ok(json(
                200,
                &Expiry {
                    token_expires_at: pushed.token_expires_at,
                },
            ))
        }
        TownAction::Stop => Ok(json(200, &stub.call(t::StopTown { caller }).await?)),
        TownAction::Start => Ok(json(200, &stub.call(t::StartTown { caller }).await?)),
        TownAction::ListAgents => Ok(json_reply(200, stub.call(t::ListAgents { caller }).await?)),
        TownAction::EnsureMayor => Ok(json(200, &stub.call(t::EnsureMayor { caller }).await?)),
        TownAction::AgentEvents(agent_id) => {
            let page =
                admitted(&stub, &caller, SeqPage::parse(query(req).as_deref()), None).await?;
            let list = t::ListAgentEvents {
                caller,
                agent_id,
                page,
            };
            Ok(json(200, &stub.call(list).await?))
        }
        TownAction::StreamTicket => {
            let body = read_json_body(req).await;
            let scope = admitted(
                &stub,
                &caller,
                body.and_then(|b| stream::parse_ticket_request(&b)),
                None,
            )
            .await?;
            let admit = t::AdmitStream {
                caller,
                scope: scope.as_string(),
            };
            stub.call(admit).await?;
            Ok(json(201, &issue_ticket(env, claims, &town, &scope)?))
        }
        TownAction::MayorView => Ok(json(200, &stub.call(t::MayorViewOp { caller }).await?)),
        TownAction::MayorSay => {
            let body = read_json_body(req).await;
            let text = admitted(
                &stub,
                &caller,
                body.and_then(|b| mayor::parse_text(&b)),
                None,
            )
            .await?;
            Ok(json(202, &stub.call(t::MayorSay { caller, text }).await?))
        }
        TownAction::MayorTranscript => {
            let page =
                admitted(&stub, &caller, SeqPage::parse(query(req).as_deref()), None).await?;
            Ok(json(
                200,
                &stub.call(t::MayorTranscript { caller, page }).await?,
            ))
        }
        TownAction::ListBeads => {
            let filter = admitted(
                &stub,
                &caller,
                BeadFilter::parse(query(req).as_deref()),
                None,
            )
            .await?;
            let page = admitted(&stub, &caller, page(req), None).await?;
            let list = t::ListBeads {
                caller,
                filter,
                page,
            };
            Ok(json_reply(200, stub.call(list).await?))
        }
        TownAction::CreateBead | TownAction::Sling => {
            let body = read_json_body(req).await;
            let bead = admitted(
                &stub,
                &caller,
                body.and_then(|b| {
                    if matches!(action, TownAction::Sling) {
                        NewBead::parse_sling(&b)
                    } else {
                        NewBead::parse(&b)
                    }
                }),
                None,
            )
            .await?;
            Ok(json(201, &stub.call(t::CreateBead { caller, bead }).await?))
        }
        TownAction::GetBead(bead_id) => Ok(json_reply(
            200,
            stub.call(t::GetBead { caller, bead_id }).await?,
        )),
        TownAction::PatchBead(bead_id) => {
            let body = read_json_body(req).await;
            let patch = admitted(
                &stub,
                &caller,
                body.and_then(|b| BeadPatch::parse(&b)),
                None,
            )
            .await?;
            let patched = t::PatchBead {
                caller,
                bead_id,
                patch,
            };
            Ok(json(200, &stub.call(patched).await?))
        }
        TownAction::DeleteBead(bead_id) => Ok(json(
            200,
            &stub.call(t::DeleteBead { caller, bead_id }).await?,
        )),
        TownAction::SlingBatch => {
            let body = read_json_body(req).await;
            let batch = admitted(
                &stub,
                &caller,
                body.and_then(|b| SlingBatch::parse(&b)),
                None,
            )
            .await?;
            Ok(json(
                201,
                &stub.call(t::SlingBatchOp { caller, batch }).await?,
            ))
        }
        TownAction::ListConvoys => Ok(json(200, &stub.call(t::ListConvoys { caller }).await?)),
        TownAction::GetConvoy(convoy_id) => Ok(json(
            200,
            &stub.call(t::GetConvoy { caller, convoy_id }).await?,
        )),
    }
}

/// `input` if it is good. If it is bad, the caller still hears first what the town says of
/// them (404, 403, or 403 for a non-manager where `manages` names the act), as the route
/// answered when access was a call of its own; only this error path makes a second call.
/// A ticket for `scope` of `town`, for the user of `claims` (the town admitted them).
fn issue_ticket(
    env: &Env,
    claims: &UserClaims,
    town: &TownId,
    scope: &StreamScope,
) -> Result<IssuedTicket, ApiError> {
    let settings = config::get(env);
    let key = settings
        .ticket_key
        .as_deref()
        .ok_or_else(|| ApiError::internal("GASTOWN_JWT_SECRET is not configured"))?;
    let exp = config::now_s() + stream::TICKET_TTL_SECS;
    let ticket = stream::sign_ticket(
        key,
        &TicketClaims {
            town: town.clone(),
            user: claims.user_id.clone(),
            scope: scope.as_string(),
            nonce: config::new_id()?,
            exp,
        },
    );
    Ok(IssuedTicket {
        url: format!("{}?ticket={ticket}", scope.path(town)),
        ticket,
        scope: scope.as_string(),
        expires_at: rfc3339(u64::try_from(exp).unwrap_or(0) * 1000),
    })
}

/// A socket of one of the town's streams, its ticket verified by the router: handed to the
/// town's DO by `fetch` (a WebSocket cannot travel over RPC), with what the ticket says.
///
/// # Errors
/// Internal, when the DO cannot be reached; the DO's own refusals come back as its response.
pub async fn open_stream(
    env: &Env,
    route: &StreamRoute,
    open: &StreamOpen,
) -> Result<Response, ApiError> {
    let headers = Headers::new();
    let set = |name: &str, value: &str| headers.set(name, value).map_err(ApiError::internal);
    set("upgrade", "websocket")?;
    set(
        stream::OPEN_HEADER,
        &serde_json::to_string(open).map_err(ApiError::internal)?,
    )?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let inner = Request::new_with_init("https://town/stream", &init).map_err(ApiError::internal)?;
    env.durable_object(town_do::BINDING)
        .and_then(|ns| ns.get_by_name(route.town.as_str()))
        .map_err(ApiError::internal)?
        .fetch_with_request(inner)
        .await
        .map_err(ApiError::internal)
}

async fn admitted<T>(
    stub: &town_do::TownStub,
    caller: &TownCaller,
    input: Result<T, ApiError>,
    manages: Option<&str>,
) -> Result<T, ApiError> {
    let bad = match input {
        Ok(value) => return Ok(value),
        Err(bad) => bad,
    };
    let town = stub
        .call(t::Get {
            caller: caller.clone(),
        })
        .await?;
    if let Some(what) = manages {
        authz::require_manager(caller.role_in(&town)?, what)?;
    }
    Err(bad)
}

//! The town's live streams (`gastown_core::stream`): WebSockets held with the hibernation API,
//! so an idle socket costs no CPU and does not keep the DO in memory.
//!
//! - Town sockets (tag `town`) get the town's change log, `town_events`, which triggers on the
//!   changed tables write (migration 0010). After every operation and every tick, the DO sends
//!   what was written since it last sent ([`TownDO::flush_streams`]), from a cursor it primes
//!   before the operation runs, so a write is sent once even by a DO woken from hibernation.
//! - Agent sockets (tag `agent:<id>`) get the agent's events as a batch is stored.
//!
//! A socket opens in one synchronous step (no await between reading the backfill and joining
//! the live set), so nothing written meanwhile can fall between the two or come twice.

use super::{store, TownDO};
use crate::config;
use gastown_core::error::ApiError;
use gastown_core::events::{AgentEvent, EventBatch, EventsStored};
use gastown_core::ids::AgentId;
use gastown_core::model::TownStatus;
use gastown_core::page::SeqPage;
use gastown_core::stream::{
    StreamOpen, StreamScope, TownEvent, MAX_SOCKETS, MESSAGE_BATCH, OPEN_HEADER,
};
use serde::Serialize;
use worker::{console_error, Request, Response, WebSocket, WebSocketPair};

type Reply<T> = Result<T, ApiError>;

const TOWN_TAG: &str = "town";

/// One frame to a client.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Frame<'a> {
    TownEvents {
        events: &'a [TownEvent],
    },
    AgentEvents {
        agent_id: &'a str,
        events: &'a [AgentEvent],
    },
    Ready {
        seq: u64,
    },
    Dropped {
        count: u64,
    },
}

fn send(ws: &WebSocket, frame: &Frame<'_>) {
    // A socket closing as we send is the client's business: it resumes from what it got.
    let _ = ws.send(frame);
}

impl TownDO {
    /// Before an operation writes: where the town stream stands, if not known yet.
    pub(super) fn prime_streams(&self) {
        if self.stream_cursor.get().is_some() {
            return;
        }
        match self.town().and_then(|t| match t {
            Some(_) => store::town_events_latest(&self.sql()),
            None => Ok(0),
        }) {
            Ok(seq) => self.stream_cursor.set(Some(seq)),
            Err(e) => console_error!("streams: cannot read the change log: {e}"),
        }
    }

    /// After an operation: sends the town's sockets what was written since the cursor.
    pub(super) fn flush_streams(&self) {
        let Some(after) = self.stream_cursor.get() else {
            return;
        };
        let sockets = self.state.get_websockets_with_tag(TOWN_TAG);
        if sockets.is_empty() || self.destroyed.get() {
            return;
        }
        match self.send_town_log(&sockets, after) {
            Ok(at) => self.stream_cursor.set(Some(at)),
            Err(e) => console_error!("streams: cannot read the change log: {e}"),
        }
    }

    /// Sends `sockets` the town's changes after `after`, in frames of [`MESSAGE_BATCH`]; the
    /// position reached. The live flush and a new socket's backfill both send this way.
    fn send_town_log(&self, sockets: &[WebSocket], after: u64) -> Reply<u64> {
        let sql = self.sql();
        let mut at = after;
        loop {
            let events = store::town_events_after(&sql, at, MESSAGE_BATCH)?;
            let Some(last) = events.last() else {
                return Ok(at);
            };
            at = last.seq;
            let frame = Frame::TownEvents { events: &events };
            for ws in sockets {
                send(ws, &frame);
            }
            if events.len() < MESSAGE_BATCH {
                return Ok(at);
            }
        }
    }

    /// Stores a batch of `agent`'s events and sends its sockets the new ones.
    pub(super) fn store_agent_events(
        &self,
        agent: &AgentId,
        batch: &EventBatch,
    ) -> Reply<EventsStored> {
        let cap = config::get(&self.env).quotas.agent_events;
        let (counts, stored) = store::insert_agent_events(&self.sql(), agent.as_str(), batch, cap)?;
        self.publish_agent_events(agent.as_str(), &stored);
        Ok(counts)
    }

    /// Sends `agent`'s sockets the events just stored.
    pub(super) fn publish_agent_events(&self, agent: &str, events: &[AgentEvent]) {
        if events.is_empty() {
            return;
        }
        let sockets = self
            .state
            .get_websockets_with_tag(&StreamScope::agent_tag(agent));
        for chunk in events.chunks(MESSAGE_BATCH) {
            let frame = Frame::AgentEvents {
                agent_id: agent,
                events: chunk,
            };
            for ws in &sockets {
                send(ws, &frame);
            }
        }
    }

    /// Closes every socket: the town stopped or is gone. What was written before is sent first.
    pub(super) fn close_streams(&self, code: u16, reason: &str) {
        self.flush_streams();
        for ws in self.state.get_websockets() {
            let _ = ws.close(Some(code), Some(reason));
        }
    }

    /// May `scope` be watched now (a ticket asked for, a socket opening)?
    pub(super) fn admit_stream_scope(&self, scope: &StreamScope) -> Reply<()> {
        let town = self.require_town()?;
        self.require_active(&town)?;
        if let StreamScope::Agent(agent) = scope {
            if store::agent(&self.sql(), agent.as_str())?.is_none() {
                return Err(ApiError::NotFound("agent not found in this town".into()));
            }
        }
        Ok(())
    }

    /// The DO's `fetch`: a socket the router admitted with a verified ticket (`OPEN_HEADER`).
    /// Anything else is not for a DO.
    pub(super) fn open_stream(&self, req: &Request) -> Reply<Response> {
        let open: StreamOpen = req
            .headers()
            .get(OPEN_HEADER)
            .ok()
            .flatten()
            .and_then(|h| serde_json::from_str(&h).ok())
            .ok_or_else(|| ApiError::NotFound("durable objects are called over RPC".into()))?;
        self.prime_streams();
        let scope = StreamScope::parse(&open.scope)?;
        self.admit_stream_scope(&scope)?;
        if self.state.get_websockets().len() >= MAX_SOCKETS {
            return Err(ApiError::Conflict(format!(
                "this town has {MAX_SOCKETS} streams open; close one first"
            )));
        }
        let sql = self.sql();
        let now = config::now_ms();
        let expires_ms = u64::try_from(open.exp).unwrap_or(0).saturating_mul(1000);
        if !store::use_ticket(&sql, &open.nonce, expires_ms, now)? {
            return Err(ApiError::Unauthorized("stream ticket already used"));
        }
        // The others first, so the cursor is at the end of the log when this one joins.
        self.flush_streams();
        let pair = WebSocketPair::new().map_err(ApiError::internal)?;
        let ws = pair.server;
        self.state
            .accept_websocket_with_tags(&ws, &[open.scope.as_str()]);
        let seq = match &scope {
            StreamScope::Town => self.backfill_town(&ws, open.after)?,
            StreamScope::Agent(agent) => self.backfill_agent(&ws, agent.as_str(), open.after)?,
        };
        send(&ws, &Frame::Ready { seq });
        Response::from_websocket(pair.client).map_err(ApiError::internal)
    }

    /// The town's changes after `after`; the position reached.
    fn backfill_town(&self, ws: &WebSocket, after: u64) -> Reply<u64> {
        let sql = self.sql();
        let (oldest, latest) = store::town_events_bounds(&sql)?;
        if after > 0 && oldest > after + 1 {
            send(
                ws,
                &Frame::Dropped {
                    count: oldest - after - 1,
                },
            );
        }
        self.send_town_log(std::slice::from_ref(ws), after)?;
        self.stream_cursor.set(Some(latest));
        Ok(latest.max(after))
    }

    /// `agent`'s events after `after` (an event id); the position reached.
    fn backfill_agent(&self, ws: &WebSocket, agent: &str, after: u64) -> Reply<u64> {
        let sql = self.sql();
        let mut page = SeqPage {
            after,
            limit: MESSAGE_BATCH as u32,
        };
        if after > 0 {
            if let Some(count) = store::agent_dropped_after(&sql, agent, after)? {
                send(ws, &Frame::Dropped { count });
            }
        }
        let mut at = after;
        loop {
            let found = store::agent_events_page(&sql, agent, page)?;
            if let Some(last) = found.events.last() {
                at = last.id;
                send(
                    ws,
                    &Frame::AgentEvents {
                        agent_id: agent,
                        events: &found.events,
                    },
                );
            }
            match found.next_after {
                Some(next) => page.after = next,
                None => break,
            }
        }
        Ok(at)
    }

    /// After the town's status changed: a town that is not active has no streams.
    pub(super) fn streams_follow_status(&self, status: TownStatus) {
        if status != TownStatus::Active {
            self.close_streams(
                gastown_core::stream::CLOSE_TOWN_STOPPED,
                "the town was stopped",
            );
        }
    }
}

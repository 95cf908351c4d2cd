//! Live streams: a town's changes and one agent's events, over WebSockets the town's DO holds
//! with the hibernation API.
//!
//! A browser cannot put an `Authorization` header on a WebSocket, so a socket is opened with a
//! stream ticket: the user asks `POST /api/towns/:townId/stream-tickets {scope}` with their token
//! (the town's access rules), and gets a ticket bound to them, the town and the scope, valid for
//! [`TICKET_TTL_SECS`] and usable once. The ticket is signed, so the router checks it before it
//! touches the town's DO; the DO, which alone can know, refuses a nonce it has seen.
//!
//! What a socket receives, each a JSON text frame ([`StreamMessage`]): the backfill after the
//! client's `after`, a `ready` marker, then live messages. A client that reconnects with
//! `after=<last position>` gets exactly what it missed.

use crate::body::{only_fields, parse_object};
use crate::error::ApiError;
use crate::ids::{AgentId, TownId, UserId};
use crate::page::{query_pairs, seq_after};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How long a ticket may be used after it is issued.
pub const TICKET_TTL_SECS: i64 = 60;
/// The close code of a socket whose town was stopped; the client should not reconnect.
pub const CLOSE_TOWN_STOPPED: u16 = 4409;
/// The close code of a socket whose town was deleted.
pub const CLOSE_TOWN_DELETED: u16 = 4404;
/// Most entries in one message.
pub const MESSAGE_BATCH: usize = 100;
/// Most sockets one town holds open; one more is refused (409).
pub const MAX_SOCKETS: usize = 1000;
/// What a ticket starts with: its format's version.
const TICKET_PREFIX: &str = "st1.";

/// What a socket watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamScope {
    /// The town's changes: bead and agent status, convoy progress, the mayor.
    Town,
    /// One agent's events.
    Agent(AgentId),
}

impl StreamScope {
    /// `town` or `agent:<agentId>`: the scope as a ticket names it, and the tag of its sockets.
    #[must_use]
    pub fn as_string(&self) -> String {
        match self {
            StreamScope::Town => "town".to_owned(),
            StreamScope::Agent(agent) => Self::agent_tag(agent.as_str()),
        }
    }

    /// # Errors
    /// 422 naming `scope`.
    pub fn parse(s: &str) -> Result<StreamScope, ApiError> {
        let bad = || ApiError::invalid("scope", "must be \"town\" or \"agent:<agentId>\"");
        if s == "town" {
            return Ok(StreamScope::Town);
        }
        let agent = s.strip_prefix("agent:").ok_or_else(bad)?;
        AgentId::parse(agent)
            .map(StreamScope::Agent)
            .map_err(|_| bad())
    }

    /// The tag of `agent`'s sockets (as [`StreamScope::as_string`] names its scope).
    #[must_use]
    pub fn agent_tag(agent: &str) -> String {
        format!("agent:{agent}")
    }

    /// The socket's path, for the ticket's answer.
    #[must_use]
    pub fn path(&self, town: &TownId) -> String {
        match self {
            StreamScope::Town => format!("/api/towns/{town}/stream"),
            StreamScope::Agent(agent) => format!("/api/towns/{town}/agents/{agent}/stream"),
        }
    }
}

/// `POST /api/towns/:townId/stream-tickets` body: `{"scope": "town" | "agent:<agentId>"}`.
///
/// # Errors
/// 400 for a body that is not a JSON object; 422 naming the bad field.
pub fn parse_ticket_request(body: &[u8]) -> Result<StreamScope, ApiError> {
    let map = parse_object(body)?;
    only_fields(&map, &["scope"])?;
    let scope = map
        .get("scope")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("scope", "is required"))?;
    StreamScope::parse(scope)
}

/// What a ticket carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    pub town: TownId,
    pub user: UserId,
    /// [`StreamScope::as_string`].
    pub scope: String,
    /// Makes it single use: the town records each nonce a socket opened with.
    pub nonce: String,
    pub exp: i64,
}

/// The answer to a ticket request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedTicket {
    pub ticket: String,
    pub scope: String,
    pub expires_at: String,
    /// The socket's path and query: the client adds `&after=<position>` to resume.
    pub url: String,
}

/// Why a ticket was refused. The client hears one message for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    Malformed,
    BadSignature,
    Expired,
    /// Issued for another town or another scope.
    WrongTarget,
}

impl TicketError {
    #[must_use]
    pub fn message(self) -> &'static str {
        match self {
            TicketError::Malformed => "stream ticket malformed",
            TicketError::BadSignature => "stream ticket invalid",
            TicketError::Expired => "stream ticket expired",
            TicketError::WrongTarget => "stream ticket not issued for this stream",
        }
    }
}

/// The key that signs tickets, derived from a deployment secret with its own context, so no
/// ticket verifies as any other token and no other token as a ticket.
#[must_use]
pub fn ticket_key(secret: &[u8]) -> Vec<u8> {
    Sha256::new()
        .chain_update(b"gastown-stream-ticket-key-v1:")
        .chain_update(secret)
        .finalize()
        .to_vec()
}

fn mac_of(key: &[u8], body: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(TICKET_PREFIX.as_bytes());
    mac.update(body.as_bytes());
    mac
}

/// `st1.` base64url(claims JSON) `.` base64url(HMAC-SHA256(key, `st1.` ‖ that base64)).
#[must_use]
pub fn sign_ticket(key: &[u8], claims: &TicketClaims) -> String {
    let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let sig = B64.encode(mac_of(key, &body).finalize().into_bytes());
    format!("{TICKET_PREFIX}{body}.{sig}")
}

/// Checks the signature (in constant time), the expiry, and that the ticket was issued for
/// `town` and `scope`. Single use is the town's to check.
///
/// # Errors
/// As [`TicketError`].
pub fn verify_ticket(
    key: &[u8],
    ticket: &str,
    town: &TownId,
    scope: &StreamScope,
    now: i64,
) -> Result<TicketClaims, TicketError> {
    let rest = ticket
        .strip_prefix(TICKET_PREFIX)
        .ok_or(TicketError::Malformed)?;
    let (body, sig) = rest.split_once('.').ok_or(TicketError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| TicketError::Malformed)?;
    mac_of(key, body)
        .verify_slice(&sig)
        .map_err(|_| TicketError::BadSignature)?;
    let bytes = B64.decode(body).map_err(|_| TicketError::Malformed)?;
    let claims: TicketClaims =
        serde_json::from_slice(&bytes).map_err(|_| TicketError::Malformed)?;
    if now >= claims.exp || claims.exp - now > TICKET_TTL_SECS {
        return Err(TicketError::Expired);
    }
    if &claims.town != town || claims.scope != scope.as_string() {
        return Err(TicketError::WrongTarget);
    }
    Ok(claims)
}

/// A socket's query string: `ticket=<ticket>[&after=<position>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamQuery {
    pub ticket: String,
    /// The last position the client has (a town event's `seq`, an agent event's `id`).
    pub after: u64,
}

impl StreamQuery {
    /// # Errors
    /// 401 without a ticket; 422 naming a malformed `after`.
    pub fn parse(query: Option<&str>) -> Result<StreamQuery, ApiError> {
        let mut ticket = None;
        let mut after = 0;
        for (key, value) in query_pairs(query) {
            match key {
                // A ticket is base64url and dots: nothing to decode.
                "ticket" if !value.is_empty() => ticket = Some(value.to_owned()),
                "after" => after = seq_after(value, "must be the last position received")?,
                _ => {}
            }
        }
        let ticket = ticket.ok_or(ApiError::Unauthorized("stream ticket required"))?;
        Ok(StreamQuery { ticket, after })
    }
}

/// What the router hands the town's DO with a socket's request, in [`OPEN_HEADER`]: the
/// verified ticket's user, scope and nonce, and the client's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOpen {
    pub user: UserId,
    pub scope: String,
    pub nonce: String,
    /// Until when the nonce must be remembered (s).
    pub exp: i64,
    pub after: u64,
}

/// The header that carries [`StreamOpen`] from the router to the DO.
pub const OPEN_HEADER: &str = "x-gastown-stream-open";

/// One change of a town, as its stream sends it and its log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TownEvent {
    pub seq: u64,
    /// `bead`, `bead_deleted`, `agent`, `convoy`, `mayor_message`, `mayor_status`, `town`.
    pub kind: String,
    pub at: String,
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn town() -> TownId {
        TownId::parse("t1").unwrap()
    }

    fn claims(exp: i64) -> TicketClaims {
        TicketClaims {
            town: town(),
            user: UserId::parse("u1").unwrap(),
            scope: "town".into(),
            nonce: "n1".into(),
            exp,
        }
    }

    #[test]
    fn a_ticket_verifies_only_for_its_town_scope_and_time() {
        let key = ticket_key(b"secret");
        let ticket = sign_ticket(&key, &claims(1060));
        assert!(ticket.starts_with("st1."));
        assert_eq!(
            verify_ticket(&key, &ticket, &town(), &StreamScope::Town, 1000),
            Ok(claims(1060))
        );
        let agent = StreamScope::Agent(AgentId::parse("a1").unwrap());
        assert_eq!(
            verify_ticket(&key, &ticket, &town(), &agent, 1000),
            Err(TicketError::WrongTarget)
        );
        let other = TownId::parse("t2").unwrap();
        assert_eq!(
            verify_ticket(&key, &ticket, &other, &StreamScope::Town, 1000),
            Err(TicketError::WrongTarget)
        );
        assert_eq!(
            verify_ticket(&key, &ticket, &town(), &StreamScope::Town, 1060),
            Err(TicketError::Expired)
        );
        // A ticket that claims to live longer than a ticket can was not made here.
        let long = sign_ticket(&key, &claims(1000 + TICKET_TTL_SECS + 1));
        assert_eq!(
            verify_ticket(&key, &long, &town(), &StreamScope::Town, 1000),
            Err(TicketError::Expired)
        );
    }

    #[test]
    fn a_forged_or_mangled_ticket_is_refused() {
        let key = ticket_key(b"secret");
        let other_key = ticket_key(b"other");
        let forged = sign_ticket(&other_key, &claims(1060));
        assert_eq!(
            verify_ticket(&key, &forged, &town(), &StreamScope::Town, 1000),
            Err(TicketError::BadSignature)
        );
        let ticket = sign_ticket(&key, &claims(1060));
        // Another body under the same signature.
        let (body, sig) = ticket["st1.".len()..].split_once('.').unwrap();
        let mut c = claims(1060);
        c.user = UserId::parse("u2").unwrap();
        let swapped = format!("st1.{}.{sig}", B64.encode(serde_json::to_vec(&c).unwrap()));
        assert_ne!(body, swapped);
        assert_eq!(
            verify_ticket(&key, &swapped, &town(), &StreamScope::Town, 1000),
            Err(TicketError::BadSignature)
        );
        for bad in ["", "st1.", "st1.abc", "x.y.z", &ticket[4..], "st1.!!.??"] {
            assert!(verify_ticket(&key, bad, &town(), &StreamScope::Town, 1000).is_err());
        }
        // The key is not the secret itself: a ticket signed with the raw secret fails.
        let raw = sign_ticket(b"secret", &claims(1060));
        assert_eq!(
            verify_ticket(&key, &raw, &town(), &StreamScope::Town, 1000),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn scopes_and_requests() {
        assert_eq!(StreamScope::parse("town"), Ok(StreamScope::Town));
        let agent = StreamScope::parse("agent:a-1").unwrap();
        assert_eq!(agent.as_string(), "agent:a-1");
        assert_eq!(agent.path(&town()), "/api/towns/t1/agents/a-1/stream");
        for bad in ["", "Town", "agent:", "agent", "agent:a b", "rig:r1"] {
            assert!(StreamScope::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_ticket_request(br#"{"scope":"town"}"#),
            Ok(StreamScope::Town)
        );
        assert!(parse_ticket_request(br#"{}"#).is_err());
        assert!(parse_ticket_request(br#"{"scope":"town","x":1}"#).is_err());
        assert!(parse_ticket_request(br#"{"scope":3}"#).is_err());
        assert!(parse_ticket_request(b"[]").is_err());
    }

    #[test]
    fn stream_queries() {
        assert_eq!(
            StreamQuery::parse(Some("ticket=st1.a.b&after=7")),
            Ok(StreamQuery {
                ticket: "st1.a.b".into(),
                after: 7
            })
        );
        assert_eq!(StreamQuery::parse(Some("ticket=t")).unwrap().after, 0);
        assert!(matches!(
            StreamQuery::parse(Some("after=3")),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            StreamQuery::parse(Some("ticket=")),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            StreamQuery::parse(Some("ticket=t&after=-1")),
            Err(ApiError::Invalid { .. })
        ));
        assert!(StreamQuery::parse(Some("ticket=t&after=9007199254740992")).is_err());
    }
}

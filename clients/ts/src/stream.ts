// A town's live streams over WebSocket, resumed across disconnects without gap or duplicate.
//
// Each (re)connect asks POST /api/towns/{townId}/stream-tickets for a one-time ticket (a browser
// cannot put a bearer token on a socket), opens baseUrl + the ticket's `url`, and adds
// `&after=<position>` once something was seen. The position is the last town event's `seq`, or
// the last agent event's `id`, or a `ready` frame's `seq` (everything up to it was sent).
// Close codes 4409 (town stopped) and 4404 (town deleted) are final; any other close reconnects
// after 250 ms, doubling to 5 s, until `close()`. A ticket refused with HTTP status N (403, 404,
// 409 town stopped…) is final too and reported as close code 4000 + N.
import { createGastownClient, type GastownClient, type GastownClientOptions, type Schemas } from "./index.ts";

export type TownEvent = Schemas["TownEvent"];
export type TownEventKind = TownEvent["kind"];
export type AgentEvent = Schemas["AgentEvent"];
export type TownEventsFrame = Schemas["TownEventsFrame"];
export type AgentEventsFrame = Schemas["AgentEventsFrame"];
export type ReadyFrame = Schemas["ReadyFrame"];
export type DroppedFrame = Schemas["DroppedFrame"];
/** One JSON text frame the server sends. */
export type StreamFrame = Schemas["StreamFrame"];

/** The town's changes, or one agent's events. */
export type StreamScope = "town" | { agentId: string };
/** What a stream of `scope` delivers. */
export type EventsOf<S extends StreamScope> = S extends "town" ? TownEvent[] : AgentEvent[];

/** Close codes after which the stream does not reconnect. */
export const CLOSE_TOWN_STOPPED = 4409;
export const CLOSE_TOWN_DELETED = 4404;

export interface StreamOptions<S extends StreamScope> {
  townId: string;
  scope: S;
  /** The last position already seen (0, the default, backfills everything the town keeps). */
  after?: number;
  /** New events, oldest first, each delivered once. */
  onEvents: (events: EventsOf<S>) => void;
  /** The backfill is done: everything up to `seq` was delivered; live events follow. */
  onReady?: (seq: number) => void;
  /** Events after the position were already dropped by the town's cap (see DroppedFrame). */
  onDropped?: (count: number) => void;
  /** The socket closed (or a ticket was refused); `willReconnect` says whether it comes back. */
  onClose?: (code: number, reason: string, willReconnect: boolean) => void;
}

export interface Stream {
  /** Closes the socket for good. */
  close(): void;
  /** The last position seen: pass it as `after` to resume elsewhere. */
  position(): number;
}

const FIRST_DELAY_MS = 250;
const MAX_DELAY_MS = 5_000;
const FINAL_CODES = new Set([CLOSE_TOWN_STOPPED, CLOSE_TOWN_DELETED]);

/** http(s)://host → ws(s)://host. */
const socketBase = (baseUrl: string) => baseUrl.replace(/^http/, "ws");

export function openStream<S extends StreamScope>(api: GastownClient | GastownClientOptions, options: StreamOptions<S>): Stream {
  const client = "POST" in api ? api : createGastownClient(api);
  const { townId, scope } = options;
  const agentId = typeof scope === "string" ? null : scope.agentId;
  let position = options.after ?? 0;
  let delay = FIRST_DELAY_MS;
  let socket: WebSocket | null = null;
  let timer: ReturnType<typeof setTimeout> | null = null;
  let closed = false;

  const finish = (code: number, reason: string) => {
    closed = true;
    options.onClose?.(code, reason, false);
  };

  const retry = (code: number, reason: string) => {
    if (closed) return;
    options.onClose?.(code, reason, true);
    timer = setTimeout(connect, delay);
    delay = Math.min(delay * 2, MAX_DELAY_MS);
  };

  /** Hands on the events past the position: a resumed backfill starts after it, but never twice. */
  const deliver = <E>(events: E[], at: (e: E) => number) => {
    const fresh = events.filter((e) => at(e) > position);
    if (fresh.length === 0) return;
    position = at(fresh[fresh.length - 1]!);
    options.onEvents(fresh as unknown as EventsOf<S>);
  };

  const onFrame = (frame: StreamFrame) => {
    switch (frame.type) {
      case "town_events":
        if (agentId === null) deliver(frame.events, (e) => e.seq);
        break;
      case "agent_events":
        if (agentId !== null) deliver(frame.events, (e) => e.id);
        break;
      case "ready":
        position = Math.max(position, frame.seq);
        delay = FIRST_DELAY_MS;
        options.onReady?.(frame.seq);
        break;
      case "dropped":
        options.onDropped?.(frame.count);
        break;
    }
  };

  async function connect() {
    timer = null;
    if (closed) return;
    let url: string;
    try {
      const { data, error, response } = await client.POST("/api/towns/{townId}/stream-tickets", {
        params: { path: { townId } },
        body: { scope: agentId === null ? "town" : `agent:${agentId}` },
      });
      if (closed) return;
      if (!data) {
        // The server said no (no such town or agent, not allowed, stopped): asking again won't help,
        // except when the fault was its own.
        const reason = error?.error.message ?? response.statusText;
        if (response.status >= 500) return retry(4000 + response.status, reason);
        return finish(4000 + response.status, reason);
      }
      url = data.url;
    } catch (e) {
      return retry(1006, `ticket request failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    let ws: WebSocket;
    try {
      ws = new WebSocket(socketBase(client.baseUrl) + url + (position > 0 ? `&after=${position}` : ""));
    } catch (e) {
      return finish(1006, `cannot open the socket: ${e instanceof Error ? e.message : String(e)}`); // a bad baseUrl
    }
    socket = ws;
    ws.addEventListener("message", (e) => {
      if (closed || socket !== ws || typeof e.data !== "string") return;
      let frame: StreamFrame;
      try {
        frame = JSON.parse(e.data) as StreamFrame;
      } catch {
        return; // not one of ours (a `pong`)
      }
      onFrame(frame);
    });
    ws.addEventListener("close", (e) => {
      if (socket !== ws) return;
      socket = null;
      if (closed) options.onClose?.(e.code, e.reason, false);
      else if (FINAL_CODES.has(e.code)) finish(e.code, e.reason);
      else retry(e.code, e.reason);
    });
  }

  void connect();
  return {
    close() {
      if (closed) return;
      closed = true;
      if (timer !== null) clearTimeout(timer);
      if (socket) socket.close(1000, "closed by client");
      else options.onClose?.(1000, "closed by client", false);
    },
    position: () => position,
  };
}

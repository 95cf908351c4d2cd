// The live streams' fan-out, for `npm run bench`: SUBSCRIBERS sockets on one agent's stream of
// a town, then SAMPLES batches of one event posted by the container (one at a time); for every
// socket and every batch, the time from the post leaving the client to the event arriving on the
// socket. Latencies are over all deliveries (SUBSCRIBERS × SAMPLES).
import { client } from "../tests/e2e/harness.mjs";

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

/** Opens one stream socket with a fresh ticket; resolves once its backfill is done. */
async function subscribe(call, base, townId, userToken, scope, onFrame) {
  const t = await call("POST", `/api/towns/${townId}/stream-tickets`, { token: userToken, body: { scope } });
  if (t.status !== 201) throw new Error(`stream ticket: ${t.status} ${t.text}`);
  const ws = new WebSocket(base.replace(/^http/, "ws") + t.body.url);
  await new Promise((resolve, reject) => {
    ws.addEventListener("error", () => reject(new Error("stream socket failed")));
    ws.addEventListener("message", (e) => {
      const frame = JSON.parse(e.data);
      if (frame.type === "ready") resolve();
      else onFrame(frame, Date.now());
    });
  });
  return ws;
}

/**
 * @param {{url: string, userToken: string, containerToken: string, townId: string, rigId: string, agentId: string, subscribers?: number, samples?: number}} o
 */
export async function measureFanout({ url, userToken, containerToken, townId, rigId, agentId, subscribers = 200, samples = 50 }) {
  const call = client(() => url);
  const sentAt = new Map();
  const latencies = [];
  const seen = new Map();
  const onFrame = (frame, at) => {
    if (frame.type !== "agent_events") return;
    for (const e of frame.events) {
      const sent = sentAt.get(e.text);
      if (sent === undefined) continue;
      latencies.push(at - sent);
      seen.set(e.text, (seen.get(e.text) ?? 0) + 1);
    }
  };
  const opened = Date.now();
  const sockets = [];
  // A few at a time: tickets and upgrades are requests like any other.
  for (let i = 0; i < subscribers; i += 20) {
    const batch = Array.from({ length: Math.min(20, subscribers - i) }, () => subscribe(call, url, townId, userToken, `agent:${agentId}`, onFrame));
    sockets.push(...(await Promise.all(batch)));
  }
  const openMs = Date.now() - opened;
  const run = Date.now();
  const ingestMs = [];
  for (let i = 1; i <= samples; i++) {
    const text = `fanout ${run} ${i}`;
    const sent = Date.now();
    sentAt.set(text, sent);
    const res = await call("POST", `/api/towns/${townId}/rigs/${rigId}/agents/${agentId}/events`, {
      token: containerToken,
      body: { run, events: [{ seq: i, at_ms: sent, kind: "output", text }] },
    });
    if (res.status !== 200) throw new Error(`events post: ${res.status} ${res.text}`);
    ingestMs.push(Date.now() - sent);
    // Every socket has it before the next one goes.
    const deadline = Date.now() + 10_000;
    while ((seen.get(text) ?? 0) < subscribers) {
      if (Date.now() > deadline) throw new Error(`${text}: ${seen.get(text) ?? 0} of ${subscribers} sockets got it in 10 s`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }
  for (const ws of sockets) ws.close();
  const sorted = [...latencies].sort((a, b) => a - b);
  const ingest = [...ingestMs].sort((a, b) => a - b);
  return {
    subscribers,
    samples,
    deliveries: latencies.length,
    open_all_ms: openMs,
    fanout_p50_ms: percentile(sorted, 50),
    fanout_p99_ms: percentile(sorted, 99),
    fanout_max_ms: sorted.at(-1),
    ingest_request_p50_ms: percentile(ingest, 50),
    note: "from the events POST leaving the client to the event on each socket, over every delivery; one event per batch, one batch at a time",
  };
}

export function printFanout(f) {
  console.log(`\nstream fan-out: ${f.subscribers} sockets on one agent's stream, ${f.samples} single-event batches (${f.deliveries} deliveries)`);
  console.log(`  ingest → socket: p50 ${f.fanout_p50_ms} ms, p99 ${f.fanout_p99_ms} ms, max ${f.fanout_max_ms} ms (the POST itself: p50 ${f.ingest_request_p50_ms} ms)`);
  console.log(`  opening all ${f.subscribers} sockets (ticket + upgrade + backfill): ${f.open_all_ms} ms`);
}

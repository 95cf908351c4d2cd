// Issue 23, live streams: one-time tickets (bound to user, town and scope, 60 s, single use),
// the town's change stream and an agent's event stream over the town DO's hibernating
// WebSockets, backfill and resume with `after` (no gap, no duplicate), the per-agent cap under
// 50 000 events, 200 sockets on one town, and sockets closed when the town stops or goes.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash, createHmac, randomUUID } from "node:crypto";
import { request } from "node:http";
import { writeFileSync, mkdtempSync, rmSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freshUser, tokenFor, createTown, createRig, registerAgent } from "./fixtures.mjs";
import { secrets, sleep, until, not, startOwnWorker } from "./harness.mjs";
import { EVENTS_CAP } from "./events.mjs";

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** A ticket in gastown_core::stream's format, signed here: for tickets the worker would not issue. */
export function signTicket(claims, secret = secrets.GASTOWN_JWT_SECRET) {
  const key = createHash("sha256").update("gastown-stream-ticket-key-v1:").update(secret).digest();
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", key).update(`st1.${body}`).digest();
  return `st1.${body}.${b64url(sig)}`;
}

/**
 * A WebSocket to `base` + `path`, collecting its frames: `next(pred)` waits for a frame that
 * matches, `closed` resolves with the close code and reason.
 */
export function openSocket(base, path) {
  const ws = new WebSocket(base.replace(/^http/, "ws") + path);
  const frames = [];
  const waiters = [];
  let opened;
  const open = new Promise((resolve, reject) => {
    opened = { resolve, reject };
  });
  const closed = new Promise((resolve) => {
    ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason }));
  });
  ws.addEventListener("open", () => opened.resolve());
  ws.addEventListener("error", () => opened.reject(new Error(`socket ${path} failed to open`)));
  ws.addEventListener("message", (e) => {
    // The runtime's answer to a keep-alive "ping" is the plain text "pong".
    const frame = e.data === "pong" ? { type: "pong" } : JSON.parse(e.data);
    frame.received_at = Date.now();
    frames.push(frame);
    for (const w of [...waiters]) {
      if (w.pred(frame)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(frame);
      }
    }
  });
  return {
    ws,
    frames,
    open,
    closed,
    /** The first frame (already received or to come) that matches, within `ms`. */
    next(pred, ms = 10_000) {
      const seen = frames.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve };
        waiters.push(w);
        setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) {
            waiters.splice(i, 1);
            reject(new Error(`no matching frame in ${ms} ms; got ${JSON.stringify(frames).slice(0, 2000)}`));
          }
        }, ms);
      });
    },
    close() {
      ws.close();
    },
  };
}

/** A raw upgrade request: the status and JSON body of a refusal, or 101. */
export function tryUpgrade(base, path, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = request(base + path, {
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-key": b64url(Buffer.from(randomUUID().slice(0, 16))) + "==",
        "sec-websocket-version": "13",
        ...headers,
      },
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode });
    });
    req.on("response", (res) => {
      let text = "";
      res.on("data", (d) => (text += d));
      res.on("end", () => {
        let body;
        try {
          body = JSON.parse(text);
        } catch {
          body = undefined;
        }
        resolve({ status: res.statusCode, body, text });
      });
    });
    req.on("error", reject);
    req.end();
  });
}

/**
 * A socket read frame by frame off the raw connection: `closeFrame` resolves with the code and
 * reason of the server's close frame as soon as it arrives. (A WebSocket client's `close` event
 * waits for the TCP connection to end, which wrangler dev's local runtime delays until the DO
 * hibernates; the close frame itself is what the server sends at once.)
 */
export function rawSocket(base, path) {
  const frames = [];
  let closeWith;
  const closeFrame = new Promise((r) => (closeWith = r));
  const ready = new Promise((resolve, reject) => {
    const req = request(base + path, {
      headers: { connection: "Upgrade", upgrade: "websocket", "sec-websocket-key": Buffer.from(randomUUID().slice(0, 16)).toString("base64"), "sec-websocket-version": "13" },
    });
    req.on("response", (res) => reject(new Error(`no upgrade: ${res.statusCode}`)));
    req.on("error", reject);
    req.on("upgrade", (_res, socket, head) => {
      let buf = head;
      const parse = () => {
        for (;;) {
          if (buf.length < 2) return;
          const opcode = buf[0] & 0x0f;
          let len = buf[1] & 0x7f;
          let at = 2;
          if (len === 126) {
            if (buf.length < 4) return;
            len = buf.readUInt16BE(2);
            at = 4;
          } else if (len === 127) {
            if (buf.length < 10) return;
            len = Number(buf.readBigUInt64BE(2));
            at = 10;
          }
          if (buf.length < at + len) return;
          const payload = buf.subarray(at, at + len);
          buf = buf.subarray(at + len);
          if (opcode === 1) {
            const frame = JSON.parse(payload.toString("utf8"));
            frames.push(frame);
            if (frame.type === "ready") resolve(socket);
          } else if (opcode === 8) {
            closeWith({ code: payload.length >= 2 ? payload.readUInt16BE(0) : 1005, reason: payload.subarray(2).toString("utf8") });
            socket.destroy();
            return;
          }
        }
      };
      socket.on("data", (d) => {
        buf = Buffer.concat([buf, d]);
        parse();
      });
      parse();
    });
    req.end();
  });
  return { frames, ready, closeFrame };
}

/** Gets a ticket for `scope` (asserting 201). */
async function ticketFor(call, townId, user, scope) {
  const res = await call("POST", `/api/towns/${townId}/stream-tickets`, { token: tokenFor(user), body: { scope } });
  assert.equal(res.status, 201, res.text);
  return res.body;
}

/** The frames' events in order (town events or agent events). */
const eventsOf = (frames) => frames.filter((f) => f.type === "town_events" || f.type === "agent_events").flatMap((f) => f.events);

export default function streams(ctx) {
  describe("live streams", () => {
    it("tickets: 201 for the town's users, bound to town, scope and user; refused reused, expired, forged, for another town or scope; another org's member gets none", async () => {
      const base = ctx.worker.url;
      const user = freshUser("stream");
      const town = await createTown(ctx.call, user, "Streams");
      const other = await createTown(ctx.call, user, "Other");
      const rig = await createRig(ctx.call, user, town.id, "app");
      const agent = await registerAgent(ctx.call, town.id, rig.id, { name: "watched" });

      const t = await ticketFor(ctx.call, town.id, user, "town");
      assert.equal(t.scope, "town");
      assert.equal(t.url, `/api/towns/${town.id}/stream?ticket=${t.ticket}`);
      const ttl = Date.parse(t.expires_at) - Date.now();
      assert.ok(ttl > 50_000 && ttl <= 61_000, `expires in ${ttl} ms`);
      const claims = JSON.parse(Buffer.from(t.ticket.split(".")[1], "base64url"));
      assert.deepEqual([claims.town, claims.user, claims.scope], [town.id, user, "town"]);

      // Used once: the second open is refused, before any socket.
      assert.equal((await tryUpgrade(base, t.url)).status, 101);
      const again = await tryUpgrade(base, t.url);
      assert.deepEqual([again.status, again.body?.error?.message], [401, "stream ticket already used"]);

      // For another town, another scope, expired, forged, none, mangled: 401, and the ticket
      // that was refused is still good where it belongs.
      const fresh = await ticketFor(ctx.call, town.id, user, "town");
      const wrongTown = await tryUpgrade(base, `/api/towns/${other.id}/stream?ticket=${fresh.ticket}`);
      assert.deepEqual([wrongTown.status, wrongTown.body.error.message], [401, "stream ticket not issued for this stream"]);
      const wrongScope = await tryUpgrade(base, `/api/towns/${town.id}/agents/${agent.id}/stream?ticket=${fresh.ticket}`);
      assert.equal(wrongScope.status, 401);
      const agentTicket = await ticketFor(ctx.call, town.id, user, `agent:${agent.id}`);
      assert.equal(agentTicket.url, `/api/towns/${town.id}/agents/${agent.id}/stream?ticket=${agentTicket.ticket}`);
      assert.equal((await tryUpgrade(base, `/api/towns/${town.id}/stream?ticket=${agentTicket.ticket}`)).status, 401, "an agent's ticket on the town stream");
      const now = Math.floor(Date.now() / 1000);
      const expired = signTicket({ town: town.id, user, scope: "town", nonce: randomUUID(), exp: now - 1 });
      assert.deepEqual(
        [(await tryUpgrade(base, `/api/towns/${town.id}/stream?ticket=${expired}`)).body.error.message],
        ["stream ticket expired"],
      );
      const tooLong = signTicket({ town: town.id, user, scope: "town", nonce: randomUUID(), exp: now + 3600 });
      assert.equal((await tryUpgrade(base, `/api/towns/${town.id}/stream?ticket=${tooLong}`)).status, 401, "a ticket living longer than 60 s was not issued here");
      const forged = signTicket({ town: town.id, user, scope: "town", nonce: randomUUID(), exp: now + 30 }, "not-the-secret");
      assert.equal((await tryUpgrade(base, `/api/towns/${town.id}/stream?ticket=${forged}`)).body.error.message, "stream ticket invalid");
      // The raw secret is not the ticket key: a ticket signed as a JWT would be is refused.
      const rawKey = `st1.${b64url(JSON.stringify({ town: town.id, user, scope: "town", nonce: "n", exp: now + 30 }))}`;
      const rawSig = b64url(createHmac("sha256", secrets.GASTOWN_JWT_SECRET).update(rawKey).digest());
      assert.equal((await tryUpgrade(base, `/api/towns/${town.id}/stream?ticket=${rawKey}.${rawSig}`)).status, 401);
      assert.equal((await tryUpgrade(base, `/api/towns/${town.id}/stream`)).status, 401, "no ticket");
      assert.equal((await tryUpgrade(base, `/api/towns/${town.id}/stream?ticket=st1.x.y`)).status, 401, "a mangled ticket");
      // A user token is not a ticket.
      assert.equal((await tryUpgrade(base, `/api/towns/${town.id}/stream`, { authorization: `Bearer ${tokenFor(user)}` })).status, 401);
      // Without the upgrade, a good ticket is not spent.
      const plain = await ctx.call("GET", fresh.url);
      assert.equal(plain.status, 400, plain.text);
      assert.equal((await tryUpgrade(base, fresh.url)).status, 101, "the refused ticket still opens its own stream");
      assert.equal((await tryUpgrade(base, `${agentTicket.url}&after=abc`)).status, 422);

      // Asking: the town's users only; the body is checked and nothing is issued for bad ones.
      const ask = (body, token = tokenFor(user), townId = town.id) => ctx.call("POST", `/api/towns/${townId}/stream-tickets`, { token, body });
      assert.equal((await ask({ scope: "town" }, tokenFor(freshUser("stranger")))).status, 403);
      assert.equal((await ctx.call("POST", `/api/towns/${town.id}/stream-tickets`, { body: { scope: "town" } })).status, 401, "no token");
      assert.equal((await ask({ scope: "town" }, tokenFor(user), randomUUID())).status, 404);
      assert.equal((await ask({ scope: `agent:${randomUUID()}` })).status, 404, "an agent the town does not have");
      for (const bad of [{}, { scope: "rig:x" }, { scope: 1 }, { scope: "town", extra: 1 }]) {
        const res = await ask(bad);
        assert.equal(res.status, 422, `${JSON.stringify(bad)}: ${res.text}`);
      }
      assert.equal((await ctx.call("POST", `/api/towns/${town.id}/stream-tickets`, { token: tokenFor(user), raw: "{" })).status, 400);

      // An org town: its members get tickets, another org's member does not.
      const orgA = `org-${randomUUID()}`;
      const orgB = `org-${randomUUID()}`;
      const alice = freshUser("alice");
      const mallory = freshUser("mallory");
      const aliceToken = tokenFor(alice, { orgs: [{ orgId: orgA, role: "owner" }] });
      const orgTown = await ctx.call("POST", `/api/orgs/${orgA}/towns`, { token: aliceToken, body: { name: "Org streams" } });
      assert.equal(orgTown.status, 201, orgTown.text);
      const member = freshUser("member");
      assert.equal((await ask({ scope: "town" }, tokenFor(member, { orgs: [{ orgId: orgA, role: "member" }] }), orgTown.body.id)).status, 201);
      assert.equal((await ask({ scope: "town" }, tokenFor(mallory, { orgs: [{ orgId: orgB, role: "owner" }] }), orgTown.body.id)).status, 403);
      assert.equal((await ask({ scope: "town" }, tokenFor(mallory, { orgs: [{ orgId: orgA, role: "billing_manager" }] }), orgTown.body.id)).status, 403);
    });

    it("the town stream: backfill, ready, live bead changes; a reconnect with after gets exactly what it missed", async () => {
      const base = ctx.worker.url;
      const user = freshUser("townstream");
      const town = await createTown(ctx.call, user, "Town stream");
      const rig = await createRig(ctx.call, user, town.id, "app");
      const as = (method, path, body) => ctx.call(method, path, { token: tokenFor(user), body });
      const made = await as("POST", `/api/towns/${town.id}/beads`, { type: "issue", title: "first", rig_id: rig.id });
      assert.equal(made.status, 201, made.text);

      const t1 = await ticketFor(ctx.call, town.id, user, "town");
      const s1 = openSocket(base, t1.url);
      await s1.open;
      const ready = await s1.next((f) => f.type === "ready");
      const backfill = eventsOf(s1.frames);
      const created = backfill.find((e) => e.kind === "bead" && e.data.id === made.body.id);
      assert.ok(created, JSON.stringify(backfill));
      assert.deepEqual([created.data.status, created.data.title, created.data.rig_id], ["open", "first", rig.id]);
      assert.equal(ready.seq, backfill.at(-1).seq);
      const seqs = backfill.map((e) => e.seq);
      assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b), "in order, once each");

      // Live: a status change arrives after ready.
      const patched = await as("PATCH", `/api/towns/${town.id}/beads/${made.body.id}`, { status: "closed" });
      assert.equal(patched.status, 200, patched.text);
      const live = await s1.next((f) => f.type === "town_events" && f.events.some((e) => e.kind === "bead" && e.data.status === "closed"));
      assert.ok(live.events[0].seq > ready.seq);
      // A keep-alive ping is answered (by the runtime: the DO is not woken for it).
      s1.ws.send("ping");
      await s1.next((f) => f.type === "pong");
      const lastSeen = eventsOf(s1.frames).at(-1).seq;
      s1.close();
      await s1.closed;

      // Missed while away: two beads created and one deleted.
      const a = await as("POST", `/api/towns/${town.id}/beads`, { type: "issue", title: "while away 1", rig_id: rig.id });
      const b = await as("POST", `/api/towns/${town.id}/beads`, { type: "issue", title: "while away 2", rig_id: rig.id });
      assert.equal((await as("DELETE", `/api/towns/${town.id}/beads/${a.body.id}`)).status, 200);

      const t2 = await ticketFor(ctx.call, town.id, user, "town");
      const s2 = openSocket(base, `${t2.url}&after=${lastSeen}`);
      const ready2 = await s2.next((f) => f.type === "ready");
      const gap = eventsOf(s2.frames);
      // (The town's loop also dispatched them meanwhile: assignee and agent changes between.)
      const mine = gap.filter((e) => [a.body.id, b.body.id].includes(e.data.id) && (e.kind === "bead_deleted" || e.data.title));
      assert.deepEqual(
        mine.filter((e, i) => mine.findIndex((x) => x.kind === e.kind && x.data.id === e.data.id) === i).map((e) => [e.kind, e.data.id, e.data.title]),
        [["bead", a.body.id, "while away 1"], ["bead", b.body.id, "while away 2"], ["bead_deleted", a.body.id, undefined]],
      );
      const gapSeqs = gap.map((e) => e.seq);
      assert.equal(gapSeqs.at(-1) - gapSeqs[0] + 1, gapSeqs.length, "contiguous");
      assert.equal(gap[0].seq, lastSeen + 1, "no gap");
      assert.equal(ready2.seq, gap.at(-1).seq);
      // Then live, and nothing twice.
      assert.equal((await as("PATCH", `/api/towns/${town.id}/beads/${b.body.id}`, { status: "closed" })).status, 200);
      await s2.next((f) => f.type === "town_events" && f.events.some((e) => e.data.id === b.body.id && e.data.status === "closed"));
      const all = eventsOf(s2.frames).map((e) => e.seq);
      assert.deepEqual(all, [...new Set(all)].sort((x, y) => x - y));
      assert.equal(all.at(-1) - all[0] + 1, all.length, "contiguous");
      s2.close();
    });

    it("an agent's stream: its events live and in the list; a reconnect gets exactly the missed ones; 50 000 events leave the cap stored and the town answering", async () => {
      const base = ctx.worker.url;
      const user = freshUser("agentstream");
      const town = await createTown(ctx.call, user, "Agent stream");
      const rig = await createRig(ctx.call, user, town.id, "app");
      assert.equal((await ctx.call("POST", `/api/towns/${town.id}/container/start`, { token: tokenFor(user) })).status, 200);
      const agent = await registerAgent(ctx.call, town.id, rig.id, { name: "streamer" });
      const bystander = await registerAgent(ctx.call, town.id, rig.id, { name: "bystander" });
      const ct = (await ctx.control.town(town.id)).body.token;
      const post = (agentId, run, from, n) =>
        ctx.call("POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${agentId}/events`, {
          token: ct,
          body: { run, events: Array.from({ length: n }, (_, i) => ({ seq: from + i, at_ms: Date.now(), kind: "output", text: `r${run} line ${from + i}` })) },
        });
      const list = async () => (await ctx.call("GET", `/api/towns/${town.id}/agents/${agent.id}/events?limit=500`, { token: tokenFor(user) })).body;

      assert.equal((await post(agent.id, 1, 1, 3)).status, 200);
      const t = await ticketFor(ctx.call, town.id, user, `agent:${agent.id}`);
      const s = openSocket(base, t.url);
      const ready = await s.next((f) => f.type === "ready");
      assert.deepEqual(eventsOf(s.frames).map((e) => e.text), ["r1 line 1", "r1 line 2", "r1 line 3"]);
      assert.equal(ready.seq, eventsOf(s.frames).at(-1).id);

      // Live, within a second of the post; another agent's events do not come; a batch sent
      // again does not come twice.
      const sent = Date.now();
      assert.equal((await post(bystander.id, 1, 1, 2)).status, 200);
      assert.equal((await post(agent.id, 1, 4, 2)).status, 200);
      assert.equal((await post(agent.id, 1, 4, 2)).body.duplicates, 2);
      const live = await s.next((f) => f.type === "agent_events" && f.events.some((e) => e.text === "r1 line 5"));
      assert.ok(live.received_at - sent < 1000, `arrived ${live.received_at - sent} ms after the post`);
      assert.equal(live.agent_id, agent.id);
      await sleep(300);
      const texts = eventsOf(s.frames).map((e) => e.text);
      assert.deepEqual(texts, ["r1 line 1", "r1 line 2", "r1 line 3", "r1 line 4", "r1 line 5"]);
      // The list has the same events, with the same ids.
      assert.deepEqual((await list()).events.map((e) => [e.id, e.text]), eventsOf(s.frames).map((e) => [e.id, e.text]));
      const lastId = eventsOf(s.frames).at(-1).id;
      s.close();
      await s.closed;

      // Missed: three more; the reconnect gets exactly those, then live.
      assert.equal((await post(agent.id, 2, 1, 3)).status, 200);
      const t2 = await ticketFor(ctx.call, town.id, user, `agent:${agent.id}`);
      const s2 = openSocket(base, `${t2.url}&after=${lastId}`);
      await s2.next((f) => f.type === "ready");
      assert.deepEqual(eventsOf(s2.frames).map((e) => e.text), ["r2 line 1", "r2 line 2", "r2 line 3"]);
      assert.ok(!s2.frames.some((f) => f.type === "dropped"));

      // 50 000 events in batches of 200, 10 at a time: the cap's worth stays, the rest are
      // counted, the socket saw them all in order, and the town still answers.
      const total = 50_000;
      const batches = total / 200;
      for (let i = 0; i < batches; i += 10) {
        const round = [];
        for (let j = i; j < Math.min(i + 10, batches); j++) round.push(post(agent.id, 3, j * 200 + 1, 200));
        for (const res of await Promise.all(round)) assert.equal(res.status, 200, res.text);
      }
      await s2.next((f) => f.type === "agent_events" && f.events.some((e) => e.text === `r3 line ${total}`), 30_000);
      const streamed = eventsOf(s2.frames).filter((e) => e.run === 3);
      assert.equal(streamed.length, total, "every stored event reached the socket once");
      const ids = streamed.map((e) => e.id);
      assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]), "in id order");
      const page = await list();
      assert.equal(page.events.length, EVENTS_CAP);
      // Batches posted together are stored in the order they arrive, so the newest stored event
      // is the socket's last one, whichever batch of the final round that was.
      assert.deepEqual([page.events.at(-1).id, page.events.at(-1).text], [streamed.at(-1).id, streamed.at(-1).text]);
      assert.ok(page.events.some((e) => e.text === `r3 line ${total}`));
      assert.equal(page.dropped, 8 + total - EVENTS_CAP);
      s2.close();
      // A client that was away for all of it hears that some were dropped, then gets what is kept.
      const t3 = await ticketFor(ctx.call, town.id, user, `agent:${agent.id}`);
      const s3 = openSocket(base, `${t3.url}&after=${lastId}`);
      await s3.next((f) => f.type === "ready");
      assert.equal(s3.frames[0].type, "dropped");
      assert.equal(s3.frames[0].count, page.dropped);
      assert.equal(eventsOf(s3.frames).length, EVENTS_CAP);
      s3.close();
      const health = await ctx.call("GET", `/api/towns/${town.id}`, { token: tokenFor(user) });
      assert.equal(health.status, 200);
    });

    it("200 sockets on one town each receive a bead's status change", async () => {
      const base = ctx.worker.url;
      const user = freshUser("fanout");
      const town = await createTown(ctx.call, user, "Fan-out");
      const rig = await createRig(ctx.call, user, town.id, "app");
      const as = (method, path, body) => ctx.call(method, path, { token: tokenFor(user), body });
      const bead = (await as("POST", `/api/towns/${town.id}/beads`, { type: "issue", title: "watched", rig_id: rig.id })).body;
      const tickets = await Promise.all(Array.from({ length: 200 }, () => ticketFor(ctx.call, town.id, user, "town")));
      const sockets = tickets.map((t) => openSocket(base, t.url));
      await Promise.all(sockets.map((s) => s.next((f) => f.type === "ready", 30_000)));
      const sent = Date.now();
      assert.equal((await as("PATCH", `/api/towns/${town.id}/beads/${bead.id}`, { status: "closed" })).status, 200);
      const got = await Promise.all(
        sockets.map((s) => s.next((f) => f.type === "town_events" && f.events.some((e) => e.data.id === bead.id && e.data.status === "closed"), 15_000)),
      );
      assert.equal(got.length, 200);
      const lag = got.map((f) => f.received_at - sent).sort((x, y) => x - y);
      assert.ok(lag.at(-1) < 5000, `slowest ${lag.at(-1)} ms`);
      for (const s of sockets) s.close();
    });

    it("stopping the town closes its sockets with 4409 after its last changes; deleting one closes them with 4404; no ticket for a stopped town", async () => {
      const base = ctx.worker.url;
      const user = freshUser("closer");
      const as = (method, path, body) => ctx.call(method, path, { token: tokenFor(user), body });
      const town = await createTown(ctx.call, user, "Closing");
      const rig = await createRig(ctx.call, user, town.id, "app");
      const agent = await registerAgent(ctx.call, town.id, rig.id, { name: "closing" });
      const townSocket = rawSocket(base, (await ticketFor(ctx.call, town.id, user, "town")).url);
      const agentSocket = rawSocket(base, (await ticketFor(ctx.call, town.id, user, `agent:${agent.id}`)).url);
      await Promise.all([townSocket.ready, agentSocket.ready]);
      const stopped = Date.now();
      assert.equal((await as("POST", `/api/towns/${town.id}/stop`)).status, 200);
      const [c1, c2] = await Promise.all([townSocket.closeFrame, agentSocket.closeFrame]);
      assert.deepEqual([c1, c2], [{ code: 4409, reason: "the town was stopped" }, { code: 4409, reason: "the town was stopped" }]);
      assert.ok(Date.now() - stopped < 5000, `closed ${Date.now() - stopped} ms after the stop`);
      assert.ok(eventsOf(townSocket.frames).some((e) => e.kind === "town" && e.data.status === "stopped"), "the stop itself was sent first");
      const refused = await as("POST", `/api/towns/${town.id}/stream-tickets`, { scope: "town" });
      assert.equal(refused.status, 409, refused.text);

      const gone = await createTown(ctx.call, user, "Deleted");
      const sockets = await Promise.all([1, 2, 3].map(async () => rawSocket(base, (await ticketFor(ctx.call, gone.id, user, "town")).url)));
      await Promise.all(sockets.map((s) => s.ready));
      const leftover = await ticketFor(ctx.call, gone.id, user, "town");
      assert.equal((await as("DELETE", `/api/users/${user}/towns/${gone.id}`)).status, 200);
      for (const c of await Promise.all(sockets.map((s) => s.closeFrame))) assert.deepEqual(c, { code: 4404, reason: "the town was deleted" });
      assert.equal((await tryUpgrade(base, leftover.url)).status, 404, "a ticket of a deleted town opens nothing");
    });
  });

  describe("live streams with a real agent", () => {
    let world;
    let dir;
    const SECRET = `stream-secret-${randomUUID()}`;

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), "gastown-stream-agent-"));
      // An agent that prints its town's secret among other lines, then lingers.
      const script = join(dir, "agent.sh");
      writeFileSync(script, `#!/bin/sh\necho "starting"\necho "probe=$STREAM_PROBE"\nfor i in 1 2 3 4 5; do echo "tick $i $(date +%s%3N)"; sleep 0.4; done\nsleep 30\n`);
      chmodSync(script, 0o755);
      world = await startOwnWorker(ctx, { controlArgs: ["--agent-command", script] });
    });

    after(async () => {
      await world?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it("a running agent's lines reach its socket within a second of the control server seeing them; the town's secret reaches no socket, list or log", async () => {
      const { call, worker, control } = world;
      const user = freshUser("realstream");
      const as = (method, path, body) => call(method, path, { token: tokenFor(user), body });
      const town = await createTown(call, user, "Real stream");
      const rig = await createRig(call, user, town.id, "app");
      assert.equal((await as("PATCH", `/api/towns/${town.id}/config`, { env_vars: { STREAM_PROBE: SECRET } })).status, 200);
      const townSocket = openSocket(worker.url, (await ticketFor(call, town.id, user, "town")).url);
      await townSocket.next((f) => f.type === "ready");
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Stream me" });
      assert.equal(slung.status, 201, slung.text);
      // The town stream says which agent took it.
      const hooked = await townSocket.next(
        (f) => f.type === "town_events" && f.events.some((e) => e.kind === "bead" && e.data.id === slung.body.id && e.data.assignee_agent_id),
        30_000,
      );
      const agentId = hooked.events.find((e) => e.data.id === slung.body.id && e.data.assignee_agent_id).data.assignee_agent_id;
      const s = openSocket(worker.url, (await ticketFor(call, town.id, user, `agent:${agentId}`)).url);
      const tick = await s.next((f) => f.type === "agent_events" && f.events.some((e) => /^tick 5 /.test(e.text)), 30_000);
      const event = tick.events.find((e) => /^tick 5 /.test(e.text));
      const printed = Number(event.text.split(" ")[2]);
      // Printed → read by the control server (at most its 0.5 s tail) → posted → on the socket.
      const seen = Date.parse(event.at);
      assert.ok(tick.received_at - seen < 1000, `on the socket ${tick.received_at - seen} ms after the control server saw it`);
      assert.ok(tick.received_at - printed < 1500, `on the socket ${tick.received_at - printed} ms after the agent printed it`);
      const probe = eventsOf(s.frames).find((e) => e.text.startsWith("probe="));
      assert.equal(probe?.text, "probe=****");
      const list = await as("GET", `/api/towns/${town.id}/agents/${agentId}/events?limit=500`);
      assert.ok(list.body.events.some((e) => e.text === "probe=****"), JSON.stringify(list.body));
      for (const [what, text] of [
        ["the agent's socket", JSON.stringify(s.frames)],
        ["the town's socket", JSON.stringify(townSocket.frames)],
        ["the events list", list.text],
        ["the worker's log", worker.output()],
        ["the control server's log", control.output?.() ?? ""],
      ]) {
        assert.ok(!text.includes(SECRET), `the secret is in ${what}`);
      }
      s.close();
      townSocket.close();
    });
  });
}

// The typed TypeScript client (clients/ts) against the real worker. Every answer goes through
// openapi_check.mjs's fetch, which fails the call when the status is not documented for the
// operation or the JSON body does not match the OpenAPI document the worker serves. Covers the
// dashboard's routes (towns, rigs, beads, sling, agents, mayor, config), their documented errors,
// and openStream: backfill, live events, resume with `after`, reconnect, and the final closes.
import { describe, it, before } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createGastownClient } from "../../clients/ts/src/index.ts";
import { openStream } from "../../clients/ts/src/stream.ts";
import { loadOpenApi, openApiChecker } from "./openapi_check.mjs";
import { freshUser, tokenFor, agentTokenFor, registerAgent } from "./fixtures.mjs";
import { until, not, sleep } from "./harness.mjs";

/** A git URL the worker accepts whose clone, should dispatch try one, fails at once on this machine. */
const GIT_URL = "http://127.0.0.1:9/acme/app.git";

export default function client(ctx) {
  describe("the typed client (clients/ts), every answer checked against GET /openapi.json", () => {
    let checker;
    /** A client acting as `user` (or with any `token`), its responses checked. */
    const api = (user, token = tokenFor(user)) => createGastownClient({ baseUrl: ctx.worker.url, token, fetch: checker.fetch });
    const path = (p) => ({ params: { path: p } });

    /** A personal town of `user`, through the client. */
    async function newTown(c, user, name = "Client town") {
      const res = await c.POST("/api/users/{userId}/towns", { ...path({ userId: user }), body: { name } });
      assert.equal(res.response.status, 201, JSON.stringify(res.error));
      return res.data;
    }
    async function newRig(c, user, townId, name = "app") {
      const res = await c.POST("/api/users/{userId}/rigs", { ...path({ userId: user }), body: { town_id: townId, name, git_url: GIT_URL } });
      assert.equal(res.response.status, 201, JSON.stringify(res.error));
      return res.data;
    }
    async function newBead(c, townId, title) {
      const res = await c.POST("/api/towns/{townId}/beads", { ...path({ townId }), body: { title, type: "message" } });
      assert.equal(res.response.status, 201, JSON.stringify(res.error));
      return res.data;
    }

    before(async () => {
      checker = openApiChecker(await loadOpenApi(ctx.worker.url));
    });

    it("the checker fails a call whose body or status the document does not allow", async () => {
      const lying = (status, body) =>
        createGastownClient({
          baseUrl: ctx.worker.url,
          token: "t",
          fetch: checker.wrap(async () => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } })),
        });
      await assert.rejects(lying(200, { status: "ok", extra: 1 }).GET("/health"), /does not match/);
      await assert.rejects(lying(418, {}).GET("/health"), /the document lists only 200/);
      const fine = await lying(200, { status: "ok" }).GET("/health");
      assert.deepEqual(fine.data, { status: "ok" });
      const doc = await api(freshUser()).GET("/openapi.json");
      assert.equal(doc.data?.openapi, "3.1.0");
    });

    it("personal towns: create, list, get (both routes), delete", async () => {
      const user = freshUser("client");
      // The token may be a function: called for every request.
      let asked = 0;
      const c = api(user, async () => (asked++, tokenFor(user)));
      const mine = path({ userId: user });
      const empty = await c.GET("/api/users/{userId}/towns", mine);
      assert.deepEqual([empty.response.status, empty.data], [200, []]);
      const town = await newTown(c, user, "  Alpha  ");
      assert.deepEqual([town.name, town.owner_type, town.owner_user_id, town.status], ["Alpha", "user", user, "active"]);
      const second = await newTown(c, user, "Beta");
      const list = await c.GET("/api/users/{userId}/towns", mine);
      assert.deepEqual(list.data?.map((t) => t.name), ["Alpha", "Beta"]);
      const got = await c.GET("/api/users/{userId}/towns/{townId}", path({ userId: user, townId: town.id }));
      assert.deepEqual(got.data, town);
      const byTown = await c.GET("/api/towns/{townId}", path({ townId: town.id }));
      assert.deepEqual(byTown.data, town);

      const del = await c.DELETE("/api/users/{userId}/towns/{townId}", path({ userId: user, townId: town.id }));
      assert.deepEqual([del.response.status, del.data], [200, { id: town.id, deleted: true }]);
      const gone = await c.GET("/api/users/{userId}/towns/{townId}", path({ userId: user, townId: town.id }));
      assert.deepEqual([gone.response.status, gone.error?.error.code], [404, "not_found"]);
      assert.deepEqual((await c.GET("/api/users/{userId}/towns", mine)).data?.map((t) => t.id), [second.id]);
      assert.equal(asked, 9, "one token per request");
    });

    it("rigs: create, list (both routes), get, patch, delete", async () => {
      const user = freshUser("client");
      const c = api(user);
      const town = await newTown(c, user);
      const rig = await newRig(c, user, town.id, "web-app");
      assert.deepEqual([rig.town_id, rig.name, rig.git_url, rig.default_branch, rig.platform_integration_id], [town.id, "web-app", GIT_URL, "main", null]);
      const other = await newRig(c, user, town.id, "api");
      const listed = await c.GET("/api/users/{userId}/towns/{townId}/rigs", path({ userId: user, townId: town.id }));
      assert.deepEqual(listed.data?.map((r) => r.name), ["web-app", "api"]);
      const byTown = await c.GET("/api/towns/{townId}/rigs", path({ townId: town.id }));
      assert.deepEqual(byTown.data, listed.data);
      const got = await c.GET("/api/users/{userId}/rigs/{rigId}", path({ userId: user, rigId: rig.id }));
      assert.deepEqual(got.data, { ...rig, integration: null });
      const patched = await c.PATCH("/api/towns/{townId}/rigs/{rigId}", { ...path({ townId: town.id, rigId: rig.id }), body: { default_branch: "develop" } });
      assert.deepEqual([patched.response.status, patched.data?.default_branch], [200, "develop"], JSON.stringify(patched.error));
      const dup = await c.POST("/api/users/{userId}/rigs", { ...path({ userId: user }), body: { town_id: town.id, name: "api", git_url: GIT_URL } });
      assert.deepEqual([dup.response.status, dup.error?.error.code], [409, "conflict"]);
      const del = await c.DELETE("/api/users/{userId}/rigs/{rigId}", path({ userId: user, rigId: other.id }));
      assert.equal(del.response.status, 200);
      assert.equal((await c.GET("/api/users/{userId}/rigs/{rigId}", path({ userId: user, rigId: other.id }))).response.status, 404);
    });

    it("beads: create, list with filters, get, patch, delete; sling; the town's agents", async () => {
      const user = freshUser("client");
      const c = api(user);
      const town = await newTown(c, user);
      const rig = await newRig(c, user, town.id);
      const t = path({ townId: town.id });
      const note = await newBead(c, town.id, "A note");
      assert.deepEqual([note.type, note.status, note.created_by, note.rig_id], ["message", "open", user, null]);
      const issue = await c.POST("/api/towns/{townId}/beads", { ...t, body: { title: "An issue", rig_id: rig.id, priority: 1, labels: ["x"], metadata: { k: 1 } } });
      assert.deepEqual([issue.response.status, issue.data?.type, issue.data?.labels, issue.data?.metadata], [201, "issue", ["x"], { k: 1 }]);

      const messages = await c.GET("/api/towns/{townId}/beads", { params: { path: { townId: town.id }, query: { type: "message", limit: 10 } } });
      assert.deepEqual(messages.data?.map((b) => b.id), [note.id]);
      const page = await c.GET("/api/towns/{townId}/beads", { params: { path: { townId: town.id }, query: { after: note.id } } });
      assert.ok(page.data?.every((b) => b.id !== note.id));
      const detail = await c.GET("/api/towns/{townId}/beads/{beadId}", path({ townId: town.id, beadId: note.id }));
      assert.deepEqual([detail.data?.id, detail.data?.events.length], [note.id, 1]);
      const renamed = await c.PATCH("/api/towns/{townId}/beads/{beadId}", { ...path({ townId: town.id, beadId: note.id }), body: { title: "A better note" } });
      assert.deepEqual([renamed.response.status, renamed.data?.title], [200, "A better note"]);
      const closed = await c.PATCH("/api/towns/{townId}/beads/{beadId}", { ...path({ townId: town.id, beadId: note.id }), body: { status: "closed" } });
      assert.equal(closed.data?.status, "closed");

      const slung = await c.POST("/api/towns/{townId}/sling", { ...t, body: { rig_id: rig.id, title: "Slung", body: "Do it." } });
      assert.deepEqual([slung.response.status, slung.data?.type, slung.data?.rig_id], [201, "issue", rig.id], JSON.stringify(slung.error));
      const agent = await registerAgent(ctx.call, town.id, rig.id, { name: "listed" });
      const agents = await c.GET("/api/towns/{townId}/agents", t);
      assert.equal(agents.response.status, 200);
      assert.ok(agents.data?.some((a) => a.id === agent.id && a.role === "polecat"), JSON.stringify(agents.data));

      const del = await c.DELETE("/api/towns/{townId}/beads/{beadId}", path({ townId: town.id, beadId: note.id }));
      assert.equal(del.response.status, 200);
      assert.equal((await c.GET("/api/towns/{townId}/beads/{beadId}", path({ townId: town.id, beadId: note.id }))).response.status, 404);
      assert.equal((await c.DELETE("/api/users/{userId}/towns/{townId}", path({ userId: user, townId: town.id }))).response.status, 200);
    });

    it("the mayor: its status, a message (202), the transcript; the town's config", async () => {
      const user = freshUser("client");
      const c = api(user);
      const town = await newTown(c, user);
      const t = path({ townId: town.id });
      const mayor = await c.GET("/api/towns/{townId}/mayor", t);
      assert.deepEqual([mayor.response.status, mayor.data?.status, mayor.data?.pending_messages], [200, "idle", 0]);
      const sent = await c.POST("/api/towns/{townId}/mayor/messages", { ...t, body: { text: "  Hello, mayor.  " } });
      assert.equal(sent.response.status, 202, JSON.stringify(sent.error));
      assert.deepEqual([sent.data?.role, sent.data?.text, sent.data?.user_id, sent.data?.delivered], ["user", "Hello, mayor.", user, false]);
      const transcript = await c.GET("/api/towns/{townId}/mayor/messages", t);
      assert.ok(transcript.data?.messages.some((m) => m.seq === sent.data?.seq), JSON.stringify(transcript.data));
      const later = await c.GET("/api/towns/{townId}/mayor/messages", { params: { path: { townId: town.id }, query: { after: sent.data?.seq ?? 0, limit: 5 } } });
      assert.ok(later.data?.messages.every((m) => m.seq > (sent.data?.seq ?? 0)));

      const config = await c.GET("/api/towns/{townId}/config", t);
      assert.deepEqual([config.response.status, config.data?.owner_user_id, config.data?.owner_type], [200, user, "user"]);
      const patched = await c.PATCH("/api/towns/{townId}/config", { ...t, body: { git_author_name: "Client Author", env_vars: { SECRET_THING: "abcdefghijklmnop" } } });
      assert.deepEqual([patched.response.status, patched.data?.git_author_name, patched.data?.env_vars], [200, "Client Author", { SECRET_THING: "****mnop" }]);
      assert.equal((await c.DELETE("/api/users/{userId}/towns/{townId}", path({ userId: user, townId: town.id }))).response.status, 200);
    });

    it("documented errors: 401 a bad token, 403 another user, 404 an unknown town, 422 bad bodies, 400 bad JSON", async () => {
      const owner = freshUser("owner");
      const c = api(owner);
      const town = await newTown(c, owner);
      const rig = await newRig(c, owner, town.id);
      const t = path({ townId: town.id });

      const bad = await api(owner, "not-a-token").GET("/api/towns/{townId}", t);
      assert.deepEqual([bad.response.status, bad.error?.error.code], [401, "unauthorized"]);

      const intruder = api(freshUser("intruder"));
      for (const res of [
        await intruder.GET("/api/users/{userId}/towns", path({ userId: owner })),
        await intruder.GET("/api/users/{userId}/towns/{townId}", path({ userId: owner, townId: town.id })),
        await intruder.GET("/api/towns/{townId}", t),
        await intruder.GET("/api/towns/{townId}/beads", t),
        await intruder.POST("/api/towns/{townId}/beads", { ...t, body: { title: "evil", type: "message" } }),
        await intruder.GET("/api/towns/{townId}/mayor", t),
        await intruder.POST("/api/towns/{townId}/mayor/messages", { ...t, body: { text: "hi" } }),
        await intruder.GET("/api/towns/{townId}/config", t),
        await intruder.POST("/api/towns/{townId}/stream-tickets", { ...t, body: { scope: "town" } }),
      ]) {
        assert.deepEqual([res.response.status, res.error?.error.code], [403, "forbidden"], res.response.url);
      }

      const unknown = path({ townId: randomUUID() });
      for (const res of [
        await c.GET("/api/towns/{townId}", unknown),
        await c.GET("/api/towns/{townId}/beads", unknown),
        await c.GET("/api/towns/{townId}/mayor", unknown),
        await c.GET("/api/towns/{townId}/config", unknown),
        await c.GET("/api/users/{userId}/towns/{townId}", path({ userId: owner, townId: randomUUID() })),
      ]) {
        assert.deepEqual([res.response.status, res.error?.error.code], [404, "not_found"], res.response.url);
      }

      const invalid = [
        [await c.POST("/api/users/{userId}/towns", { ...path({ userId: owner }), body: { name: "" } }), "name"],
        [await c.POST("/api/towns/{townId}/beads", { ...t, body: { title: "", type: "message" } }), "title"],
        [await c.POST("/api/towns/{townId}/beads", { ...t, body: { title: "no rig" } }), "rig_id"],
        [await c.POST("/api/towns/{townId}/sling", { ...t, body: { rig_id: randomUUID(), title: "elsewhere" } }), "rig_id"],
        [await c.POST("/api/towns/{townId}/mayor/messages", { ...t, body: { text: "   " } }), "text"],
        [await c.GET("/api/towns/{townId}/mayor/messages", { params: { path: { townId: town.id }, query: { limit: 0 } } }), "limit"],
        [await c.PATCH("/api/towns/{townId}/config", { ...t, body: { max_polecats_per_rig: 0 } }), "max_polecats_per_rig"],
      ];
      for (const [res, field] of invalid) {
        assert.deepEqual([res.response.status, res.error?.error.field], [422, field], `${res.response.url}: ${JSON.stringify(res.error)}`);
      }
      const malformed = await c.POST("/api/towns/{townId}/sling", { ...t, body: { rig_id: rig.id, title: "x" }, bodySerializer: () => "{" });
      assert.equal(malformed.response.status, 400);
      assert.equal((await c.GET("/api/towns/{townId}/beads", t)).data?.length, 0, "nothing was created");
      assert.equal((await c.DELETE("/api/users/{userId}/towns/{townId}", path({ userId: owner, townId: town.id }))).response.status, 200);
    });

    /** Records the sockets openStream opens (to drop one as a network would), while `body` runs. */
    async function withSockets(body) {
      const Original = globalThis.WebSocket;
      const sockets = [];
      globalThis.WebSocket = class extends Original {
        constructor(...args) {
          super(...args);
          sockets.push(this);
        }
      };
      try {
        return await body(sockets);
      } finally {
        globalThis.WebSocket = Original;
      }
    }

    /** openStream's callbacks, recorded; every event checked against the document. */
    function recorder(schema) {
      const r = { events: [], ready: [], dropped: [], closes: [] };
      r.options = {
        onEvents: (events) => {
          for (const e of events) checker.schema(schema, e);
          r.events.push(...events);
        },
        onReady: (seq) => r.ready.push(seq),
        onDropped: (count) => r.dropped.push(count),
        onClose: (code, reason, willReconnect) => r.closes.push({ code, reason, willReconnect }),
      };
      return r;
    }

    it("openStream (town): backfill then live, resumes with `after` after a dropped socket and in a new stream, ends for good when the town stops", async () => {
      const user = freshUser("clientstream");
      const c = api(user);
      const town = await newTown(c, user, "Streamed");
      const first = await newBead(c, town.id, "before the stream");
      const hasBead = (r, id) => r.events.some((e) => e.kind === "bead" && e.data.id === id);
      const seqs = (r) => r.events.map((e) => e.seq);
      const increasing = (xs) => xs.every((x, i) => i === 0 || x > xs[i - 1]);

      await withSockets(async (sockets) => {
        const r = recorder("TownEvent");
        const stream = openStream(c, { townId: town.id, scope: "town", ...r.options });
        await until("the backfill", () => (r.ready.length ? true : not(r)), 15_000);
        assert.ok(hasBead(r, first.id), JSON.stringify(r.events));
        assert.equal(stream.position(), r.ready[0]);
        assert.ok(r.ready[0] >= Math.max(...seqs(r)));

        const live = await newBead(c, town.id, "live");
        await until("the live bead", () => (hasBead(r, live.id) ? true : not(r.events)), 15_000);

        // The network drops the socket: the stream comes back with a fresh ticket and `after`.
        const at = stream.position();
        sockets[0].close(4000, "dropped by the test");
        await until("the close", () => (r.closes.length ? true : not(r)), 10_000);
        assert.deepEqual(r.closes.map((x) => x.willReconnect), [true]);
        const missed = await newBead(c, town.id, "while away");
        await until("the bead made while away", () => (hasBead(r, missed.id) ? true : not(r.events)), 15_000);
        assert.equal(sockets.length, 2);
        assert.match(sockets[1].url, new RegExp(`/api/towns/${town.id}/stream\\?ticket=[^&]+&after=${at}$`));
        assert.ok(increasing(seqs(r)), `each event once, in order: ${seqs(r)}`);
        assert.equal(stream.position(), Math.max(...seqs(r)));

        // Closed by us: no reconnect. A new stream from its position sees only what came after.
        stream.close();
        await until("our close", () => (r.closes.length === 2 ? true : not(r.closes)), 10_000);
        assert.equal(r.closes[1].willReconnect, false);
        const after = stream.position();
        const next = await newBead(c, town.id, "after the first stream");
        const r2 = recorder("TownEvent");
        const resumed = openStream(c, { townId: town.id, scope: "town", after, ...r2.options });
        await until("the resumed backfill", () => (r2.ready.length && hasBead(r2, next.id) ? true : not(r2)), 15_000);
        assert.ok(r2.events.every((e) => e.seq > after), `only events after ${after}: ${seqs(r2)}`);

        // The town stops: its last change arrives, then the server's 4409 close frame. Node's
        // WebSocket reports a close only once the TCP connection ends, which wrangler dev keeps
        // open long after that frame (streams.mjs waits for it); here the close is handed to the
        // socket as Node would report it, to show that 4409 is final.
        const stopped = await c.POST("/api/towns/{townId}/stop", path({ townId: town.id }));
        assert.equal(stopped.response.status, 200);
        await until("the stop itself", () => (r2.events.some((e) => e.kind === "town" && e.data.status === "stopped") ? true : not(r2.events)), 15_000);
        const opened = sockets.length;
        sockets.at(-1).dispatchEvent(Object.assign(new Event("close"), { code: 4409, reason: "the town was stopped" }));
        assert.deepEqual(r2.closes, [{ code: 4409, reason: "the town was stopped", willReconnect: false }]);
        await sleep(800);
        assert.equal(sockets.length, opened, "no reconnect after 4409");
        resumed.close();
        assert.equal(r2.closes.length, 1, "close() after the end reports nothing more");
      });

      // A stopped town gives no ticket: the stream ends at once with 4000 + 409.
      const r3 = recorder("TownEvent");
      openStream({ baseUrl: ctx.worker.url, token: tokenFor(user), fetch: checker.fetch }, { townId: town.id, scope: "town", ...r3.options });
      await until("the refused ticket", () => (r3.closes.length ? true : not(r3)), 10_000);
      assert.deepEqual([r3.closes[0].code, r3.closes[0].willReconnect], [4409, false]);
      assert.equal((await c.DELETE("/api/users/{userId}/towns/{townId}", path({ userId: user, townId: town.id }))).response.status, 200);
    });

    it("openStream (agent): an agent's events by id, backfill then live; an unknown agent ends at once with 4404", async () => {
      const user = freshUser("clientstream");
      const c = api(user);
      const town = await newTown(c, user, "Agent streamed");
      const rig = await newRig(c, user, town.id);
      const agent = await registerAgent(ctx.call, town.id, rig.id, { name: "streamed" });
      // The agent's own (legacy) token posts its events, through the same typed client.
      const runtime = api(user, agentTokenFor(town.id, user, { rigId: rig.id, agentId: agent.id }));
      const post = async (seqs) => {
        const res = await runtime.POST("/api/towns/{townId}/rigs/{rigId}/agents/{agentId}/events", {
          ...path({ townId: town.id, rigId: rig.id, agentId: agent.id }),
          body: { run: 1, events: seqs.map((seq) => ({ seq, at_ms: Date.now(), kind: "output", text: `line ${seq}` })) },
        });
        assert.deepEqual([res.response.status, res.data?.stored], [200, seqs.length], JSON.stringify(res.error));
      };
      await post([1, 2, 3]);

      const r = recorder("AgentEvent");
      const stream = openStream(c, { townId: town.id, scope: { agentId: agent.id }, ...r.options });
      await until("the backfill", () => (r.ready.length ? true : not(r)), 15_000);
      assert.deepEqual(r.events.map((e) => e.text), ["line 1", "line 2", "line 3"]);
      assert.equal(stream.position(), r.events[2].id);
      await post([4, 5]);
      await until("the live events", () => (r.events.length === 5 ? true : not(r.events)), 15_000);
      assert.deepEqual(r.events.map((e) => e.seq), [1, 2, 3, 4, 5]);
      assert.equal(stream.position(), r.events[4].id);
      stream.close();

      const r2 = recorder("AgentEvent");
      openStream(c, { townId: town.id, scope: { agentId: randomUUID() }, ...r2.options });
      await until("the refused ticket", () => (r2.closes.length ? true : not(r2)), 10_000);
      assert.deepEqual([r2.closes[0].code, r2.closes[0].willReconnect, r2.events.length], [4404, false, 0]);
      assert.equal((await c.DELETE("/api/users/{userId}/towns/{townId}", path({ userId: user, townId: town.id }))).response.status, 200);
    });

    it("every response above went through the check", () => {
      for (const op of [
        "POST /api/users/{userId}/towns 201",
        "GET /api/users/{userId}/towns 200",
        "DELETE /api/users/{userId}/towns/{townId} 200",
        "POST /api/users/{userId}/rigs 201",
        "GET /api/towns/{townId}/rigs 200",
        "POST /api/towns/{townId}/beads 201",
        "PATCH /api/towns/{townId}/beads/{beadId} 200",
        "POST /api/towns/{townId}/sling 201",
        "GET /api/towns/{townId}/agents 200",
        "POST /api/towns/{townId}/mayor/messages 202",
        "GET /api/towns/{townId}/mayor 200",
        "GET /api/towns/{townId}/config 200",
        "POST /api/towns/{townId}/stream-tickets 201",
        "GET /api/towns/{townId} 403",
        "GET /api/towns/{townId} 404",
        "POST /api/towns/{townId}/beads 422",
      ]) {
        assert.ok(checker.seen.has(op), `${op} was not checked`);
      }
    });
  });
}

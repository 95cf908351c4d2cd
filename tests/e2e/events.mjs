// Issue 23, agent events: the container's batches are stored once per (run, seq), paged by
// id, long text cut and marked, each agent's kept to AGENT_EVENTS_CAP with what it dropped
// counted; only the town's container token for the agent's own rig may post, and only the
// town's users may read. (That the control server sends an agent's lines with every secret
// masked is crates/control-server/tests/events.rs.)
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { freshUser, tokenFor, createTown, createRig, registerAgent } from "./fixtures.mjs";

/** AGENT_EVENTS_CAP of the suite-wide worker (all.test.mjs). */
export const EVENTS_CAP = 50;

export default function events(ctx) {
  describe("agent events", () => {
    it("a batch is stored once, paged by id, long text cut and marked; the cap keeps the newest; bad batches and other callers change nothing", async () => {
      const user = freshUser("events");
      const town = await createTown(ctx.call, user, "Events");
      const rig = await createRig(ctx.call, user, town.id, "app");
      const otherRig = await createRig(ctx.call, user, town.id, "lib");
      assert.equal((await ctx.call("POST", `/api/towns/${town.id}/container/start`, { token: tokenFor(user) })).status, 200);
      const agent = await registerAgent(ctx.call, town.id, rig.id, { name: "eventful" });
      const ct = (await ctx.control.town(town.id)).body.token;
      const post = (body, { token = ct, rigId = rig.id, agentId = agent.id } = {}) =>
        ctx.call("POST", `/api/towns/${town.id}/rigs/${rigId}/agents/${agentId}/events`, { token, body });
      const get = (q = "", { token = tokenFor(user), agentId = agent.id } = {}) =>
        ctx.call("GET", `/api/towns/${town.id}/agents/${agentId}/events${q}`, { token });
      const at = Date.now();
      const batch = {
        run: 1,
        events: [
          { seq: 1, at_ms: at, kind: "output", text: "one" },
          { seq: 2, at_ms: at + 1, kind: "tool", text: "bash: running" },
          { seq: 3, at_ms: at + 2, kind: "output", text: `${"x".repeat(4100)}\u0007` },
        ],
      };
      const first = await post(batch);
      assert.deepEqual([first.status, first.body], [200, { stored: 3, duplicates: 0 }], first.text);
      const again = await post(batch);
      assert.deepEqual(again.body, { stored: 0, duplicates: 3 }, "a batch sent again is stored once");

      const page = (await get()).body;
      assert.deepEqual(page.events.map((e) => [e.run, e.seq, e.kind, e.truncated]), [[1, 1, "output", false], [1, 2, "tool", false], [1, 3, "output", true]]);
      assert.deepEqual([page.events[0].text, page.events[2].text.length, page.next_after, page.dropped], ["one", 4000, null, 0]);
      assert.equal(page.events[0].at, new Date(at).toISOString());
      const ids = page.events.map((e) => e.id);
      assert.deepEqual(ids, [...ids].sort((a, b) => a - b));
      const p1 = (await get("?limit=2")).body;
      assert.deepEqual([p1.events.length, p1.next_after], [2, ids[1]]);
      const p2 = (await get(`?after=${p1.next_after}&limit=2`)).body;
      assert.deepEqual([p2.events.map((e) => e.id), p2.next_after], [[ids[2]], null]);

      // Bad batches and bad callers write nothing.
      for (const bad of [{ run: 1, events: [] }, { run: 1, events: [{ seq: 9, at_ms: 1, kind: "Not A Kind", text: "" }] }, { run: -1, events: [{ seq: 9, at_ms: 1, kind: "output", text: "" }] }, { events: [{ seq: 9, at_ms: 1, kind: "output", text: "" }] }]) {
        assert.equal((await post(bad)).status, 422, JSON.stringify(bad));
      }
      const one = { run: 1, events: [{ seq: 99, at_ms: at, kind: "output", text: "not mine" }] };
      assert.equal((await post(one, { rigId: otherRig.id })).status, 404, "from another rig");
      assert.equal((await post(one, { agentId: "00000000-0000-4000-8000-000000000000" })).status, 404, "an agent the town does not have");
      assert.equal((await post(one, { token: tokenFor(user) })).status, 401, "a user token");
      assert.equal((await get()).body.events.length, 3);
      // Readers: the town's users only.
      assert.equal((await get("", { token: tokenFor(freshUser("stranger")) })).status, 403);
      assert.equal((await get("", { agentId: "00000000-0000-4000-8000-000000000000" })).status, 404);
      assert.equal((await get("?after=x")).status, 422);

      // The cap keeps the newest EVENTS_CAP events of the agent, and counts the rest.
      const many = { run: 2, events: Array.from({ length: EVENTS_CAP }, (_, i) => ({ seq: i + 1, at_ms: at, kind: "output", text: `line ${i + 1}` })) };
      assert.deepEqual((await post(many)).body, { stored: EVENTS_CAP, duplicates: 0 });
      const capped = (await get("?limit=500")).body;
      assert.equal(capped.events.length, EVENTS_CAP);
      assert.deepEqual([capped.dropped, capped.events[0].text, capped.events.at(-1).text], [3, "line 1", `line ${EVENTS_CAP}`]);
    });
  });
}

// The town's alarm, destruction, and persistence across a worker restart. Runs last: it restarts
// the worker.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { sleep } from "./harness.mjs";
import { freshUser, tokenFor, createTown, createRig, snapshot, internalKey } from "./fixtures.mjs";

const health = (ctx, townId) =>
  ctx.call("GET", `/api/internal/towns/${townId}/health`, { headers: { "x-internal-api-key": internalKey() } });

async function waitForRuns(ctx, townId, atLeast, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await health(ctx, townId);
    if (res.status === 200 && res.body.alarm_runs >= atLeast) return res.body;
    if (Date.now() > deadline) throw new Error(`alarm did not run ${atLeast} times: ${res.text}`);
    await sleep(250);
  }
}

export default function lifecycle(ctx) {
  describe("town lifecycle", () => {
    it("a new town has a pending alarm, and the alarm fires and re-arms itself", async () => {
      const user = freshUser();
      const town = await createTown(ctx.call, user);
      const first = await health(ctx, town.id);
      assert.equal(first.status, 200);
      assert.ok(first.body.alarm_at > Date.now() - 1000, "alarm armed at creation");
      const h = await waitForRuns(ctx, town.id, 2);
      assert.ok(h.alarm_at, "the alarm re-armed itself after running");
      assert.ok(Date.parse(h.last_alarm_at) > Date.parse(town.created_at));
      assert.equal(h.watchdog_rearms, 0, "a healthy alarm is left alone by the watchdog");
    });

    it("the owner's watchdog re-arms a town alarm that went missing", async () => {
      const user = freshUser();
      const town = await createTown(ctx.call, user);
      await waitForRuns(ctx, town.id, 1);
      const drop = await ctx.call("DELETE", `/api/internal/towns/${town.id}/alarm`, { headers: { "x-internal-api-key": internalKey() } });
      assert.equal(drop.status, 200);
      const runs = (await health(ctx, town.id)).body.alarm_runs;
      const deadline = Date.now() + 15_000;
      let h;
      do {
        await sleep(200);
        h = (await health(ctx, town.id)).body;
      } while (h.watchdog_rearms < 1 && Date.now() < deadline);
      assert.equal(h.watchdog_rearms, 1, "the watchdog found the alarm missing and set it again");
      assert.ok(h.alarm_at, "an alarm is pending again");
      await waitForRuns(ctx, town.id, runs + 1);
    });

    it("a destroyed town answers 404 and its alarm stops", async () => {
      const user = freshUser();
      const token = tokenFor(user);
      const town = await createTown(ctx.call, user);
      await waitForRuns(ctx, town.id, 1);
      assert.equal((await ctx.call("DELETE", `/api/users/${user}/towns/${town.id}`, { token })).status, 200);
      assert.equal((await health(ctx, town.id)).status, 404);
      await sleep(2500);
      assert.equal((await health(ctx, town.id)).status, 404, "no alarm brought the town back");
    });

    it("state survives a worker restart with the same persist dir, and alarms keep firing", async () => {
      const user = freshUser();
      const town = await createTown(ctx.call, user, "Durable");
      await createRig(ctx.call, user, town.id, "kept");
      const before = await snapshot(ctx.call, user);
      const runsBefore = (await waitForRuns(ctx, town.id, 1)).alarm_runs;
      await ctx.restart();
      assert.deepEqual(await snapshot(ctx.call, user), before);
      await waitForRuns(ctx, town.id, runsBefore + 2);
    });
  });
}

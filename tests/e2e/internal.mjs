// Internal routes: the x-internal-api-key header, compared in constant time by the worker.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { freshUser, tokenFor, createTown, createRig, internalKey } from "./fixtures.mjs";

export default function internal(ctx) {
  describe("internal routes", () => {
    it("refuse a missing, wrong or user credential", async () => {
      const user = freshUser();
      const town = await createTown(ctx.call, user);
      const path = `/api/internal/towns/${town.id}/health`;
      for (const headers of [
        {},
        { "x-internal-api-key": "" },
        { "x-internal-api-key": `${internalKey()}x` },
        { "x-internal-api-key": internalKey().slice(0, -1) },
        { authorization: `Bearer ${tokenFor(user)}` },
      ]) {
        const res = await ctx.call("GET", path, { headers });
        assert.equal(res.status, 401, JSON.stringify(headers));
        assert.equal(res.body.error.code, "unauthorized");
      }
    });

    it("rig lookup finds the town and owner of a rig", async () => {
      const user = freshUser();
      const town = await createTown(ctx.call, user);
      const rig = await createRig(ctx.call, user, town.id);
      const res = await ctx.call("GET", `/api/internal/rigs/${rig.id}`, { headers: { "x-internal-api-key": internalKey() } });
      assert.equal(res.status, 200);
      assert.equal(res.body.town_id, town.id);
      assert.equal(res.body.owner_type, "user");
      assert.equal(res.body.owner_id, user);
      const missing = await ctx.call("GET", `/api/internal/rigs/nope`, { headers: { "x-internal-api-key": internalKey() } });
      assert.equal(missing.status, 404);
    });

    it("unknown towns have no health", async () => {
      const res = await ctx.call("GET", `/api/internal/towns/00000000-0000-4000-8000-000000000000/health`, {
        headers: { "x-internal-api-key": internalKey() },
      });
      assert.equal(res.status, 404);
    });
  });
}

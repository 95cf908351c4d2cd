// Personal towns and rigs: the dashboard's create / list / get / delete flows.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { freshUser, tokenFor, createTown, createRig, snapshot, internalKey } from "./fixtures.mjs";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

export default function personal(ctx) {
  describe("personal towns and rigs", () => {
    it("GET /health is public", async () => {
      const res = await ctx.call("GET", "/health");
      assert.equal(res.status, 200);
      assert.deepEqual(res.body, { status: "ok" });
      const doc = await ctx.call("GET", "/openapi.json");
      assert.equal(doc.status, 200);
      assert.equal(doc.body.openapi, "3.1.0");
      assert.ok(doc.body.paths["/api/towns/{townId}/config"].patch);
    });

    it("creates, lists, gets and deletes towns", async () => {
      const user = freshUser();
      const token = tokenFor(user);
      const empty = await ctx.call("GET", `/api/users/${user}/towns`, { token });
      assert.equal(empty.status, 200);
      assert.deepEqual(empty.body, []);

      const created = await ctx.call("POST", `/api/users/${user}/towns`, { token, body: { name: "  Alpha  " } });
      assert.equal(created.status, 201);
      const town = created.body;
      assert.match(town.id, UUID);
      assert.equal(town.name, "Alpha");
      assert.equal(town.owner_type, "user");
      assert.equal(town.owner_user_id, user);
      assert.equal(town.organization_id, null);
      assert.equal(town.created_by_user_id, user);
      assert.equal(town.status, "active");
      assert.ok(!Number.isNaN(Date.parse(town.created_at)));
      assert.equal(created.headers.get("cache-control"), "no-store");

      const second = await createTown(ctx.call, user, "Beta");
      const list = await ctx.call("GET", `/api/users/${user}/towns`, { token });
      assert.deepEqual(list.body.map((t) => t.name), ["Alpha", "Beta"]);

      const got = await ctx.call("GET", `/api/users/${user}/towns/${town.id}`, { token });
      assert.equal(got.status, 200);
      assert.deepEqual(got.body, town);

      const del = await ctx.call("DELETE", `/api/users/${user}/towns/${town.id}`, { token });
      assert.equal(del.status, 200);
      assert.deepEqual(del.body, { id: town.id, deleted: true });
      assert.equal((await ctx.call("GET", `/api/users/${user}/towns/${town.id}`, { token })).status, 404);
      assert.equal((await ctx.call("DELETE", `/api/users/${user}/towns/${town.id}`, { token })).status, 404);
      const after = await ctx.call("GET", `/api/users/${user}/towns`, { token });
      assert.deepEqual(after.body.map((t) => t.id), [second.id]);
    });

    it("creates, lists, gets and deletes rigs", async () => {
      const user = freshUser();
      const token = tokenFor(user);
      const town = await createTown(ctx.call, user);
      const res = await ctx.call("POST", `/api/users/${user}/rigs`, {
        token,
        body: { town_id: town.id, name: "web-app", git_url: "https://github.com/acme/web-app.git" },
      });
      assert.equal(res.status, 201);
      const rig = res.body;
      assert.match(rig.id, UUID);
      assert.deepEqual(
        { ...rig, id: undefined, created_at: undefined },
        { id: undefined, created_at: undefined, town_id: town.id, name: "web-app", git_url: "https://github.com/acme/web-app.git", default_branch: "main", platform_integration_id: null },
      );
      const unknownIntegration = await ctx.call("POST", `/api/users/${user}/rigs`, {
        token,
        body: { town_id: town.id, name: "api", git_url: "git@github.com:acme/api.git", platform_integration_id: "pi-1" },
      });
      assert.equal(unknownIntegration.status, 422, "an integration id must name one of the owner's integrations");
      assert.equal(unknownIntegration.body.error.field, "platform_integration_id");
      const other = await ctx.call("POST", `/api/users/${user}/rigs`, {
        token,
        body: { town_id: town.id, name: "api", git_url: "git@github.com:acme/api.git", default_branch: "develop" },
      });
      assert.equal(other.status, 201);
      assert.equal(other.body.default_branch, "develop");
      assert.equal(other.body.platform_integration_id, null);

      const list = await ctx.call("GET", `/api/users/${user}/towns/${town.id}/rigs`, { token });
      assert.deepEqual(list.body.map((r) => r.name), ["web-app", "api"]);
      assert.deepEqual((await ctx.call("GET", `/api/users/${user}/rigs/${rig.id}`, { token })).body, { ...rig, integration: null });

      const health = await ctx.call("GET", `/api/internal/towns/${town.id}/health`, { headers: { "x-internal-api-key": internalKey() } });
      assert.equal(health.body.rig_count, 2, "the town DO's rig registry follows the owner's");

      const del = await ctx.call("DELETE", `/api/users/${user}/rigs/${rig.id}`, { token });
      assert.equal(del.status, 200);
      assert.equal((await ctx.call("GET", `/api/users/${user}/rigs/${rig.id}`, { token })).status, 404);
      assert.equal((await ctx.call("DELETE", `/api/users/${user}/rigs/${rig.id}`, { token })).status, 404);
      const left = await ctx.call("GET", `/api/users/${user}/towns/${town.id}/rigs`, { token });
      assert.deepEqual(left.body.map((r) => r.name), ["api"]);
      const health2 = await ctx.call("GET", `/api/internal/towns/${town.id}/health`, { headers: { "x-internal-api-key": internalKey() } });
      assert.equal(health2.body.rig_count, 1);
    });

    it("a rig name is unique within a town, not across towns", async () => {
      const user = freshUser();
      const a = await createTown(ctx.call, user, "A");
      const b = await createTown(ctx.call, user, "B");
      await createRig(ctx.call, user, a.id, "same");
      const dup = await ctx.call("POST", `/api/users/${user}/rigs`, {
        token: tokenFor(user),
        body: { town_id: a.id, name: "same", git_url: "https://github.com/acme/x" },
      });
      assert.equal(dup.status, 409);
      assert.equal(dup.body.error.code, "conflict");
      await createRig(ctx.call, user, b.id, "same");
      assert.equal((await snapshot(ctx.call, user)).rigs[a.id].length, 1);
    });

    it("deleting a town removes its rigs", async () => {
      const user = freshUser();
      const token = tokenFor(user);
      const town = await createTown(ctx.call, user);
      const rig = await createRig(ctx.call, user, town.id);
      assert.equal((await ctx.call("DELETE", `/api/users/${user}/towns/${town.id}`, { token })).status, 200);
      assert.equal((await ctx.call("GET", `/api/users/${user}/rigs/${rig.id}`, { token })).status, 404);
      assert.equal((await ctx.call("GET", `/api/users/${user}/towns/${town.id}/rigs`, { token })).status, 404);
      const lookup = await ctx.call("GET", `/api/internal/rigs/${rig.id}`, { headers: { "x-internal-api-key": internalKey() } });
      assert.equal(lookup.status, 404, "the rig index forgets the town's rigs");
    });

    it("another user's token gets 403 on every personal route and changes nothing", async () => {
      const owner = freshUser("owner");
      const intruder = tokenFor(freshUser("intruder"));
      const town = await createTown(ctx.call, owner);
      const rig = await createRig(ctx.call, owner, town.id);
      const before = await snapshot(ctx.call, owner);
      const routes = [
        ["POST", `/api/users/${owner}/towns`, { name: "x" }],
        ["GET", `/api/users/${owner}/towns`],
        ["GET", `/api/users/${owner}/towns/${town.id}`],
        ["DELETE", `/api/users/${owner}/towns/${town.id}`],
        ["POST", `/api/users/${owner}/rigs`, { town_id: town.id, name: "evil", git_url: "https://github.com/e/e" }],
        ["GET", `/api/users/${owner}/towns/${town.id}/rigs`],
        ["GET", `/api/users/${owner}/rigs/${rig.id}`],
        ["DELETE", `/api/users/${owner}/rigs/${rig.id}`],
      ];
      for (const [method, path, body] of routes) {
        const res = await ctx.call(method, path, { token: intruder, body });
        assert.equal(res.status, 403, `${method} ${path}`);
        assert.equal(res.body.error.code, "forbidden");
      }
      assert.deepEqual(await snapshot(ctx.call, owner), before);
    });

    it("a user cannot reach another user's town through their own routes", async () => {
      const owner = freshUser("owner");
      const other = freshUser("other");
      const town = await createTown(ctx.call, owner);
      const rig = await createRig(ctx.call, owner, town.id);
      const token = tokenFor(other);
      assert.equal((await ctx.call("GET", `/api/users/${other}/towns/${town.id}`, { token })).status, 404);
      assert.equal((await ctx.call("DELETE", `/api/users/${other}/towns/${town.id}`, { token })).status, 404);
      assert.equal((await ctx.call("GET", `/api/users/${other}/rigs/${rig.id}`, { token })).status, 404);
      assert.equal((await ctx.call("DELETE", `/api/users/${other}/rigs/${rig.id}`, { token })).status, 404);
      const steal = await ctx.call("POST", `/api/users/${other}/rigs`, {
        token,
        body: { town_id: town.id, name: "steal", git_url: "https://github.com/e/e" },
      });
      assert.equal(steal.status, 404);
      assert.equal((await snapshot(ctx.call, owner)).rigs[town.id].length, 1);
      assert.equal((await ctx.call("GET", `/api/users/${owner}/towns/${town.id}`, { token: tokenFor(owner) })).status, 200);
    });

    it("a user the dashboard switched off (gastownAccess: false) gets 403", async () => {
      const user = freshUser();
      const token = tokenFor(user, { extra: { gastownAccess: false } });
      const res = await ctx.call("GET", `/api/users/${user}/towns`, { token });
      assert.equal(res.status, 403);
      const ok = await ctx.call("GET", `/api/users/${user}/towns`, { token: tokenFor(user, { extra: { gastownAccess: true } }) });
      assert.equal(ok.status, 200);
    });

    it("lists page with ?limit and ?after, oldest first", async () => {
      const user = freshUser();
      const token = tokenFor(user);
      const names = ["t1", "t2", "t3", "t4", "t5"];
      for (const name of names) await createTown(ctx.call, user, name);
      const seen = [];
      let after = "";
      for (;;) {
        const res = await ctx.call("GET", `/api/users/${user}/towns?limit=2${after}`, { token });
        assert.equal(res.status, 200);
        assert.ok(res.body.length <= 2);
        if (res.body.length === 0) break;
        seen.push(...res.body.map((t) => t.name));
        after = `&after=${res.body.at(-1).id}`;
      }
      assert.deepEqual(seen, names);
      for (const q of ["limit=0", "limit=501", "limit=abc", "after=not%20an%20id"]) {
        const res = await ctx.call("GET", `/api/users/${user}/towns?${q}`, { token });
        assert.equal(res.status, 422, q);
      }
      const unknown = await ctx.call("GET", `/api/users/${user}/towns?after=00000000-0000-4000-8000-000000000000`, { token });
      assert.equal(unknown.status, 422);
      assert.equal(unknown.body.error.field, "after");
      const town = (await ctx.call("GET", `/api/users/${user}/towns?limit=1`, { token })).body[0];
      await createRig(ctx.call, user, town.id, "r1");
      await createRig(ctx.call, user, town.id, "r2");
      const rigs = await ctx.call("GET", `/api/users/${user}/towns/${town.id}/rigs?limit=1`, { token });
      assert.deepEqual(rigs.body.map((r) => r.name), ["r1"]);
      const next = await ctx.call("GET", `/api/users/${user}/towns/${town.id}/rigs?limit=1&after=${rigs.body[0].id}`, { token });
      assert.deepEqual(next.body.map((r) => r.name), ["r2"]);
    });

    it("ids are percent-decoded path segments", async () => {
      const user = `oauth/google:${Date.now()}`;
      const enc = encodeURIComponent(user);
      const token = tokenFor(user);
      const res = await ctx.call("POST", `/api/users/${enc}/towns`, { token, body: { name: "Slashy" } });
      assert.equal(res.status, 201);
      assert.equal(res.body.owner_user_id, user);
      const list = await ctx.call("GET", `/api/users/${enc}/towns`, { token });
      assert.deepEqual(list.body.map((t) => t.id), [res.body.id]);
    });
  });
}

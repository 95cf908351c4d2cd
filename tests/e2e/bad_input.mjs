// Bad requests get a JSON 4xx and write nothing; unknown routes and methods get JSON too.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { freshUser, tokenFor, createTown, createRig, snapshot } from "./fixtures.mjs";

export default function badInput(ctx) {
  describe("bad input", () => {
    const user = freshUser("bad");
    const token = tokenFor(user);
    let town;

    it("setup: one town with one rig", async () => {
      town = await createTown(ctx.call, user, "Keep");
      await createRig(ctx.call, user, town.id, "keep");
    });

    const townBodies = [
      ["malformed JSON", { raw: "{\"name\":" }, 400, "invalid_json"],
      ["empty body", { raw: "" }, 400, "invalid_json"],
      ["array body", { raw: "[1,2]" }, 400, "invalid_json"],
      ["name missing", { body: {} }, 422, "invalid_field", "name"],
      ["name not a string", { body: { name: 42 } }, 422, "invalid_field", "name"],
      ["name blank", { body: { name: "   " } }, 422, "invalid_field", "name"],
      ["name too long", { body: { name: "x".repeat(101) } }, 422, "invalid_field", "name"],
      ["name with control characters", { body: { name: "a\u0000b" } }, 422, "invalid_field", "name"],
      ["body over 64 KiB", { body: { name: "ok", pad: "x".repeat(70 * 1024) } }, 413, "payload_too_large"],
      ["not JSON content type", { raw: "{\"name\":\"x\"}", contentType: "text/plain" }, 415, "unsupported_media_type"],
    ];
    for (const [name, opts, status, code, field] of townBodies) {
      it(`create town: ${name} → ${status}`, async () => {
        const res = await ctx.call("POST", `/api/users/${user}/towns`, { token, ...opts });
        assert.equal(res.status, status, res.text);
        assert.equal(res.body.error.code, code);
        if (field) assert.equal(res.body.error.field, field);
      });
    }

    const rigBodies = (townId) => [
      ["git_url with a token", { town_id: townId, name: "r", git_url: "https://x:ghp_secret@github.com/o/r" }, 422, "git_url"],
      ["git_url not a URL", { town_id: townId, name: "r", git_url: "not a url" }, 422, "git_url"],
      ["file URL", { town_id: townId, name: "r", git_url: "file:///etc/passwd" }, 422, "git_url"],
      ["name with a slash", { town_id: townId, name: "../etc", git_url: "https://github.com/o/r" }, 422, "name"],
      ["bad branch", { town_id: townId, name: "r", git_url: "https://github.com/o/r", default_branch: "a..b" }, 422, "default_branch"],
      ["town_id missing", { name: "r", git_url: "https://github.com/o/r" }, 422, "town_id"],
      ["town_id wrong type", { town_id: 7, name: "r", git_url: "https://github.com/o/r" }, 422, "town_id"],
      ["unknown town", { town_id: "00000000-0000-4000-8000-000000000000", name: "r", git_url: "https://github.com/o/r" }, 404],
      ["duplicate name", { town_id: townId, name: "keep", git_url: "https://github.com/o/r" }, 409],
    ];
    it("create rig: each bad body gets its 4xx", async () => {
      for (const [name, body, status, field] of rigBodies(town.id)) {
        const res = await ctx.call("POST", `/api/users/${user}/rigs`, { token, body });
        assert.equal(res.status, status, `${name}: ${res.text}`);
        if (field) assert.equal(res.body.error.field, field, name);
        assert.ok(!res.text.includes("ghp_secret"), "a credential in a URL is not echoed");
      }
    });

    it("nothing was written by any of them", async () => {
      const snap = await snapshot(ctx.call, user);
      assert.deepEqual(snap.towns.map((t) => t.name), ["Keep"]);
      assert.deepEqual(snap.rigs[town.id].map((r) => r.name), ["keep"]);
    });

    it("unknown route → JSON 404", async () => {
      for (const path of ["/nope", "/api/users", `/api/users/${user}/towns/${town.id}/nope`]) {
        const res = await ctx.call("GET", path, { token });
        assert.equal(res.status, 404, path);
        assert.equal(res.body.error.code, "not_found");
      }
    });

    it("wrong method → JSON 405 with Allow", async () => {
      const res = await ctx.call("PUT", `/api/users/${user}/towns`, { token, body: { name: "x" } });
      assert.equal(res.status, 405);
      assert.equal(res.body.error.code, "method_not_allowed");
      assert.equal(res.headers.get("allow"), "POST, GET");
      const patch = await ctx.call("PATCH", "/health");
      assert.equal(patch.status, 405);
    });

    it("a method the API does not know is never read as GET", async () => {
      // workers-rs maps unknown methods to GET; the router reads the raw method instead.
      for (const method of ["QUERY", "PROPFIND", "PURGE"]) {
        const res = await ctx.call(method, `/api/users/${user}/towns`, { token });
        assert.equal(res.status, 405, method);
        assert.equal(res.body.error.code, "method_not_allowed");
      }
    });

    it("a town id that is not a valid id → 404, not 500", async () => {
      const res = await ctx.call("GET", `/api/users/${user}/towns/${"x".repeat(200)}`, { token });
      assert.equal(res.status, 404);
    });
  });
}

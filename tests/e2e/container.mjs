// The town container: config reaches it (and removals too), the container token is minted,
// pushed, refreshed by the alarm behind a persisted throttle, and accepted only on its own town.
import { describe, it, before } from "node:test";
import assert from "node:assert/strict";
import { sleep } from "./harness.mjs";
import { freshUser, tokenFor, createTown, createRig, internalKey, agentTokenFor, sandboxTokenFor, registerAgent, keepBusy } from "./fixtures.mjs";

const payload = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
const PAT = "ghp_container_test_pat_0123456789WXYZ";

export default function container(ctx) {
  describe("town container and container token", () => {
    const user = freshUser("cont");
    const token = () => tokenFor(user);
    const seen = []; // every dashboard response body of this suite
    const dash = async (method, path, body) => {
      const res = await ctx.call(method, path, { token: token(), body });
      seen.push(res.text);
      return res;
    };
    const health = async (townId) =>
      (await ctx.call("GET", `/api/internal/towns/${townId}/health`, { headers: { "x-internal-api-key": internalKey() } })).body;
    let town;
    let rig;

    before(async () => {
      town = await createTown(ctx.call, user, "Containered");
      rig = await createRig(ctx.call, user, town.id, "app");
    });

    it("config is stored before the container runs; the dashboard sees names only", async () => {
      const patch = await dash("PATCH", `/api/towns/${town.id}/config`, {
        github_cli_pat: PAT,
        git_author_name: "Ada",
        git_author_email: "ada@example.com",
        env_vars: { FEATURE_FLAG: "on-secret-value-1234" },
      });
      assert.equal(patch.status, 200, patch.text);
      const status = await dash("GET", `/api/towns/${town.id}/container`);
      assert.equal(status.status, 200);
      assert.equal(status.body.state, "stopped");
      assert.equal(status.body.token_expires_at, null);
      for (const name of ["GITHUB_CLI_PAT", "GASTOWN_GIT_AUTHOR_NAME", "GASTOWN_GIT_AUTHOR_EMAIL", "FEATURE_FLAG"]) {
        assert.ok(status.body.env_var_names.includes(name), name);
      }
      assert.ok(!status.text.includes(PAT) && !status.text.includes("on-secret-value"));
    });

    it("forcing a refresh before the container runs is a 409, not a gateway error", async () => {
      const res = await dash("POST", `/api/towns/${town.id}/container/refresh-token`);
      assert.equal(res.status, 409);
      assert.equal(res.body.error.code, "conflict");
    });

    it("starting pushes env and a container token carrying the owner's identity", async () => {
      const before = Math.floor(Date.now() / 1000);
      const res = await dash("POST", `/api/towns/${town.id}/container/start`);
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.state, "running");
      const inside = (await ctx.control.town(town.id)).body;
      assert.equal(inside.env.GITHUB_CLI_PAT, PAT);
      assert.equal(inside.env.GASTOWN_GIT_AUTHOR_NAME, "Ada");
      assert.equal(inside.env.FEATURE_FLAG, "on-secret-value-1234");
      const claims = payload(inside.token);
      assert.deepEqual([claims.townId, claims.userId, claims.scope], [town.id, user, "container"]);
      assert.ok(claims.exp - before >= 8 * 3600 - 5 && claims.exp - before <= 8 * 3600 + 5, "8 h lifetime");
      assert.equal(res.body.token_expires_at, claims.exp);
    });

    it("a cleared PAT disappears from the container's env; reserved keys are refused", async () => {
      const cleared = await dash("PATCH", `/api/towns/${town.id}/config`, { github_cli_pat: null });
      assert.equal(cleared.status, 200);
      const inside = (await ctx.control.town(town.id)).body;
      assert.ok(!("GITHUB_CLI_PAT" in inside.env), "no stale PAT in the container");
      assert.equal(inside.env.GASTOWN_GIT_AUTHOR_NAME, "Ada");
      const names = (await dash("GET", `/api/towns/${town.id}/container`)).body.env_var_names;
      assert.ok(!names.includes("GITHUB_CLI_PAT"));
      for (const key of ["GIT_TOKEN", "GITHUB_CLI_PAT", "GASTOWN_GIT_AUTHOR_NAME", "KILOCODE_TOKEN", "KILO_JWT"]) {
        const res = await dash("PATCH", `/api/towns/${town.id}/config`, { env_vars: { [key]: "override" } });
        assert.equal(res.status, 422, key);
        assert.equal(res.body.error.field, `env_vars.${key}`);
      }
      assert.deepEqual((await ctx.control.town(town.id)).body.env, inside.env, "a refused PATCH pushes nothing");
    });

    it("rig overrides name rigs of the town, reach the container, and leave with their rig", async () => {
      const extra = await createRig(ctx.call, user, town.id, "extra");
      const bad = await dash("PATCH", `/api/towns/${town.id}/config`, { rig_overrides: { "00000000-0000-4000-8000-000000000000": { default_model: "m" } } });
      assert.equal(bad.status, 422);
      assert.equal(bad.body.error.field, "rig_overrides.00000000-0000-4000-8000-000000000000");
      const ok = await dash("PATCH", `/api/towns/${town.id}/config`, { rig_overrides: { [extra.id]: { default_model: "rig-model", max_polecats: 2 } } });
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.body.rig_overrides[extra.id].default_model, "rig-model");
      const env = (await ctx.control.town(town.id)).body.env;
      assert.equal(JSON.parse(env.GASTOWN_RIG_OVERRIDES)[extra.id].max_polecats, 2);
      assert.equal((await dash("DELETE", `/api/users/${user}/rigs/${extra.id}`)).status, 200);
      const after = await dash("GET", `/api/towns/${town.id}/config`);
      assert.deepEqual(after.body.rig_overrides, {}, "a deleted rig's override goes with it");
      assert.ok(!("GASTOWN_RIG_OVERRIDES" in (await ctx.control.town(town.id)).body.env));
    });

    it("the container token works on its own town's container routes only", async () => {
      const ct = (await ctx.control.town(town.id)).body.token;
      const other = await createTown(ctx.call, user, "Other");
      const as = (t, method, path, headers) => ctx.call(method, path, { token: t, headers });
      // The town's container token passes; the mayor's tools want the mayor session's key too.
      const rigs = await as(ct, "GET", `/api/mayor/${town.id}/tools/rigs`);
      assert.deepEqual([rigs.status, rigs.body.error.code], [403, "forbidden"]);
      const polecat = await registerAgent(ctx.call, town.id, rig.id);
      assert.equal((await as(ct, "POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${polecat.id}/heartbeat`)).status, 200);
      assert.equal((await as(ct, "POST", `/api/towns/${town.id}/rigs/00000000-0000-4000-8000-000000000000/agents/${polecat.id}/heartbeat`)).status, 404);
      assert.equal((await as(ct, "GET", `/api/mayor/${other.id}/tools/rigs`)).status, 403, "another town");
      assert.equal((await as(ct, "POST", `/api/towns/${other.id}/refresh-container-token`)).status, 403);
      assert.equal((await as(ct, "GET", `/api/users/${user}/towns`)).status, 401, "not a user token");
      assert.equal((await as(ct, "GET", `/api/towns/${town.id}/config`)).status, 401, "not a user token");
      assert.equal((await as(token(), "GET", `/api/mayor/${town.id}/tools/rigs`)).status, 401, "a user token on a container route");
      assert.equal((await as(sandboxTokenFor(user, town.id), "GET", `/api/mayor/${town.id}/tools/rigs`)).status, 401);
      assert.equal((await as(undefined, "GET", `/api/mayor/${town.id}/tools/rigs`)).status, 401);

      const fresh = await as(ct, "POST", `/api/towns/${town.id}/refresh-container-token`);
      assert.equal(fresh.status, 200);
      const claims = payload(fresh.body.token);
      assert.deepEqual([claims.townId, claims.userId, claims.scope], [town.id, user, "container"]);
      assert.equal(fresh.body.expires_at, claims.exp);
      const again = await as(fresh.body.token, "GET", `/api/mayor/${town.id}/tools/rigs`);
      assert.deepEqual([again.status, again.body.error.message], [403, "only the town's mayor may use its tools"]);
    });

    it("legacy agent tokens are still accepted, for their own rig and agent", async () => {
      const mint = (rigId, agentId, townId = town.id) => agentTokenFor(townId, user, { rigId, agentId });
      const polecat = await registerAgent(ctx.call, town.id, rig.id, { name: "polecat-2" });
      const ok = mint(rig.id, polecat.id);
      assert.equal((await ctx.call("POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${polecat.id}/heartbeat`, { token: ok })).status, 200);
      const stranger = mint(rig.id, "not-registered");
      const res = await ctx.call("POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/not-registered/heartbeat`, { token: stranger });
      assert.equal(res.status, 404, "the agent must exist");
      // Issue 9: only on their own agent's routes, never town-wide ones.
      assert.equal((await ctx.call("GET", `/api/mayor/${town.id}/tools/rigs`, { token: ok })).status, 403);
      assert.equal((await ctx.call("POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/someone-else/heartbeat`, { token: ok })).status, 403);
      assert.equal((await ctx.call("GET", `/api/mayor/${town.id}/tools/rigs`, { token: mint(rig.id, "p", "other-town") })).status, 403);
    });

    it("the alarm refreshes the token behind the throttle and pushes it to the container", async (t) => {
      // Only a busy town's alarm pushes (an idle one pushes nothing: work.mjs).
      t.after(await keepBusy(ctx.call, town.id, user, rig.id));
      const start = await health(town.id);
      const tokenBefore = (await ctx.control.town(town.id)).body.token;
      const deadline = Date.now() + 20_000;
      let h = start;
      while (h.token_refreshes < start.token_refreshes + 2 && Date.now() < deadline) {
        await sleep(250);
        h = await health(town.id);
      }
      assert.ok(h.token_refreshes >= start.token_refreshes + 2, `refreshed: ${JSON.stringify(h)}`);
      assert.ok(Date.parse(h.token_refreshed_at) > Date.parse(start.token_refreshed_at));
      const inside = (await ctx.control.town(town.id)).body;
      assert.notEqual(inside.token, tokenBefore, "the container holds the new token");
      assert.equal(payload(inside.token).townId, town.id);
      // With a 2 s throttle and 1 s ticks, the alarm cannot have pushed more than once per 2 s.
      const elapsed = (Date.parse(h.token_refreshed_at) - Date.parse(start.token_refreshed_at)) / 1000;
      assert.ok(h.token_refreshes - start.token_refreshes <= Math.floor(elapsed / 2) + 1, "the throttle holds");
    });

    it("a container that refuses the token leaves the throttle where it was, and the next tick retries", async (t) => {
      t.after(await keepBusy(ctx.call, town.id, user, rig.id));
      await ctx.control.fail({ refresh_token: true });
      try {
        const first = await health(town.id);
        const deadline = Date.now() + 20_000;
        let h = first;
        while (h.token_refresh_failures < first.token_refresh_failures + 2 && Date.now() < deadline) {
          await sleep(250);
          h = await health(town.id);
        }
        assert.ok(h.token_refresh_failures >= first.token_refresh_failures + 2, "failed pushes are retried every tick");
        assert.equal(h.token_refreshed_at, first.token_refreshed_at, "the throttle did not advance");
        const forced = await dash("POST", `/api/towns/${town.id}/container/refresh-token`);
        assert.equal(forced.status, 502);
        assert.equal(forced.body.error.code, "container_unavailable");
      } finally {
        await ctx.control.fail({});
      }
      const failedAt = (await health(town.id)).token_refreshed_at;
      const deadline = Date.now() + 20_000;
      let h;
      do {
        await sleep(250);
        h = await health(town.id);
      } while (h.token_refreshed_at === failedAt && Date.now() < deadline);
      assert.notEqual(h.token_refreshed_at, failedAt, "the next tick after recovery refreshed");
    });

    it("the owner can force a refresh; the answer carries the expiry, never the token", async () => {
      const res = await dash("POST", `/api/towns/${town.id}/container/refresh-token`);
      assert.equal(res.status, 200, res.text);
      const inside = (await ctx.control.town(town.id)).body;
      assert.equal(res.body.token_expires_at, payload(inside.token).exp);
      assert.deepEqual(Object.keys(res.body), ["token_expires_at"]);
    });

    it("org towns: the token carries the creator; only managers may force a refresh", async () => {
      const org = freshUser("corg");
      const creator = freshUser("creator");
      const member = freshUser("member");
      const tok = (id, role) => tokenFor(id, { orgs: [{ orgId: org, role }] });
      const created = await ctx.call("POST", `/api/orgs/${org}/towns`, { token: tok(creator, "member"), body: { name: "Org town" } });
      assert.equal(created.status, 201);
      const id = created.body.id;
      const started = await ctx.call("POST", `/api/towns/${id}/container/start`, { token: tok(member, "member") });
      assert.equal(started.status, 200, started.text);
      assert.equal(payload((await ctx.control.town(id)).body.token).userId, creator, "the creator's identity, not the starter's");
      assert.equal((await ctx.call("POST", `/api/towns/${id}/container/refresh-token`, { token: tok(member, "member") })).status, 403);
      assert.equal((await ctx.call("POST", `/api/towns/${id}/container/refresh-token`, { token: tok(creator, "member") })).status, 200);
      assert.equal((await ctx.call("POST", `/api/towns/${id}/container/refresh-token`, { token: tok(freshUser("boss"), "owner") })).status, 200);
    });

    it("secrets are sealed at rest: no stored file holds a PAT or env value in clear", async () => {
      const { readdirSync, readFileSync, statSync } = await import("node:fs");
      const { join } = await import("node:path");
      const secret = "ghp_at_rest_probe_0123456789ABCDEF";
      const envValue = "env-at-rest-probe-value-98765";
      const res = await dash("PATCH", `/api/towns/${town.id}/config`, { github_cli_pat: secret, env_vars: { PROBE: envValue } });
      assert.equal(res.status, 200);
      assert.equal((await ctx.control.town(town.id)).body.env.GITHUB_CLI_PAT, secret, "the container still gets it in clear");
      const files = [];
      const walk = (dir) => {
        for (const name of readdirSync(dir)) {
          const path = join(dir, name);
          if (statSync(path).isDirectory()) walk(path);
          else files.push(path);
        }
      };
      walk(ctx.persistDir);
      assert.ok(files.some((f) => f.endsWith(".sqlite")), "the persist dir holds the DOs' SQLite files");
      for (const file of files) {
        const bytes = readFileSync(file);
        assert.ok(!bytes.includes(secret), `${file} holds the PAT in clear`);
        assert.ok(!bytes.includes(envValue), `${file} holds an env value in clear`);
      }
      const shown = await dash("GET", `/api/towns/${town.id}/config`);
      assert.equal(shown.body.github_cli_pat, "****CDEF", "and it still reads back");
    });

    it("no dashboard response ever carried a container token or a secret", async () => {
      const inside = (await ctx.control.town(town.id)).body;
      for (const text of seen) {
        assert.ok(!text.includes(inside.token), "current container token");
        assert.ok(!/eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/.test(text), "any JWT at all");
        assert.ok(!text.includes(PAT), "the PAT");
        assert.ok(!text.includes("on-secret-value-1234"), "an env value");
      }
      assert.ok(seen.length >= 10);
    });
  });
}

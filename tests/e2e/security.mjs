// Issue 9, end to end: container tokens that rotation revokes, legacy agent tokens held to their
// own agent, a town deleted while its container starts, quotas, reads that create nothing, a
// rig index that converges, settings refused at start, and a restarted container that gets its
// env back.
import { describe, it, before } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, statSync } from "node:fs";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { containerToken } from "../../scripts/lib/jwt.mjs";
import { secrets, startWorker, makePersistDir, removePersistDir } from "./harness.mjs";
import { freshUser, tokenFor, createTown, createRig, agentTokenFor, internalKey, registerAgent, keepBusy } from "./fixtures.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const claims = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
/** CONTAINER_TOKEN_GRACE_MS in all.test.mjs, plus a margin. */
const PAST_GRACE_MS = 3_000;
const NIL = "00000000-0000-4000-8000-000000000000";

export default function security(ctx) {
  const as = (token, method, path, body) => ctx.call(method, path, { token, body });
  const internal = (path) => ctx.call("GET", path, { headers: { "x-internal-api-key": internalKey() } });

  describe("container tokens: generations and rotation", () => {
    const user = freshUser("rot");
    const dash = (method, path, body) => as(tokenFor(user), method, path, body);
    let town;
    let rig;
    let polecat;
    let legacyAgent;
    const held = async () => (await ctx.control.town(town.id)).body.token;
    const mayor = (t) => as(t, "GET", `/api/mayor/${town.id}/tools/rigs`);
    // A container route that admits the town's token, then wants the mayor session's key too:
    // `forbidden` means the token itself was accepted.
    const admitted = async (t) => {
      const res = await mayor(t);
      return res.status === 403 && res.body.error.code === "forbidden" ? true : res.text;
    };
    const heartbeat = (t, agent = polecat.id) => as(t, "POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${agent}/heartbeat`);
    const refresh = (t) => as(t, "POST", `/api/towns/${town.id}/refresh-container-token`);

    before(async () => {
      town = await createTown(ctx.call, user, "Rotating");
      rig = await createRig(ctx.call, user, town.id, "app");
      polecat = await registerAgent(ctx.call, town.id, rig.id, { name: "polecat-r" });
      legacyAgent = await registerAgent(ctx.call, town.id, rig.id, { name: "legacy-1" });
    });

    it("before the container ever ran, no container token works and refresh answers 409", async () => {
      const forged = containerToken(secrets.GASTOWN_JWT_SECRET, town.id, user, { extra: { gen: 1 } });
      const res = await refresh(forged);
      assert.equal(res.status, 409, res.text);
      assert.equal((await mayor(forged)).status, 401);
    });

    it("tokens carry the generation; the container's own refresh keeps it", async () => {
      assert.equal((await dash("POST", `/api/towns/${town.id}/container/start`)).status, 200);
      const t1 = await held();
      assert.equal(claims(t1).gen, 1);
      const fresh = await refresh(t1);
      assert.equal(fresh.status, 200, fresh.text);
      assert.equal(claims(fresh.body.token).gen, 1);
      assert.equal(await admitted(fresh.body.token), true);
    });

    it("a token without a generation, or of a generation not yet minted, is refused", async () => {
      const none = containerToken(secrets.GASTOWN_JWT_SECRET, town.id, user);
      const ahead = containerToken(secrets.GASTOWN_JWT_SECRET, town.id, user, { extra: { gen: 99 } });
      for (const t of [none, ahead]) {
        const res = await mayor(t);
        assert.equal(res.status, 401, res.text);
        assert.equal(res.body.error.code, "token_revoked");
      }
    });

    it("the owner's rotation revokes the old generation after the grace, on every container route", async () => {
      const old = await held();
      const rotated = await dash("POST", `/api/towns/${town.id}/container/refresh-token`);
      assert.equal(rotated.status, 200, rotated.text);
      const current = await held();
      assert.equal(claims(current).gen, claims(old).gen + 1, "the container holds the new generation");
      assert.equal(await admitted(old), true, "the previous generation works within the grace");
      await sleep(PAST_GRACE_MS);
      for (const [name, call] of [["mayor", mayor], ["heartbeat", heartbeat], ["refresh", refresh]]) {
        const res = await call(old);
        assert.equal(res.status, 401, `${name}: ${res.text}`);
        assert.equal(res.body.error.code, "token_revoked", name);
      }
      assert.equal(await admitted(current), true);
      assert.equal((await heartbeat(current)).status, 200);
      assert.equal((await refresh(current)).status, 200);
    });

    it("a token two generations old is refused at once", async () => {
      const before = await held();
      assert.equal((await dash("POST", `/api/towns/${town.id}/container/refresh-token`)).status, 200);
      assert.equal((await dash("POST", `/api/towns/${town.id}/container/refresh-token`)).status, 200);
      assert.equal(claims(await held()).gen, claims(before).gen + 2);
      const res = await mayor(before);
      assert.equal(res.status, 401);
    });

    it("legacy agent tokens: their own agent's routes only, never a container token, revoked by rotation", async () => {
      const legacy = agentTokenFor(town.id, user, { rigId: rig.id, agentId: legacyAgent.id });
      assert.equal((await as(legacy, "POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${legacyAgent.id}/heartbeat`)).status, 200);
      assert.equal((await as(legacy, "POST", `/api/towns/${town.id}/refresh-container-token`)).status, 403, "no exchange for a town-wide token");
      assert.equal((await as(legacy, "GET", `/api/mayor/${town.id}/tools/rigs`)).status, 403, "no town-wide route");
      const ghost = agentTokenFor(town.id, user, { rigId: NIL, agentId: "ghost" });
      assert.equal((await as(ghost, "POST", `/api/towns/${town.id}/rigs/${NIL}/agents/ghost/heartbeat`)).status, 404, "its rig must exist");
      // iat has whole seconds: let a second pass so the legacy token is older than the rotation.
      await sleep(1_100);
      assert.equal((await dash("POST", `/api/towns/${town.id}/container/refresh-token`)).status, 200);
      await sleep(PAST_GRACE_MS);
      const res = await as(legacy, "POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${legacyAgent.id}/heartbeat`);
      assert.equal(res.status, 401, res.text);
      assert.equal(res.body.error.code, "token_revoked");
    });
  });

  describe("deleting a town while its container starts", () => {
    it("never answers 5xx and leaves no container state behind", async () => {
      const user = freshUser("race");
      for (let i = 0; i < 6; i++) {
        const town = await createTown(ctx.call, user, `Race ${i}`);
        const start = as(tokenFor(user), "POST", `/api/towns/${town.id}/container/start`);
        // Half the rounds let the start get a head start.
        if (i % 2) await sleep(5);
        const del = as(tokenFor(user), "DELETE", `/api/users/${user}/towns/${town.id}`);
        const [s, d] = await Promise.all([start, del]);
        assert.ok(s.status < 500, `start ${i}: ${s.status} ${s.text}`);
        assert.ok([200, 404].includes(s.status), `start ${i}: ${s.status} ${s.text}`);
        assert.equal(d.status, 200, `delete ${i}: ${d.text}`);
        assert.equal((await as(tokenFor(user), "GET", `/api/towns/${town.id}`)).status, 404);
        assert.equal((await as(tokenFor(user), "POST", `/api/towns/${town.id}/container/start`)).status, 404, "a later start");
        await sleep(100);
        assert.equal((await ctx.control.town(town.id)).status, 404, `round ${i}: the container holds nothing of the town`);
      }
    });
  });

  describe("quotas", () => {
    it("towns per owner", async () => {
      const user = freshUser("qt");
      const towns = [];
      for (let i = 0; i < 20; i++) towns.push(await createTown(ctx.call, user, `Q${i}`));
      const over = await as(tokenFor(user), "POST", `/api/users/${user}/towns`, { name: "one too many" });
      assert.equal(over.status, 409, over.text);
      assert.equal(over.body.error.code, "quota_exceeded");
      assert.equal(over.body.error.field, "MAX_TOWNS_PER_OWNER");
      const list = await as(tokenFor(user), "GET", `/api/users/${user}/towns`);
      assert.equal(list.body.length, 20, "nothing was written");
      assert.equal((await as(tokenFor(user), "DELETE", `/api/users/${user}/towns/${towns[0].id}`)).status, 200);
      assert.equal((await as(tokenFor(user), "POST", `/api/users/${user}/towns`, { name: "room again" })).status, 201);
    });

    it("rigs per town", async () => {
      const user = freshUser("qr");
      const town = await createTown(ctx.call, user, "Rigs");
      for (let i = 0; i < 20; i++) await createRig(ctx.call, user, town.id, `r${i}`);
      const over = await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "r20", git_url: "https://github.com/acme/r20.git" });
      assert.equal(over.status, 409, over.text);
      assert.equal(over.body.error.field, "MAX_RIGS_PER_TOWN");
      assert.equal((await as(tokenFor(user), "GET", `/api/towns/${town.id}/rigs`)).body.length, 20);
    });

    it("agents per town; heartbeats only from agents the town registered, from their own rig", async () => {
      const user = freshUser("qa");
      const town = await createTown(ctx.call, user, "Agents");
      const rig = await createRig(ctx.call, user, town.id, "app");
      const other = await createRig(ctx.call, user, town.id, "other");
      assert.equal((await as(tokenFor(user), "POST", `/api/towns/${town.id}/container/start`)).status, 200);
      const t = (await ctx.control.town(town.id)).body.token;
      const beat = (agent, rigId = rig.id) => as(t, "POST", `/api/towns/${town.id}/rigs/${rigId}/agents/${agent}/heartbeat`);
      for (const made_up of ["agent-0", "agent-1", crypto.randomUUID()]) {
        const res = await beat(made_up);
        assert.equal(res.status, 404, `${made_up}: ${res.text}`);
      }
      const mayor = await as(tokenFor(user), "POST", `/api/towns/${town.id}/mayor/ensure`);
      assert.equal(mayor.status, 200, mayor.text);
      const agents = [];
      for (let i = 0; i < 19; i++) agents.push(await registerAgent(ctx.call, town.id, rig.id, { name: `agent-${i}` }));
      const over = await ctx.call("POST", `/api/internal/towns/${town.id}/agents`, {
        headers: { "x-internal-api-key": internalKey() },
        body: { role: "polecat", rig_id: rig.id, name: "agent-20" },
      });
      assert.equal(over.status, 409, over.text);
      assert.equal(over.body.error.field, "MAX_AGENTS_PER_TOWN");
      const listed = await as(tokenFor(user), "GET", `/api/towns/${town.id}/agents`);
      assert.equal(listed.body.length, 20, "nothing was written past the quota");
      assert.equal((await beat(agents[3].id)).status, 200, "a registered agent reports in");
      assert.equal((await beat(agents[3].id, other.id)).status, 404, "not from another rig");
      assert.equal((await beat(mayor.body.id, other.id)).status, 200, "the mayor belongs to no rig");
      const seen = (await as(tokenFor(user), "GET", `/api/towns/${town.id}/agents`)).body.find((a) => a.id === agents[3].id);
      assert.ok(seen.last_activity_at, "the heartbeat is recorded");
    });

    it("reading towns nobody created gives their Durable Objects no storage", async () => {
      // Each DO's SQLite file in the persist dir; workerd (Miniflare) opens one for any DO that
      // is addressed, with only its own bookkeeping in it. None may hold a table of ours.
      const files = () => {
        const out = [];
        const walk = (dir) => {
          for (const name of readdirSync(dir)) {
            const path = join(dir, name);
            if (statSync(path).isDirectory()) walk(path);
            else if (name.endsWith(".sqlite") && name !== "metadata.sqlite") out.push(path);
          }
        };
        walk(ctx.persistDir);
        return out.filter((f) => f.includes("TownDO"));
      };
      const tables = (file) => {
        const db = new DatabaseSync(file, { readOnly: true });
        try {
          return db.prepare("SELECT name FROM sqlite_master").all().map((r) => r.name);
        } finally {
          db.close();
        }
      };
      const before = new Set(files());
      assert.ok(before.size > 0, "the persist dir holds TownDO files");
      assert.ok([...before].some((f) => tables(f).includes("_schema_migrations")), "a real town's file holds our schema");
      const user = freshUser("probe");
      for (let i = 0; i < 10; i++) {
        const id = crypto.randomUUID();
        assert.equal((await as(tokenFor(user), "GET", `/api/towns/${id}`)).status, 404);
        assert.equal((await as(tokenFor(user), "GET", `/api/towns/${id}/config`)).status, 404);
        assert.equal((await internal(`/api/internal/towns/${id}/health`)).status, 404);
      }
      const created = files().filter((f) => !before.has(f));
      for (const file of created) {
        const ours = tables(file).filter((t) => !t.startsWith("__miniflare") && !t.startsWith("_cf_"));
        assert.deepEqual(ours, [], `${file}: a read created tables`);
      }
    });
  });

  describe("the rig index converges", () => {
    it("a rig created while its town is deleted is never found afterwards", async () => {
      const user = freshUser("idx");
      for (let i = 0; i < 4; i++) {
        const town = await createTown(ctx.call, user, `Index ${i}`);
        const create = as(tokenFor(user), "POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "racer", git_url: "https://github.com/acme/racer.git" });
        const del = as(tokenFor(user), "DELETE", `/api/users/${user}/towns/${town.id}`);
        const [c, d] = await Promise.all([create, del]);
        assert.ok(c.status < 500 && d.status < 500, `${c.status} ${c.text} / ${d.status} ${d.text}`);
        if (c.status === 201) {
          const found = await internal(`/api/internal/rigs/${c.body.id}`);
          assert.equal(found.status, 404, `round ${i}: ${found.text}`);
        }
      }
    });
  });

  describe("a restarted container gets its env back", () => {
    it("the next token push of a busy town re-sends the stored env", async (t) => {
      const user = freshUser("restart");
      const town = await createTown(ctx.call, user, "Restarting");
      t.after(await keepBusy(ctx.call, town.id, user, (await createRig(ctx.call, user, town.id, "busy")).id));
      const patch = await as(tokenFor(user), "PATCH", `/api/towns/${town.id}/config`, { env_vars: { RESTART_PROBE: "still-here" } });
      assert.equal(patch.status, 200, patch.text);
      assert.equal((await as(tokenFor(user), "POST", `/api/towns/${town.id}/container/start`)).status, 200);
      assert.equal((await ctx.control.town(town.id)).body.env.RESTART_PROBE, "still-here");
      await ctx.control.stopTown(town.id);
      assert.equal((await ctx.control.town(town.id)).status, 404, "the container lost everything");
      const deadline = Date.now() + 15_000;
      let state;
      do {
        await sleep(250);
        state = await ctx.control.town(town.id);
      } while ((state.status !== 200 || state.body.env.RESTART_PROBE === undefined) && Date.now() < deadline);
      assert.equal(state.status, 200, "the alarm pushed a token again");
      assert.equal(state.body.env.RESTART_PROBE, "still-here", "and the env came with it");
      assert.ok(state.body.token, "with a token");
    });
  });

  describe("settings the worker refuses to run with", () => {
    it("a token refresh slower than the token lifetime refuses every request", { timeout: 120_000 }, async () => {
      const persistDir = makePersistDir();
      const worker = await startWorker({
        persistDir,
        vars: { CONTAINER_TOKEN_REFRESH_MS: String(8 * 3600 * 1000) },
        readyStatus: 500,
      });
      try {
        const res = await fetch(`${worker.url}/health`);
        assert.equal(res.status, 500);
        const body = await res.json();
        assert.equal(body.error.code, "internal_error");
        assert.ok(!JSON.stringify(body).includes("CONTAINER_TOKEN_REFRESH_MS"), "the reason goes to the log only");
        const user = freshUser("refused");
        const res2 = await fetch(`${worker.url}/api/users/${user}/towns`, { headers: { authorization: `Bearer ${tokenFor(user)}` } });
        assert.equal(res2.status, 500, "every route");
      } finally {
        await worker.stop();
        removePersistDir(persistDir);
      }
    });
  });
}

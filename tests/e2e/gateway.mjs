// Issue 10, end to end: gateway (sandbox) tokens minted per town with exact claims, the two
// refresh endpoints and their matrix, town stop/start, the two self-refresh paths (the town's
// alarm, and the control server's own timer writing .env.gateway), model settings files, and
// the stand-in gateway that bills the token's user and org.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { sign, containerToken } from "../../scripts/lib/jwt.mjs";
import { secrets, sleep, startWorker, startControlServer, startGateway, makePersistDir, removePersistDir, migrateD1, client, freePort } from "./harness.mjs";
import { freshUser, tokenFor, createTown, createRig, internalKey, sandboxTokenFor, containerTokenFor, keepBusy } from "./fixtures.mjs";

const claims = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
const DAY = 24 * 3600;
const NIL = "00000000-0000-4000-8000-000000000000";
const mask = (s) => `****${s.slice(-4)}`;

/** Waits until `probe()` returns a truthy value, or fails after `ms`. */
async function until(what, probe, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

export default function gateway(ctx) {
  const as = (token, method, path, body) => ctx.call(method, path, { token, body });
  const internalPost = (path, key = internalKey()) => ctx.call("POST", path, { headers: key ? { "x-internal-api-key": key } : {} });
  const health = async (call, townId) =>
    (await call("GET", `/api/internal/towns/${townId}/health`, { headers: { "x-internal-api-key": internalKey() } })).body;

  describe("gateway tokens: minting", () => {
    it("a personal town's token: exactly the six claims, 24 h, no org, kept masked, in the env as KILO_JWT", async () => {
      const user = freshUser("gw");
      const town = await createTown(ctx.call, user, "Gateway");
      const config = await as(tokenFor(user), "GET", `/api/towns/${town.id}/config`);
      assert.match(config.body.kilocode_token, /^\*\*\*\*.{4}$/, "minted at creation, shown masked");
      const before = Math.floor(Date.now() / 1000);
      assert.equal((await as(tokenFor(user), "POST", `/api/towns/${town.id}/container/start`)).status, 200);
      const env = (await ctx.control.town(town.id)).body.env;
      const jwt = env.KILO_JWT;
      assert.ok(jwt, "the container env carries KILO_JWT");
      assert.ok(!("KILOCODE_TOKEN" in env), "no alias");
      const c = claims(jwt);
      assert.deepEqual(Object.keys(c).sort(), ["exp", "iat", "organization_id", "sub", "town_id", "type"]);
      assert.deepEqual([c.sub, c.type, c.town_id, c.organization_id], [user, "gastown_sandbox", town.id, null]);
      assert.equal(c.exp - c.iat, DAY);
      assert.ok(c.iat >= before - 1 && c.iat <= before + 5);
      const header = JSON.parse(Buffer.from(jwt.split(".")[0], "base64url").toString());
      assert.equal(header.alg, "HS256");
      const shown = (await as(tokenFor(user), "GET", `/api/towns/${town.id}/config`)).text;
      assert.ok(shown.includes(mask(jwt)), "the config shows the current token's mask");
      assert.ok(!shown.includes(jwt));
      // The town mints it; a user cannot set it.
      const set = await as(tokenFor(user), "PATCH", `/api/towns/${town.id}/config`, { kilocode_token: "my-own-token-123456" });
      assert.equal(set.status, 422);
      assert.equal(set.body.error.field, "kilocode_token");
      const same = await as(tokenFor(user), "PATCH", `/api/towns/${town.id}/config`, { kilocode_token: mask(jwt) });
      assert.equal(same.status, 200, "its own mask sent back is accepted and changes nothing");
    });

    it("an org town's token bills the creator and names the org", async () => {
      const org = `org-${freshUser("gwo")}`;
      const carol = freshUser("carol");
      const tok = tokenFor(carol, { orgs: [{ orgId: org, role: "member" }] });
      const created = await as(tok, "POST", `/api/orgs/${org}/towns`, { name: "Org gateway" });
      assert.equal(created.status, 201);
      const res = await internalPost(`/api/internal/towns/${created.body.id}/sandbox-token`);
      assert.equal(res.status, 200, res.text);
      const c = claims(res.body.token);
      assert.deepEqual([c.sub, c.town_id, c.organization_id], [carol, created.body.id, org]);
      assert.equal(res.body.expires_at, c.exp);
      assert.deepEqual(Object.keys(res.body).sort(), ["expires_at", "token"]);
    });
  });

  describe("gateway tokens: the refresh matrix", () => {
    const user = freshUser("gwm");
    const dash = (method, path, body) => as(tokenFor(user), method, path, body);
    const towns = {};
    const tokens = {};

    before(async () => {
      for (const state of ["active", "stopped", "destroyed"]) {
        const town = await createTown(ctx.call, user, `Matrix ${state}`);
        assert.equal((await dash("POST", `/api/towns/${town.id}/container/start`)).status, 200);
        tokens[state] = (await ctx.control.town(town.id)).body.token;
        towns[state] = town.id;
      }
      assert.equal((await dash("POST", `/api/towns/${towns.stopped}/stop`)).status, 200);
      assert.equal((await dash("DELETE", `/api/users/${user}/towns/${towns.destroyed}`)).status, 200);
      towns.unknown = crypto.randomUUID();
      tokens.unknown = containerToken(secrets.GASTOWN_JWT_SECRET, towns.unknown, user, { extra: { gen: 1 } });
    });

    it("every town state × every credential, on both routes", async () => {
      const want = { active: 200, stopped: 409, destroyed: 404, unknown: 404 };
      let cells = 0;
      for (const state of Object.keys(want)) {
        const id = towns[state];
        const other = state === "active" ? tokens.stopped : tokens.active;
        const creds = {
          internal: { headers: { "x-internal-api-key": internalKey() } },
          own_container: { token: tokens[state] },
          other_container: { token: other },
          user: { token: tokenFor(user) },
          sandbox: { token: sandboxTokenFor(user, id) },
          nothing: {},
        };
        for (const [route, path] of [["internal", `/api/internal/towns/${id}/sandbox-token`], ["container", `/api/towns/${id}/sandbox-token`]]) {
          for (const [cred, opts] of Object.entries(creds)) {
            const res = await ctx.call("POST", path, opts);
            let expected;
            if (route === "internal") expected = cred === "internal" ? want[state] : 401;
            else if (cred === "own_container") expected = want[state];
            // Another town's valid container token is the contract's one scoping refusal (403).
            else if (cred === "other_container") expected = 403;
            else expected = 401;
            assert.equal(res.status, expected, `${route} route, ${state} town, ${cred}: ${res.text}`);
            if (expected === 409) assert.equal(res.body.error.code, "town_stopped");
            if (expected === 200) {
              const c = claims(res.body.token);
              assert.deepEqual([c.sub, c.town_id, c.type], [user, id, "gastown_sandbox"]);
              assert.equal(res.body.expires_at - c.iat, DAY);
            }
            if (expected !== 200) assert.ok(!/eyJ/.test(res.text), "no token in an error");
            cells++;
          }
        }
      }
      assert.equal(cells, 4 * 2 * 6);
    });

    it("a sandbox token is refused on every route of the worker", async () => {
      const doc = (await ctx.call("GET", "/openapi.json")).body;
      const town = await createTown(ctx.call, user, "Sandbox probe");
      const sandbox = (await internalPost(`/api/internal/towns/${town.id}/sandbox-token`)).body.token;
      const ids = { userId: user, orgId: "o1", townId: town.id, rigId: NIL, agentId: "a1" };
      let checked = 0;
      for (const [path, ops] of Object.entries(doc.paths)) {
        for (const [method, op] of Object.entries(ops)) {
          if (op["x-principal"] === "public") continue;
          const url = path.replace(/\{(\w+)\}/g, (_, name) => ids[name]);
          const res = await ctx.call(method.toUpperCase(), url, { token: sandbox, body: method === "get" || method === "delete" ? undefined : {} });
          assert.equal(res.status, 401, `${method.toUpperCase()} ${path}: ${res.status} ${res.text}`);
          checked++;
        }
      }
      assert.ok(checked >= 25, `${checked} routes`);
    });
  });

  describe("town stop and start", () => {
    const org = `org-${freshUser("life")}`;
    const carol = freshUser("carol"); // member, the creator
    const dave = freshUser("dave"); // member
    const olga = freshUser("olga"); // org owner
    const tok = (u, role = "member") => tokenFor(u, { orgs: [{ orgId: org, role }] });
    let town;

    before(async () => {
      const created = await as(tok(carol), "POST", `/api/orgs/${org}/towns`, { name: "Lifecycle" });
      assert.equal(created.status, 201);
      town = created.body;
      assert.equal((await as(tok(carol), "POST", `/api/towns/${town.id}/container/start`)).status, 200);
    });

    it("members who did not create the town get 403; the creator and the org owner may", async () => {
      for (const path of ["stop", "start"]) {
        const res = await as(tok(dave), "POST", `/api/towns/${town.id}/${path}`);
        assert.equal(res.status, 403, `${path}: ${res.text}`);
      }
      const stranger = await as(tokenFor(freshUser("s")), "POST", `/api/towns/${town.id}/stop`);
      assert.ok([403, 404].includes(stranger.status), stranger.text);
      assert.equal((await as(tok(carol), "GET", `/api/towns/${town.id}`)).body.status, "active", "nothing changed");
    });

    it("stop: status shown everywhere, container stopped, tokens rotated, no alarm work; idempotent", async () => {
      const held = (await ctx.control.town(town.id)).body.token;
      const first = await as(tok(carol), "POST", `/api/towns/${town.id}/stop`);
      assert.equal(first.status, 200, first.text);
      assert.equal(first.body.status, "stopped");
      const again = await as(tok(olga, "owner"), "POST", `/api/towns/${town.id}/stop`);
      assert.equal(again.status, 200, "idempotent");
      assert.equal((await as(tok(dave), "GET", `/api/towns/${town.id}`)).body.status, "stopped");
      const listed = (await as(tok(dave), "GET", `/api/orgs/${org}/towns`)).body.find((t) => t.id === town.id);
      assert.equal(listed.status, "stopped", "the org's list shows it");
      assert.equal((await as(tok(dave), "GET", `/api/orgs/${org}/towns/${town.id}`)).body.status, "stopped");
      assert.equal((await as(tok(carol), "GET", `/api/towns/${town.id}/container`)).body.state, "stopped");
      assert.equal((await ctx.control.town(town.id)).status, 404, "the container holds nothing of the town");
      const h1 = await health(ctx.call, town.id);
      assert.equal(h1.status, "stopped");
      assert.equal(h1.alarm_at, null, "no alarm");
      await sleep(2_500);
      const h2 = await health(ctx.call, town.id);
      assert.equal(h2.alarm_runs, h1.alarm_runs, "no tick ran");
      assert.equal(h2.token_refreshes, h1.token_refreshes, "no token pushed");
      assert.equal((await as(held, "POST", `/api/towns/${town.id}/refresh-container-token`)).status, 409, "no refresh while stopped");
      assert.equal((await as(held, "GET", `/api/mayor/${town.id}/tools/rigs`)).status, 409, "container routes answer town_stopped");
      assert.equal((await as(tok(carol), "POST", `/api/towns/${town.id}/container/start`)).body.error.code, "town_stopped");
      const config = await as(tok(carol), "PATCH", `/api/towns/${town.id}/config`, { default_model: "kept-while-stopped" });
      assert.equal(config.status, 200, "rows are kept and config still changes");
    });

    it("start: fresh container and gateway tokens reach a new container before the loop runs; idempotent", async () => {
      const before = Math.floor(Date.now() / 1000);
      const res = await as(tok(olga, "owner"), "POST", `/api/towns/${town.id}/start`);
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.town.status, "active");
      assert.equal(res.body.container_started, true);
      const inside = (await ctx.control.town(town.id)).body;
      assert.ok(claims(inside.token).iat >= before, "a fresh container token");
      assert.ok(claims(inside.token).gen >= 2, "of the generation after the stop");
      assert.ok(claims(inside.env.KILO_JWT).iat >= before, "a fresh gateway token");
      assert.equal(inside.env.GASTOWN_DEFAULT_MODEL, "kept-while-stopped");
      const again = await as(tok(carol), "POST", `/api/towns/${town.id}/start`);
      assert.equal(again.status, 200);
      assert.equal(again.body.town.status, "active");
      assert.equal((await ctx.control.town(town.id)).body.token, inside.token, "a second start pushes nothing");
      const h = await until("the alarm to run again", async () => {
        const h = await health(ctx.call, town.id);
        return h.alarm_at && h.status === "active" ? h : null;
      });
      assert.ok(h.alarm_at > Date.now() - 5_000);
      const listed = (await as(tok(dave), "GET", `/api/orgs/${org}/towns`)).body.find((t) => t.id === town.id);
      assert.equal(listed.status, "active");
    });
  });

  describe("stop and start racing each other and a container start", () => {
    it("never a 5xx, and the container ends as the town's status says", async () => {
      const user = freshUser("lrace");
      const dash = (method, path) => as(tokenFor(user), method, path);
      for (let i = 0; i < 6; i++) {
        const town = await createTown(ctx.call, user, `Race ${i}`);
        assert.equal((await dash("POST", `/api/towns/${town.id}/container/start`)).status, 200);
        const calls = [dash("POST", `/api/towns/${town.id}/stop`), dash("POST", `/api/towns/${town.id}/container/start`), dash("POST", `/api/towns/${town.id}/start`)];
        if (i % 2) calls.reverse();
        for (const res of await Promise.all(calls)) {
          assert.ok([200, 409].includes(res.status), `round ${i}: ${res.status} ${res.text}`);
        }
        await sleep(200);
        const status = (await dash("GET", `/api/towns/${town.id}`)).body.status;
        const inside = await ctx.control.town(town.id);
        const container = (await dash("GET", `/api/towns/${town.id}/container`)).body.state;
        if (status === "stopped") {
          assert.equal(inside.status, 404, `round ${i}: a stopped town's container holds nothing`);
          assert.equal(container, "stopped", `round ${i}`);
        } else {
          assert.equal(inside.status, 200, `round ${i}: an active town whose container was started holds its token`);
        }
        assert.equal((await dash("POST", `/api/towns/${town.id}/start`)).status, 200, `round ${i}: the town can always be started again`);
        assert.equal((await ctx.control.town(town.id)).status, 200);
      }
    });
  });

  describe("model settings files", () => {
    const user = freshUser("models");
    const dash = (method, path, body) => as(tokenFor(user), method, path, body);
    let town;
    let r1;
    let r2;
    const file = (...parts) => {
      const path = join(ctx.control.workdir, town.id, ...parts, "settings", "config.json");
      return existsSync(path) ? JSON.parse(readFileSync(path, "utf8")) : null;
    };

    before(async () => {
      town = await createTown(ctx.call, user, "Models");
      r1 = await createRig(ctx.call, user, town.id, "one");
      r2 = await createRig(ctx.call, user, town.id, "two");
      assert.equal((await dash("POST", `/api/towns/${town.id}/container/start`)).status, 200);
    });

    it("the effective model per role and rig reaches the town and rig files", async () => {
      const res = await dash("PATCH", `/api/towns/${town.id}/config`, {
        default_model: "town-default",
        role_models: { polecat: "town-polecat" },
        small_model: "small",
        rig_overrides: { [r1.id]: { role_models: { polecat: "rig-polecat" } }, [r2.id]: { default_model: "rig-default" } },
      });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(file(), {
        role_agents: { mayor: { model: "town-default" }, polecat: { model: "town-polecat" }, refinery: { model: "town-default" } },
        small_model: "small",
      });
      assert.deepEqual(file(r1.id).role_agents, { mayor: { model: "town-default" }, polecat: { model: "rig-polecat" }, refinery: { model: "town-default" } });
      assert.deepEqual(file(r2.id).role_agents, { mayor: { model: "rig-default" }, polecat: { model: "rig-default" }, refinery: { model: "rig-default" } });
    });

    it("a cleared setting disappears from the files; a deleted rig's file goes", async () => {
      const res = await dash("PATCH", `/api/towns/${town.id}/config`, { default_model: null, small_model: null, rig_overrides: { [r2.id]: null } });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(file(), { role_agents: { polecat: { model: "town-polecat" } } });
      assert.deepEqual(file(r2.id), { role_agents: { polecat: { model: "town-polecat" } } });
      assert.equal((await dash("DELETE", `/api/users/${user}/rigs/${r2.id}`)).status, 200);
      assert.equal(file(r2.id), null, "the deleted rig's settings file is removed");
      assert.deepEqual(file(r1.id).role_agents, { polecat: { model: "rig-polecat" } });
      const r3 = await createRig(ctx.call, user, town.id, "three");
      assert.deepEqual(file(r3.id), { role_agents: { polecat: { model: "town-polecat" } } }, "a new rig gets its file");
    });
  });

  describe("self-refresh, two independent paths", () => {
    const started = [];
    after(async () => {
      for (const s of started.reverse()) await s();
    });

    /** A second worker on its own storage, with `vars` and a control server of its own if asked. */
    async function side({ vars = {}, controlArgs } = {}) {
      const persistDir = makePersistDir();
      migrateD1(persistDir);
      const port = await freePort();
      const control = controlArgs ? await startControlServer({ args: controlArgs(`http://127.0.0.1:${port}`) }) : ctx.control;
      const worker = await startWorker({ persistDir, port, vars: { ...ctx.vars(), ...vars, CONTAINER_CONTROL_URL: control.url } });
      started.push(async () => {
        await worker.stop();
        if (control !== ctx.control) control.stop();
        removePersistDir(persistDir);
      });
      return { call: client(() => worker.url), control };
    }

    it("(a) the town's alarm re-mints the gateway token near expiry, and retries after a refused push", async (t) => {
      // Re-mint when less than 24 h - 4 s remain: every few seconds.
      const { call } = await side({ vars: { GATEWAY_TOKEN_REFRESH_BEFORE_MS: String(DAY * 1000 - 4_000) } });
      const user = freshUser("alarm");
      const town = await createTown(call, user, "Alarm gateway");
      // Only a busy town's alarm pushes (an idle one pushes nothing: work.mjs).
      t.after(await keepBusy(call, town.id, user, (await createRig(call, user, town.id, "busy")).id));
      assert.equal((await call("POST", `/api/towns/${town.id}/container/start`, { token: tokenFor(user) })).status, 200);
      const first = (await ctx.control.town(town.id)).body.env.KILO_JWT;
      const second = await until("a re-minted gateway token", async () => {
        const jwt = (await ctx.control.town(town.id)).body.env.KILO_JWT;
        return jwt !== first ? jwt : null;
      });
      assert.ok(claims(second).iat > claims(first).iat);
      const h = await until("the bookkeeping", async () => {
        const h = await health(call, town.id);
        return h.gateway_refreshes >= 1 ? h : null;
      });
      assert.ok(h.gateway_token_expires_at >= claims(second).exp);
      // The container refuses env pushes: the alarm keeps trying, the recorded expiry stays.
      await ctx.control.fail({ sync_config: true });
      try {
        const failing = await until("a refused push", async () => {
          const h = await health(call, town.id);
          return h.gateway_refresh_failures >= 2 ? h : null;
        });
        await sleep(1_500);
        const still = await health(call, town.id);
        assert.equal(still.gateway_token_expires_at, failing.gateway_token_expires_at, "no bookkeeping for a refused push");
        assert.ok(still.gateway_refresh_failures > failing.gateway_refresh_failures, "retried on later ticks");
      } finally {
        await ctx.control.fail({});
      }
      const held = (await ctx.control.town(town.id)).body.env.KILO_JWT;
      const recovered = await until("a push after the container recovers", async () => {
        const jwt = (await ctx.control.town(town.id)).body.env.KILO_JWT;
        return jwt !== held ? jwt : null;
      });
      const h2 = await until("the bookkeeping to move again", async () => {
        const h = await health(call, town.id);
        return h.gateway_token_expires_at >= claims(recovered).exp ? h : null;
      });
      assert.ok(h2.gateway_refreshes > h.gateway_refreshes);
    });

    it("(b) the control server refreshes on its own timer and rewrites .env.gateway", async () => {
      const { call, control } = await side({ controlArgs: (workerUrl) => ["--worker-url", workerUrl, "--gateway-refresh-ms", "1000"] });
      const user = freshUser("cron");
      const town = await createTown(call, user, "Cron gateway");
      assert.equal((await call("POST", `/api/towns/${town.id}/container/start`, { token: tokenFor(user) })).status, 200);
      const envFile = join(control.workdir, town.id, ".env.gateway");
      const pushed = (await control.town(town.id)).body.env.KILO_JWT;
      assert.equal(readFileSync(envFile, "utf8"), `KILO_JWT=${pushed}\n`, "the pushed token is in the file first");
      assert.equal(statSync(envFile).mode & 0o777, 0o600);
      const line = await until("the control server's own refresh", () => {
        const text = readFileSync(envFile, "utf8");
        return text !== `KILO_JWT=${pushed}\n` ? text : null;
      });
      const [, fresh] = line.trim().split("=");
      const c = claims(fresh);
      assert.deepEqual([c.sub, c.town_id, c.type], [user, town.id, "gastown_sandbox"]);
      assert.ok(c.iat >= claims(pushed).iat);
      const h = await health(call, town.id);
      assert.equal(h.gateway_refreshes, 0, "the alarm pushed nothing: this path alone refreshed it");
      // The town records the expiry of the token the container fetched itself.
      await until("the recorded expiry", async () => (await health(call, town.id)).gateway_token_expires_at >= c.exp);
      const inside = (await control.town(town.id)).body;
      assert.ok(inside.gateway_refreshes >= 1, JSON.stringify({ ...inside, env: undefined, token: undefined }));
      // A stopped town gives no token: the server keeps its file and counts the failure.
      assert.equal((await call("POST", `/api/towns/${town.id}/stop`, { token: tokenFor(user) })).status, 200);
    });
  });

  describe("agents the town knows", () => {
    it("exactly one mayor, also under concurrent ensures; members may list and ensure", async () => {
      const user = freshUser("mayor");
      const town = await createTown(ctx.call, user, "Mayors");
      const all = await Promise.all(Array.from({ length: 6 }, () => as(tokenFor(user), "POST", `/api/towns/${town.id}/mayor/ensure`)));
      for (const res of all) assert.equal(res.status, 200, res.text);
      assert.equal(new Set(all.map((r) => r.body.id)).size, 1, "one id for every caller");
      const mayor = all[0].body;
      assert.deepEqual([mayor.role, mayor.rig_id, mayor.status, mayor.dispatch_attempts], ["mayor", null, "idle", 0]);
      const list = await as(tokenFor(user), "GET", `/api/towns/${town.id}/agents`);
      assert.equal(list.status, 200);
      assert.deepEqual(list.body, [mayor]);
      assert.equal((await as(tokenFor(freshUser("x")), "GET", `/api/towns/${town.id}/agents`)).status, 403);
      assert.equal((await as(tokenFor(user), "GET", `/api/towns/${NIL}/agents`)).status, 404);
    });
  });

  describe("the stand-in gateway", () => {
    let gw;
    before(async () => {
      gw = await startGateway();
    });
    after(() => gw?.stop());

    const chat = (token, body = { model: "anthropic/claude-sonnet", messages: [{ role: "user", content: "hello there" }] }) =>
      fetch(`${gw.url}/api/gateway/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify(body),
      });
    const usage = async () => (await (await fetch(`${gw.url}/debug/usage`)).json()).calls;

    it("accepts a freshly minted token and bills its user, and its org for org towns", async () => {
      const user = freshUser("bill");
      const town = await createTown(ctx.call, user, "Billing");
      const personal = (await internalPost(`/api/internal/towns/${town.id}/sandbox-token`)).body.token;
      const res = await chat(personal);
      assert.equal(res.status, 200);
      const body = await res.json();
      assert.equal(body.object, "chat.completion");
      assert.equal(body.model, "anthropic/claude-sonnet");
      assert.equal(body.choices[0].message.role, "assistant");
      const org = `org-${freshUser("billo")}`;
      const carol = freshUser("carol");
      const orgTown = (await as(tokenFor(carol, { orgs: [{ orgId: org, role: "member" }] }), "POST", `/api/orgs/${org}/towns`, { name: "Org billing" })).body;
      const orgToken = (await internalPost(`/api/internal/towns/${orgTown.id}/sandbox-token`)).body.token;
      assert.equal((await chat(orgToken)).status, 200);
      const calls = await usage();
      const mine = calls.filter((c) => c.town_id === town.id);
      assert.equal(mine.length, 1);
      assert.equal(mine[0].user_id, user);
      assert.equal(mine[0].organization_id, null);
      assert.ok(mine[0].prompt_tokens > 0);
      const theirs = calls.filter((c) => c.town_id === orgTown.id);
      assert.deepEqual([theirs[0].user_id, theirs[0].organization_id], [carol, org]);
    });

    it("refuses expired, forged, container, user and missing tokens, and bills nothing for them", async () => {
      const user = freshUser("nobill");
      const town = await createTown(ctx.call, user, "No billing");
      const now = Math.floor(Date.now() / 1000);
      const base = { sub: user, type: "gastown_sandbox", town_id: town.id, organization_id: null };
      const refused = {
        expired: sign({ ...base, iat: now - 25 * 3600, exp: now - 3600 }, secrets.NEXTAUTH_SECRET),
        forged: sign({ ...base, iat: now, exp: now + DAY }, "not-the-secret"),
        container: containerTokenFor(town.id, user),
        user: tokenFor(user),
        missing: undefined,
      };
      const before = (await usage()).length;
      for (const [name, token] of Object.entries(refused)) {
        const res = await chat(token);
        assert.equal(res.status, 401, name);
      }
      assert.equal((await usage()).length, before);
    });
  });
}

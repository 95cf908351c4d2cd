// Organisation towns and rigs, and the town routes, as a matrix:
// {org owner, org member (creator), org member, billing manager, owner of another org,
//  personal-town owner without orgs, other user} × every org and town route ×
// {own org, other org, town of another org, unknown ids}. Each cell asserts the exact status;
// each refused cell also asserts that nothing changed.
import { describe, it, before } from "node:test";
import assert from "node:assert/strict";
import { freshUser, tokenFor } from "./fixtures.mjs";

const UNKNOWN = "00000000-0000-4000-8000-000000000000";
let seq = 0;

export default function org(ctx) {
  describe("organisation towns, rigs and town routes", () => {
    const orgA = freshUser("orgA");
    const orgB = freshUser("orgB");
    const people = {
      alice: { id: freshUser("alice"), orgs: [{ orgId: orgA, role: "owner" }] },
      bob: { id: freshUser("bob"), orgs: [{ orgId: orgA, role: "member" }] },
      carol: { id: freshUser("carol"), orgs: [{ orgId: orgA, role: "member" }, { orgId: orgB, role: "billing_manager" }] },
      dave: { id: freshUser("dave"), orgs: [{ orgId: orgA, role: "billing_manager" }] },
      erin: { id: freshUser("erin"), orgs: [{ orgId: orgB, role: "owner" }] },
      frank: { id: freshUser("frank"), orgs: [] },
      gina: { id: freshUser("gina"), orgs: [{ orgId: "unrelated-org", role: "owner" }] },
    };
    const token = (who) => tokenFor(people[who].id, { orgs: people[who].orgs });
    const roleIn = (who, orgId) => people[who].orgs.find((m) => m.orgId === orgId)?.role;
    const as = (who, method, path, body) => ctx.call(method, path, { token: token(who), body });
    const w = {};

    async function orgTown(who, orgId, name) {
      const res = await as(who, "POST", `/api/orgs/${orgId}/towns`, { name });
      assert.equal(res.status, 201, res.text);
      return res.body;
    }
    async function orgRig(who, orgId, townId, name = `r${++seq}`) {
      const res = await as(who, "POST", `/api/orgs/${orgId}/rigs`, { town_id: townId, name, git_url: `https://github.com/acme/${name}` });
      assert.equal(res.status, 201, res.text);
      return res.body;
    }

    /** What a refused request could have changed, read with privileged tokens: both orgs' town
     *  lists, and the rigs and config of the three towns every cell aims at. */
    async function snapshot() {
      const reads = [
        ["alice", `/api/orgs/${orgA}/towns`],
        ["erin", `/api/orgs/${orgB}/towns`],
        ["alice", `/api/towns/${w.TA.id}/rigs`],
        ["alice", `/api/towns/${w.TA.id}/config`],
        ["erin", `/api/towns/${w.TB.id}/rigs`],
        ["erin", `/api/towns/${w.TB.id}/config`],
        ["frank", `/api/towns/${w.P.id}/rigs`],
        ["frank", `/api/towns/${w.P.id}/config`],
      ];
      const bodies = await Promise.all(reads.map(([who, path]) => as(who, "GET", path)));
      return bodies.map((r) => r.body);
    }

    before(async () => {
      w.TA = await orgTown("bob", orgA, "Shared");
      w.RA = await orgRig("bob", orgA, w.TA.id, "shared-repo");
      w.TB = await orgTown("erin", orgB, "Shared");
      w.RB = await orgRig("erin", orgB, w.TB.id, "shared-repo");
      const p = await ctx.call("POST", `/api/users/${people.frank.id}/towns`, { token: token("frank"), body: { name: "Mine" } });
      w.P = p.body;
      const secret = await as("bob", "PATCH", `/api/towns/${w.TA.id}/config`, { github_cli_pat: "ghp_orgsecret_0123456789ABCD", env_vars: { API_KEY: "sk-org-secret-value-9876" } });
      assert.equal(secret.status, 200, secret.text);
    });

    const orgRoutes = [
      { name: "create town", method: "POST", path: (t) => `/api/orgs/${t.org}/towns`, body: () => ({ name: `cell ${++seq}` }), ok: 201 },
      { name: "list towns", method: "GET", path: (t) => `/api/orgs/${t.org}/towns`, ok: 200 },
      { name: "get town", method: "GET", path: (t) => `/api/orgs/${t.org}/towns/${t.town}`, ok: 200, uses: "town" },
      { name: "delete town", method: "DELETE", path: (t) => `/api/orgs/${t.org}/towns/${t.town}`, ok: 200, uses: "town", ownerOnly: true },
      { name: "create rig", method: "POST", path: (t) => `/api/orgs/${t.org}/rigs`, body: (t) => ({ town_id: t.town, name: `cell${++seq}`, git_url: "https://github.com/acme/cell" }), ok: 201, uses: "town" },
      { name: "list rigs", method: "GET", path: (t) => `/api/orgs/${t.org}/towns/${t.town}/rigs`, ok: 200, uses: "town" },
      { name: "get rig", method: "GET", path: (t) => `/api/orgs/${t.org}/rigs/${t.rig}`, ok: 200, uses: "rig" },
      { name: "delete rig", method: "DELETE", path: (t) => `/api/orgs/${t.org}/rigs/${t.rig}`, ok: 200, uses: "rig", ownerOnly: true },
    ];
    const orgTargets = {
      "own org": () => ({ org: orgA, town: w.TA.id, rig: w.RA.id, exists: true }),
      "other org": () => ({ org: orgB, town: w.TB.id, rig: w.RB.id, exists: true }),
      "town of another org": () => ({ org: orgA, town: w.TB.id, rig: w.RB.id, exists: false }),
      "unknown ids": () => ({ org: orgA, town: UNKNOWN, rig: UNKNOWN, exists: false }),
    };

    function expectOrg(who, route, target) {
      const role = roleIn(who, target.org);
      if (role !== "owner" && role !== "member") return 403;
      if (route.ownerOnly && role !== "owner") return 403;
      if (route.uses && !target.exists) return 404;
      return route.ok;
    }

    let cells = 0;
    for (const who of Object.keys(people)) {
      it(`org routes as ${who}`, async () => {
        for (const route of orgRoutes) {
          for (const [targetName, makeTarget] of Object.entries(orgTargets)) {
            let target = makeTarget();
            const want = expectOrg(who, route, target);
            if (want < 300 && route.method === "DELETE") {
              // A successful delete needs its own victim.
              const owner = target.org === orgA ? "alice" : "erin";
              const town = await orgTown(owner, target.org, "victim");
              const rig = await orgRig(owner, target.org, town.id);
              target = { ...target, town: town.id, rig: rig.id };
            }
            const before = want >= 400 ? await snapshot() : null;
            const res = await as(who, route.method, route.path(target), route.body?.(target));
            assert.equal(res.status, want, `${who} ${route.name} @ ${targetName}: ${res.text}`);
            if (want >= 400) {
              assert.equal(typeof res.body?.error?.code, "string");
              assert.deepEqual(await snapshot(), before, `${who} ${route.name} @ ${targetName} changed state`);
            }
            cells++;
          }
        }
      });
    }

    const townRoutes = [
      { name: "get town", method: "GET", path: (id) => `/api/towns/${id}` },
      { name: "list rigs", method: "GET", path: (id) => `/api/towns/${id}/rigs` },
      { name: "get config", method: "GET", path: (id) => `/api/towns/${id}/config` },
      { name: "patch config", method: "PATCH", path: (id) => `/api/towns/${id}/config`, body: () => ({ default_model: `model-${++seq}` }), writes: true },
    ];
    const townTargets = {
      "own org town": () => ({ id: w.TA.id, org: orgA, creator: "bob" }),
      "other org town": () => ({ id: w.TB.id, org: orgB, creator: "erin" }),
      "personal town": () => ({ id: w.P.id, personalOwner: "frank" }),
      "unknown town": () => ({ id: UNKNOWN, unknown: true }),
    };
    function expectTown(who, route, t) {
      if (t.unknown) return 404;
      if (t.personalOwner) return who === t.personalOwner ? 200 : 403;
      const role = roleIn(who, t.org);
      if (role === "owner") return 200;
      if (role === "member") return route.writes && who !== t.creator ? 403 : 200;
      return 403;
    }

    for (const who of Object.keys(people)) {
      it(`town routes as ${who}`, async () => {
        for (const route of townRoutes) {
          for (const [targetName, makeTarget] of Object.entries(townTargets)) {
            const t = makeTarget();
            const want = expectTown(who, route, t);
            const before = want >= 400 ? await snapshot() : null;
            const res = await as(who, route.method, route.path(t.id), route.body?.());
            assert.equal(res.status, want, `${who} ${route.name} @ ${targetName}: ${res.text}`);
            if (want >= 400) assert.deepEqual(await snapshot(), before, `${who} ${route.name} @ ${targetName} changed state`);
            cells++;
          }
        }
      });
    }

    it("covered every cell of the matrix", () => {
      const people_ = Object.keys(people).length;
      assert.equal(cells, people_ * (orgRoutes.length * 4 + townRoutes.length * 4));
      console.log(`# org/town authorization matrix: ${cells} cells`);
    });

    it("an org town records the org and its creator; credentials in the body are ignored", async () => {
      const res = await as("carol", "POST", `/api/orgs/${orgA}/towns`, { name: "Carol's", kilocode_token: "kilo-injected-secret-123", owner_user_id: "evil" });
      assert.equal(res.status, 201);
      assert.equal(res.body.owner_type, "org");
      assert.equal(res.body.organization_id, orgA);
      assert.equal(res.body.owner_user_id, people.carol.id);
      assert.equal(res.body.created_by_user_id, people.carol.id);
      const config = await as("carol", "GET", `/api/towns/${res.body.id}/config`);
      assert.match(config.body.kilocode_token, /^\*\*\*\*.{4}$/, "the town mints its own gateway token, shown masked");
      assert.notEqual(config.body.kilocode_token, "****-123", "a kilocode_token in a create body is never stored");
      assert.equal(config.body.owner_user_id, people.carol.id);
      const rig = await as("carol", "POST", `/api/orgs/${orgA}/rigs`, { town_id: res.body.id, name: "r", git_url: "https://github.com/a/r", kilocode_token: "kilo-injected-secret-123" });
      assert.equal(rig.status, 201);
      assert.ok(!JSON.stringify(rig.body).includes("kilo-injected"));
    });

    it("config secrets are masked for every role, and a member who is not the creator cannot change them", async () => {
      for (const who of ["alice", "bob", "carol"]) {
        const res = await as(who, "GET", `/api/towns/${w.TA.id}/config`);
        assert.equal(res.status, 200);
        assert.equal(res.body.github_cli_pat, "****ABCD", who);
        assert.equal(res.body.env_vars.API_KEY, "****9876", who);
        assert.ok(!res.text.includes("orgsecret") && !res.text.includes("sk-org-secret"), who);
        assert.equal(res.body.owner_type, "org");
        assert.equal(res.body.created_by_user_id, people.bob.id);
      }
      const before = (await as("alice", "GET", `/api/towns/${w.TA.id}/config`)).body;
      const denied = await as("carol", "PATCH", `/api/towns/${w.TA.id}/config`, { github_cli_pat: "ghp_carol_overwrite_0000" });
      assert.equal(denied.status, 403);
      assert.deepEqual((await as("alice", "GET", `/api/towns/${w.TA.id}/config`)).body, before);
      const roundTrip = await as("alice", "PATCH", `/api/towns/${w.TA.id}/config`, before);
      assert.equal(roundTrip.status, 200, roundTrip.text);
      assert.deepEqual(roundTrip.body, before, "sending the masked config back changes nothing");
    });

    it("losing a membership takes effect on the very next request", async () => {
      const id = people.carol.id;
      const withOrg = tokenFor(id, { orgs: [{ orgId: orgA, role: "member" }] });
      const without = tokenFor(id, { orgs: [] });
      assert.equal((await ctx.call("GET", `/api/orgs/${orgA}/towns`, { token: withOrg })).status, 200);
      assert.equal((await ctx.call("GET", `/api/orgs/${orgA}/towns`, { token: without })).status, 403);
      assert.equal((await ctx.call("GET", `/api/towns/${w.TA.id}`, { token: without })).status, 403);
      const demoted = tokenFor(people.alice.id, { orgs: [{ orgId: orgA, role: "billing_manager" }] });
      assert.equal((await ctx.call("GET", `/api/orgs/${orgA}/towns`, { token: demoted })).status, 403);
    });

    it("two orgs with identically named towns and rigs stay apart", async () => {
      const a = (await as("alice", "GET", `/api/orgs/${orgA}/towns`)).body.filter((t) => t.name === "Shared");
      const b = (await as("erin", "GET", `/api/orgs/${orgB}/towns`)).body.filter((t) => t.name === "Shared");
      assert.equal(a.length, 1);
      assert.equal(b.length, 1);
      assert.notEqual(a[0].id, b[0].id);
      const rigsA = (await as("alice", "GET", `/api/towns/${a[0].id}/rigs`)).body;
      const rigsB = (await as("erin", "GET", `/api/towns/${b[0].id}/rigs`)).body;
      assert.ok(rigsA.some((r) => r.id === w.RA.id) && !rigsA.some((r) => r.id === w.RB.id));
      assert.ok(rigsB.some((r) => r.id === w.RB.id) && !rigsB.some((r) => r.id === w.RA.id));
      assert.ok(rigsA.every((r) => r.town_id === a[0].id) && rigsB.every((r) => r.town_id === b[0].id));
    });

    it("town routes read personal and org towns the same way", async () => {
      const viaUser = await as("frank", "GET", `/api/users/${people.frank.id}/towns/${w.P.id}/rigs`);
      const viaTown = await as("frank", "GET", `/api/towns/${w.P.id}/rigs`);
      assert.deepEqual(viaTown.body, viaUser.body);
      const viaOrg = await as("bob", "GET", `/api/orgs/${orgA}/towns/${w.TA.id}/rigs`);
      const viaTown2 = await as("bob", "GET", `/api/towns/${w.TA.id}/rigs`);
      assert.deepEqual(viaTown2.body, viaOrg.body);
      assert.deepEqual((await as("bob", "GET", `/api/towns/${w.TA.id}`)).body, w.TA);
    });
  });
}

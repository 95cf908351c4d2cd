// Issue 20, item 3, end to end: an agent's `gh` finds GH_TOKEN for each run, never a copy in
// its environment, and an org town's id reaches the agent's Kilo config. It runs on a worker
// of its own with its own control server (the real demo agent; the GitHub CLI is the fixture
// standins/fake_gh.sh, given as --gh-path and run through each town's bin/gh shim) and the
// shared GitHub stand-in. Beads carry the demo agent's probes: `[demo:gh]` runs
// `gh auth token` once and posts whether gh had a token and its SHA-256 fingerprint (never
// the token); `[demo:org]` posts the organization its config names. Neither does git work.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { until, not, startOwnWorker, secrets } from "./harness.mjs";
import { freshUser, tokenFor, createTown } from "./fixtures.mjs";

const FAKE_GH = join(dirname(fileURLToPath(import.meta.url)), "standins", "fake_gh.sh");
const PAT = "ghp_e2e_cli_pat_0123456789abcdef";

/** What the demo agent reports of a token: the first 8 hex digits of its SHA-256. */
const fingerprint = (token) => createHash("sha256").update(token).digest("hex").slice(0, 8);

let nextInstallation = 60_000 + (process.pid % 1000) * 100;
let nextGithubId = 7_300_000 + (process.pid % 1000) * 100;

export default function ghToken(ctx) {
  describe("gh for agents: GH_TOKEN per run of gh; the org id in the agent's config", () => {
    let call, control, world, ghDir;
    const p = () => ctx.platforms;

    before(async () => {
      // The fixture, executable whatever mode the checkout gave it.
      ghDir = mkdtempSync(join(tmpdir(), "gastown-fake-gh-"));
      const gh = join(ghDir, "gh");
      copyFileSync(FAKE_GH, gh);
      chmodSync(gh, 0o755);
      world = await startOwnWorker(ctx, { controlArgs: ["--gh-path", gh] });
      ({ call, control } = world);
    });

    after(async () => {
      await world?.stop();
      if (ghDir) rmSync(ghDir, { recursive: true, force: true });
    });

    /** Installs the App for `user` (an installation of `acct-<id>` with the repository `app`); the integration. */
    async function install(user) {
      const installationId = ++nextInstallation;
      const login = `acct-${installationId}`;
      p().addInstallation({ id: installationId, login, repos: [{ name: "app" }] });
      // The account that installs the App proves it at GitHub's install-time authorization.
      const installer = ++nextGithubId;
      p().addGithubUser({ id: installer, login });
      const code = p().issueGithubUserCode({ user_id: installer, redirect_uri: `${secrets.PUBLIC_URL}/api/integrations/github/installed` });
      const start = await call("POST", "/api/integrations/github/install", { token: tokenFor(user), body: {} });
      assert.equal(start.status, 200, start.text);
      const state = new URL(start.body.install_url).searchParams.get("state");
      const back = await fetch(`${world.worker.url}/api/integrations/github/installed?installation_id=${installationId}&setup_action=install&code=${code}&state=${encodeURIComponent(state)}`, { redirect: "manual" });
      await back.text();
      assert.equal(new URL(back.headers.get("location")).searchParams.get("result"), "success");
      const list = await call("GET", `/api/users/${user}/integrations`, { token: tokenFor(user) });
      const integration = list.body.find((i) => i.account_login === login);
      assert.ok(integration, JSON.stringify(list.body));
      return { integration, installationId, login };
    }

    /** Slings a bead with `body` on `rigId` and waits until it closes; the status messages of its probes. */
    async function probe(token, townId, rigId, body) {
      const slung = await call("POST", `/api/towns/${townId}/sling`, { token, body: { rig_id: rigId, title: "Probe", body } });
      assert.equal(slung.status, 201, slung.text);
      const done = await until("the probe's bead to close", async () => {
        const b = (await call("GET", `/api/towns/${townId}/beads/${slung.body.id}`, { token })).body;
        return b?.status === "closed" ? b : not([b?.status, b?.events?.map((e) => [e.kind, e.message])]);
      });
      return done.events.filter((e) => e.kind === "status" && /^\[demo:(gh|org)\]/.test(e.message ?? "")).map((e) => e.message);
    }

    /** The fingerprint a `[demo:gh]` status reports, or null for "no token". */
    function reported(messages) {
      const gh = messages.filter((m) => m.startsWith("[demo:gh]"));
      assert.equal(gh.length, 1, JSON.stringify(messages));
      const has = /^\[demo:gh\] gh has a token: sha256 ([0-9a-f]{8})$/.exec(gh[0]);
      if (has) return has[1];
      assert.match(gh[0], /^\[demo:gh\] gh has no token \(exit 1\)$/);
      return null;
    }

    it("an integration rig: gh gets a fresh installation token of the stand-in's, a new one once the old nears expiry", async () => {
      const user = freshUser("gh");
      const { integration, installationId, login } = await install(user);
      const town = await createTown(call, user, "Gh");
      const rig = await call("POST", `/api/users/${user}/rigs`, { token: tokenFor(user), body: { town_id: town.id, name: "app", platform_integration_id: integration.id, repo: `${login}/app` } });
      assert.equal(rig.status, 201, rig.text);
      // Tokens that live two minutes: inside the five-minute margin, so never handed out twice.
      p().setTokenTtl({ github: 120 });
      try {
        const first = reported(await probe(tokenFor(user), town.id, rig.body.id, "[demo:gh]"));
        const second = reported(await probe(tokenFor(user), town.id, rig.body.id, "[demo:gh]"));
        const issued = p().tokens().github.filter((t) => t.installation_id === installationId);
        const prints = issued.map((t) => fingerprint(t.token));
        assert.ok(first && prints.includes(first), `${first} is a token the stand-in issued: ${prints}`);
        assert.ok(second && prints.includes(second), `${second} is a token the stand-in issued: ${prints}`);
        assert.notEqual(first, second, "a token near its expiry is never handed to gh again");
        assert.deepEqual(issued.find((t) => fingerprint(t.token) === second).repositories, ["app"], "scoped to the rig's repository");
      } finally {
        p().setTokenTtl({ github: 3600 });
      }
      // The agent's own environment never held it: the token is only ever in the shim's run of gh.
      const inside = (await control.town(town.id)).body;
      assert.ok(!Object.keys(inside.env ?? {}).includes("GH_TOKEN"), JSON.stringify(Object.keys(inside.env ?? {})));
    });

    it("a manual-URL rig without git_auth: no GH_TOKEN; with the town's github_cli_pat: the PAT", async () => {
      const user = freshUser("ghm");
      const town = await createTown(call, user, "Manual");
      const rig = await call("POST", `/api/users/${user}/rigs`, { token: tokenFor(user), body: { town_id: town.id, name: "manual", git_url: "https://github.com/acme/manual.git" } });
      assert.equal(rig.status, 201, rig.text);
      assert.equal(reported(await probe(tokenFor(user), town.id, rig.body.id, "[demo:gh]")), null, "absent: the rig has no credentials");
      const pat = await call("PATCH", `/api/towns/${town.id}/config`, { token: tokenFor(user), body: { github_cli_pat: PAT } });
      assert.equal(pat.status, 200, pat.text);
      assert.equal(reported(await probe(tokenFor(user), town.id, rig.body.id, "[demo:gh]")), fingerprint(PAT));
    });

    it("an org town's agent has the org id in KILO_CONFIG_CONTENT and GASTOWN_ORGANIZATION_ID; a personal town's has none", async () => {
      const org = `org-${freshUser("gho")}`;
      const owner = freshUser("ghowner");
      const token = tokenFor(owner, { orgs: [{ orgId: org, role: "owner" }] });
      const town = await call("POST", `/api/orgs/${org}/towns`, { token, body: { name: "Org probe" } });
      assert.equal(town.status, 201, town.text);
      const rig = await call("POST", `/api/orgs/${org}/rigs`, { token, body: { town_id: town.body.id, name: "orgrig", git_url: "https://github.com/acme/orgrig.git" } });
      assert.equal(rig.status, 201, rig.text);
      const messages = await probe(token, town.body.id, rig.body.id, "[demo:gh] [demo:org]");
      assert.ok(messages.includes(`[demo:org] kilocodeOrganizationId=${org} GASTOWN_ORGANIZATION_ID=${org}`), JSON.stringify(messages));
      assert.equal(reported(messages), null, "no credentials in the org town either");

      const user = freshUser("ghp");
      const personal = await createTown(call, user, "Personal probe");
      const prig = await call("POST", `/api/users/${user}/rigs`, { token: tokenFor(user), body: { town_id: personal.id, name: "p", git_url: "https://github.com/acme/p.git" } });
      assert.equal(prig.status, 201, prig.text);
      assert.deepEqual(await probe(tokenFor(user), personal.id, prig.body.id, "[demo:org]"), ["[demo:org] kilocodeOrganizationId=none GASTOWN_ORGANIZATION_ID=none"]);
    });
  });
}

// Issue 13, end to end: beads, sling, dispatch into the container, the demo agent's callbacks,
// the attempt cap and the breaker, patrol (stalls and crash loops), idleness, and paging at
// 10 000 beads. It runs on a worker of its own (fast loop settings, its own control server
// running the real demo agent, its own stand-in gateway) so its timings touch no other suite.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { secrets, sleep, until, not, startOwnWorker } from "./harness.mjs";
import { freshUser, tokenFor, createTown, internalKey, githubWebhook, bareRepo, git } from "./fixtures.mjs";
import { webhookPayload } from "./standins/git_platforms.mjs";

const STALL_MS = 3_000;
const IDLE_STOP_MS = 6_000;
const RETRY_BASE_MS = 300;

export default function work(ctx) {
  describe("the work loop: beads, dispatch, callbacks, patrol", () => {
    let call, control, gateway, worker, world, repos;
    const user = freshUser("work");
    const token = () => tokenFor(user);
    const as = (method, path, body, t = token()) => call(method, path, { token: t, body });
    const health = async (townId) =>
      (await call("GET", `/api/internal/towns/${townId}/health`, { headers: { "x-internal-api-key": internalKey() } })).body;
    const bead = async (townId, id) => (await as("GET", `/api/towns/${townId}/beads/${id}`)).body;
    const kinds = (detail) => detail.events.map((e) => e.kind);

    /** A town with a rig on a fresh local bare repository. */
    async function townWithRig(name) {
      const town = await createTown(call, user, name);
      const repo = bareRepo(repos);
      const res = await as("POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "demo", git_url: `file://${repo}` });
      assert.equal(res.status, 201, res.text);
      return { town, rig: res.body, repo };
    }

    before(async () => {
      repos = mkdtempSync(join(tmpdir(), "gastown-repos-"));
      world = await startOwnWorker(ctx, {
        // Agents reach the GitHub stand-in's git host over HTTPS, trusting its certificate.
        controlArgs: ["--git-ca-file", ctx.platforms.gitCaFile],
        gateway: true,
        vars: {
          GASTOWN_ALLOW_LOCAL_GIT: "1",
          AGENT_STALL_MS: String(STALL_MS),
          CONTAINER_IDLE_STOP_MS: String(IDLE_STOP_MS),
          DISPATCH_RETRY_BASE_MS: String(RETRY_BASE_MS),
          DISPATCH_RETRY_MAX_MS: "2000",
          DISPATCH_BREAKER_MS: "1000",
          MAX_AGENTS_PER_TOWN: "20",
        },
      });
      ({ call, control, gateway, worker } = world);
    });

    after(async () => {
      await world?.stop();
      if (repos) rmSync(repos, { recursive: true, force: true });
    });

    it("sling → dispatch → the demo agent works, heartbeats and calls done → bead closed, agent idle, branch pushed", async () => {
      const { town, rig, repo } = await townWithRig("Work");
      const author = await as("PATCH", `/api/towns/${town.id}/config`, { git_author_name: "Ada Agent", git_author_email: "ada@example.com" });
      assert.equal(author.status, 200, author.text);
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Add a greeting", body: "Say hello." });
      assert.equal(slung.status, 201, slung.text);
      assert.deepEqual([slung.body.type, slung.body.status, slung.body.rig_id, slung.body.created_by], ["issue", "open", rig.id, user]);
      const done = await until("the bead to close", async () => {
        const b = await bead(town.id, slung.body.id);
        return b.status === "closed" ? b : not(b);
      });
      const order = kinds(done);
      for (const k of ["created", "dispatched", "status", "done"]) assert.ok(order.includes(k), `${k} in ${order}`);
      assert.ok(order.indexOf("dispatched") < order.indexOf("done"));
      assert.equal(done.dispatch_attempts, 1);
      assert.ok(done.closed_at);
      const branch = done.metadata.branch;
      assert.match(branch, /^gastown\/polecat-1\/[0-9a-f]{8}$/);
      assert.equal(branch.split("/")[2], done.id.slice(0, 8));
      // The agent is free again, and was heard from.
      const agents = (await as("GET", `/api/towns/${town.id}/agents`)).body;
      const polecat = agents.find((a) => a.id === done.assignee_agent_id);
      assert.ok(polecat, JSON.stringify(agents));
      assert.deepEqual([polecat.role, polecat.rig_id, polecat.status, polecat.current_bead_id], ["polecat", rig.id, "idle", null]);
      assert.ok(polecat.last_activity_at);
      // The work is in the repository, committed as the town's git author.
      assert.equal(git("--git-dir", repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", branch), "Ada Agent <ada@example.com>|Ada Agent <ada@example.com>");
      assert.match(git("--git-dir", repo, "show", `${branch}:gastown/${done.id}.md`), /Add a greeting/);
      // It called the gateway once, billed to the town's owner.
      const usage = await (await fetch(`${gateway.url}/debug/usage`)).json();
      const mine = usage.calls.filter((c) => c.town_id === town.id);
      assert.equal(mine.length, 1, JSON.stringify(usage));
      assert.equal(mine[0].user_id, user);
      const h = await health(town.id);
      assert.ok(h.dispatches >= 1);
      assert.equal(h.dispatch_failures, 0);
    });

    it("callbacks: another town's token is refused, another town's agent is not found, done needs a bead in progress", async () => {
      const a = await townWithRig("Callbacks A");
      const b = await townWithRig("Callbacks B");
      for (const t of [a, b]) assert.equal((await as("POST", `/api/towns/${t.town.id}/container/start`)).status, 200);
      const tokenA = (await control.town(a.town.id)).body.token;
      const tokenB = (await control.town(b.town.id)).body.token;
      const mayorB = (await as("POST", `/api/towns/${b.town.id}/mayor/ensure`)).body;
      const mayorA = (await as("POST", `/api/towns/${a.town.id}/mayor/ensure`)).body;
      const cb = (townId, rigId, agentId, kind, t, body = {}) =>
        call("POST", `/api/towns/${townId}/rigs/${rigId}/agents/${agentId}/${kind}`, { token: t, body });
      for (const kind of ["heartbeat", "status", "done"]) {
        const body = { heartbeat: {}, status: { message: "x" }, done: { summary: "x" } }[kind];
        assert.equal((await cb(a.town.id, a.rig.id, mayorA.id, kind, tokenB, body)).status, 403, `${kind}: B's token on A`);
        assert.equal((await cb(a.town.id, a.rig.id, mayorB.id, kind, tokenA, body)).status, 404, `${kind}: B's agent on A`);
        assert.equal((await cb(a.town.id, b.rig.id, mayorA.id, kind, tokenA, body)).status, 404, `${kind}: B's rig on A`);
        assert.equal((await cb(a.town.id, a.rig.id, mayorA.id, kind, undefined, body)).status, 401, `${kind}: no token`);
        assert.equal((await cb(a.town.id, a.rig.id, mayorA.id, kind, token(), body)).status, 401, `${kind}: a user token`);
      }
      assert.equal((await cb(a.town.id, a.rig.id, mayorA.id, "status", tokenA, { message: "thinking" })).status, 200);
      const idle = await cb(a.town.id, a.rig.id, mayorA.id, "done", tokenA, { summary: "nothing" });
      assert.equal(idle.status, 409, "no bead in progress");
      // Bad bodies write nothing.
      for (const [kind, body, field] of [
        ["status", {}, "message"],
        ["status", { message: "x", extra: 1 }, "extra"],
        ["done", { summary: "s", pr_url: "javascript:alert(1)" }, "pr_url"],
        ["done", { summary: "s", branch: "has space" }, "branch"],
        ["done", { branch: "b" }, "summary"],
      ]) {
        const res = await cb(a.town.id, a.rig.id, mayorA.id, kind, tokenA, body);
        assert.equal(res.status, 422, `${kind} ${JSON.stringify(body)}: ${res.text}`);
        assert.equal(res.body.error.field, field);
      }
    });

    it("done with a pull request under the pull_request merge strategy puts the bead in review and frees the agent", async () => {
      const { town, rig } = await townWithRig("Review");
      assert.equal((await as("PATCH", `/api/towns/${town.id}/config`, { merge_strategy: "pull_request" })).status, 200);
      // An agent that never calls back: the test speaks for it with the town's container token.
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Open a PR", body: "[demo:hang]" });
      const working = await until("the dispatch", async () => {
        const b = await bead(town.id, slung.body.id);
        return b.status === "in_progress" ? b : not(b.status);
      });
      const ct = (await control.town(town.id)).body.token;
      const path = `/api/towns/${town.id}/rigs/${rig.id}/agents/${working.assignee_agent_id}`;
      assert.equal((await call("POST", `${path}/heartbeat`, { token: ct, body: {} })).status, 200);
      const done = await call("POST", `${path}/done`, { token: ct, body: { summary: "opened #7", branch: "gastown/x", pr_url: "https://github.example/acme/app/pull/7" } });
      assert.equal(done.status, 200, done.text);
      assert.deepEqual([done.body.status, done.body.closed_at, done.body.metadata.pr_url, done.body.metadata.branch], ["in_review", null, "https://github.example/acme/app/pull/7", "gastown/x"]);
      const agent = (await as("GET", `/api/towns/${town.id}/agents`)).body.find((a) => a.id === working.assignee_agent_id);
      assert.deepEqual([agent.status, agent.current_bead_id], ["idle", null]);
      assert.equal((await call("POST", `${path}/done`, { token: ct, body: { summary: "again" } })).status, 409, "done once");
      assert.ok(kinds(await bead(town.id, slung.body.id)).includes("in_review"));
    });

    it("stopping the town hands its running work back (open, no failure counted); starting it dispatches again", async () => {
      const { town, rig } = await townWithRig("Stop");
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Interrupted", body: "[demo:hang]" });
      await until("the dispatch", async () => ((await bead(town.id, slung.body.id)).status === "in_progress" ? true : not("open")));
      assert.equal((await as("POST", `/api/towns/${town.id}/stop`)).status, 200);
      const released = await bead(town.id, slung.body.id);
      assert.deepEqual([released.status, released.assignee_agent_id], ["open", null]);
      assert.equal(released.events.at(-1).message, "the town was stopped");
      assert.ok(!kinds(released).includes("stalled"), "not an agent failure");
      const agents = (await as("GET", `/api/towns/${town.id}/agents`)).body;
      assert.ok(agents.every((a) => a.status === "idle"), JSON.stringify(agents));
      await sleep(1_500);
      assert.equal((await bead(town.id, slung.body.id)).status, "open", "a stopped town dispatches nothing");
      assert.equal((await as("POST", `/api/towns/${town.id}/start`)).status, 200);
      const again = await until("the dispatch after the start", async () => {
        const b = await bead(town.id, slung.body.id);
        return b.status === "in_progress" ? b : not(b.status);
      });
      assert.equal(again.dispatch_attempts, 2);
      assert.equal((await as("PATCH", `/api/towns/${town.id}/beads/${slung.body.id}`, { status: "closed" })).status, 200);
      const closed = (await as("GET", `/api/towns/${town.id}/agents`)).body;
      assert.ok(closed.every((a) => a.status === "idle"), "closing the bead frees its agent");
    });

    it("deleting an org town's creator stops it and mints nothing for them again; an org owner claims it", async () => {
      const org = `org-${freshUser("del")}`;
      const creator = freshUser("creator");
      const owner = freshUser("orgowner");
      const creatorToken = tokenFor(creator, { orgs: [{ orgId: org, role: "member" }] });
      const ownerToken = tokenFor(owner, { orgs: [{ orgId: org, role: "owner" }] });
      const member = tokenFor(freshUser("member"), { orgs: [{ orgId: org, role: "member" }] });
      const internal = (method, path) => call(method, path, { headers: { "x-internal-api-key": internalKey() } });
      const sub = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString()).sub;
      const town = (await as("POST", `/api/orgs/${org}/towns`, { name: "Org work" }, creatorToken)).body;
      const rig = (await as("POST", `/api/orgs/${org}/rigs`, { town_id: town.id, name: "demo", git_url: `file://${bareRepo(repos)}` }, creatorToken)).body;
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Long work", body: "[demo:hang]" }, creatorToken);
      assert.equal(slung.status, 201, slung.text);
      await until("the dispatch", async () => {
        const b = (await as("GET", `/api/towns/${town.id}/beads/${slung.body.id}`, undefined, creatorToken)).body;
        return b.status === "in_progress" ? b : not(b.status);
      });
      assert.equal(sub((await internal("POST", `/api/internal/towns/${town.id}/sandbox-token`)).body.token), creator);
      const containerToken = (await control.town(town.id)).body.token;

      const deleted = await internal("DELETE", `/api/internal/users/${creator}`);
      assert.equal(deleted.status, 200, deleted.text);
      assert.deepEqual(deleted.body, { deleted: true, towns: 0, org_towns: 1, integrations: 0 });
      const seen = (await as("GET", `/api/towns/${town.id}`, undefined, ownerToken)).body;
      assert.equal(seen.status, "creator_deleted");
      const listed = (await as("GET", `/api/orgs/${org}/towns/${town.id}`, undefined, ownerToken)).body;
      assert.equal(listed.status, "creator_deleted", "the org's record agrees");
      const released = (await as("GET", `/api/towns/${town.id}/beads/${slung.body.id}`, undefined, ownerToken)).body;
      assert.deepEqual([released.status, released.assignee_agent_id], ["open", null], "its work handed back, as a stop does");
      assert.equal(released.events.at(-1).message, "the account the town acted as was deleted");
      assert.equal((await control.town(town.id)).body.token, null, "its container holds no token");
      // No token is minted for the deleted user again, by any path.
      const sandbox = await internal("POST", `/api/internal/towns/${town.id}/sandbox-token`);
      assert.equal(sandbox.status, 409, sandbox.text);
      assert.equal(sandbox.body.error.code, "creator_deleted");
      const byContainer = await call("POST", `/api/towns/${town.id}/sandbox-token`, { token: containerToken });
      assert.deepEqual([byContainer.status, byContainer.body.error.code], [409, "creator_deleted"], "nor for the container");
      const start = await as("POST", `/api/towns/${town.id}/start`, undefined, ownerToken);
      assert.equal(start.status, 409, start.text);
      assert.equal(start.body.error.code, "creator_deleted");
      assert.equal((await as("POST", `/api/towns/${town.id}/container/start`, undefined, ownerToken)).status, 409);
      await sleep(1_500);
      const h = await health(town.id);
      assert.deepEqual([h.status, h.alarm_at], ["creator_deleted", null], "no alarm");
      assert.equal((await as("GET", `/api/towns/${town.id}/beads/${slung.body.id}`, undefined, ownerToken)).body.status, "open", "no alarm dispatches it");
      assert.deepEqual((await internal("DELETE", `/api/internal/users/${creator}`)).body, { deleted: true, towns: 0, org_towns: 0, integrations: 0 }, "idempotent");

      // The claim: org owners only; it starts nothing.
      assert.equal((await as("POST", `/api/orgs/${org}/towns/${town.id}/claim`, undefined, member)).status, 403);
      const claimed = await as("POST", `/api/orgs/${org}/towns/${town.id}/claim`, undefined, ownerToken);
      assert.equal(claimed.status, 200, claimed.text);
      assert.deepEqual([claimed.body.status, claimed.body.owner_user_id, claimed.body.created_by_user_id], ["stopped", owner, owner]);
      assert.equal((await as("POST", `/api/orgs/${org}/towns/${town.id}/claim`, undefined, ownerToken)).status, 409, "claimed once");
      await sleep(1_500);
      assert.equal((await as("GET", `/api/towns/${town.id}/beads/${slung.body.id}`, undefined, ownerToken)).body.status, "open", "the claim started nothing");
      assert.equal((await internal("POST", `/api/internal/towns/${town.id}/sandbox-token`)).status, 409, "a stopped town mints nothing either");
      assert.equal((await as("POST", `/api/towns/${town.id}/start`, undefined, ownerToken)).status, 200);
      assert.equal(sub((await internal("POST", `/api/internal/towns/${town.id}/sandbox-token`)).body.token), owner, "the next gateway token acts as the claimant");
      const claims = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
      assert.equal(claims((await control.town(town.id)).body.token).userId, owner, "and so does the container's");
      assert.equal((await as("POST", `/api/towns/${town.id}/stop`, undefined, ownerToken)).status, 200);
    });

    it("commit as the user who slung the work: their token and identity, the bot with its reason, a mid-session fall back recorded", async () => {
      const p = ctx.platforms;
      const org = `org-${freshUser("cau")}`;
      const a = freshUser("alice");
      const aToken = tokenFor(a, { orgs: [{ orgId: org, role: "owner" }] });
      const b = freshUser("bob");
      const bToken = tokenFor(b, { orgs: [{ orgId: org, role: "member" }] });
      const c = freshUser("carol");
      const cToken = tokenFor(c, { orgs: [{ orgId: org, role: "member" }] });
      const land = async (path) => (await fetch(`${worker.url}${path}`, { redirect: "manual" })).headers.get("location");
      const result = (location) => new URL(location).searchParams.get("result");
      const ids = 9_300_000 + (process.pid % 1000) * 100;
      // The org's GitHub App installation, connected by A (an org owner who administers it).
      const installation = ids + 1;
      const login = `org-acct-${installation}`;
      p.addGithubUser({ id: ids + 2, login: `admin-${installation}` });
      p.addInstallation({ id: installation, login, type: "Organization", repos: [{ name: "app" }], users: [ids + 2] });
      const install = await as("POST", "/api/integrations/github/install", { org_id: org }, aToken);
      const installState = new URL(install.body.install_url).searchParams.get("state");
      const installCode = p.issueGithubUserCode({ user_id: ids + 2, redirect_uri: `${secrets.PUBLIC_URL}/api/integrations/github/installed` });
      assert.equal(result(await land(`/api/integrations/github/installed?installation_id=${installation}&setup_action=install&code=${installCode}&state=${encodeURIComponent(installState)}`)), "success");
      const integration = (await as("GET", `/api/orgs/${org}/integrations`, undefined, aToken)).body[0];
      // B connects their own GitHub identity, with push access; C never connects.
      const bGithub = ids + 3;
      p.addGithubUser({ id: bGithub, login: `bob-${bGithub}`, repos: { [`${login}/app`]: { push: true } } });
      const start = await as("POST", "/api/integrations/github/user-connect", undefined, bToken);
      const url = new URL(start.body.authorize_url);
      const userCode = p.issueGithubUserCode({ user_id: bGithub, redirect_uri: url.searchParams.get("redirect_uri") });
      assert.equal(result(await land(`/api/integrations/github/user-connect/callback?code=${userCode}&state=${encodeURIComponent(url.searchParams.get("state"))}`)), "success");

      const town = (await as("POST", `/api/orgs/${org}/towns`, { name: "As who slung it" }, aToken)).body;
      assert.equal((await as("PATCH", `/api/towns/${town.id}/config`, { commit_as_user: true }, aToken)).status, 200);
      const rig = (await as("POST", `/api/orgs/${org}/rigs`, { town_id: town.id, name: "app", platform_integration_id: integration.id, repo: `${login}/app` }, aToken)).body;
      const working = async (slinger, title) => {
        const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title, body: "[demo:hang]" }, slinger);
        assert.equal(slung.status, 201, slung.text);
        return until(`the dispatch of ${title}`, async () => {
          const got = await bead(town.id, slung.body.id);
          return got.status === "in_progress" ? got : not(got.status);
        });
      };
      // The town is the org's: its owner reads the beads.
      const bead = async (townId, id) => (await as("GET", `/api/towns/${townId}/beads/${id}`, undefined, aToken)).body;
      const gitToken = async (agentId) => call("POST", `/api/towns/${town.id}/rigs/${rig.id}/git-token`, { token: (await control.town(town.id)).body.token, body: agentId ? { agent_id: agentId } : undefined });
      const identityEvents = async (id) => (await bead(town.id, id)).events.filter((e) => e.kind === "git_identity").map((e) => e.message);
      const bEmail = `${bGithub}+bob-${bGithub}@users.noreply.github.com`;
      const bare = p.gitRepoPath(login, "app");
      const closed = async (slinger, title) => {
        const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title }, slinger);
        assert.equal(slung.status, 201, slung.text);
        return until(`${title} to close`, async () => {
          const got = await bead(town.id, slung.body.id);
          return got.status === "closed" ? got : got.status === "failed" ? assert.fail(JSON.stringify(got)) : not(got.status);
        });
      };
      // Whose credential the pushes carried (git asks twice per push: the refs, then the pack).
      const pushers = () => [...new Set(p.gitAuth().filter((e) => e.service === "git-receive-pack" && e.owner === login && e.repo === "app" && e.verdict === true).map((e) => e.as))];

      // B's real work, through the demo agent: the commit is B's, and so is the push.
      const bDone = await closed(bToken, "B's commit");
      const bBranch = bDone.metadata.branch;
      assert.equal(git("--git-dir", bare, "log", "-1", "--format=%an <%ae>|%cn <%ce>", bBranch), `bob-${bGithub} <${bEmail}>|bob-${bGithub} <${bEmail}>`);
      assert.match(git("--git-dir", bare, "log", "-1", "--format=%B", bBranch), /Co-authored-by: Kilo <kilo@gastown\.invalid>/);
      assert.deepEqual(pushers(), [`user:${bGithub}`], "pushed with B's own token");
      assert.deepEqual(await identityEvents(bDone.id), [`commits as bob-${bGithub} <${bEmail}>`]);
      // C never connected: the bot pushes, the town's author commits, and the bead says why.
      const cDone = await closed(cToken, "C's commit");
      assert.equal(git("--git-dir", bare, "log", "-1", "--format=%an <%ae>", cDone.metadata.branch), "Gastown Agent <agent@gastown.invalid>");
      assert.deepEqual(pushers(), [`user:${bGithub}`, `installation:${installation}`]);
      assert.deepEqual(await identityEvents(cDone.id), ["commits as the bot (not_connected): the user has not connected GitHub"]);

      // B's work: B's token, B's no-reply identity, said once in the bead's events.
      const bWork = await working(bToken, "B's work");
      assert.equal(bWork.created_by, b);
      const asB = await gitToken(bWork.assignee_agent_id);
      assert.equal(asB.status, 200, asB.text);
      assert.equal(asB.body.source, "github_user");
      assert.deepEqual(asB.body.identity, { kind: "user", name: `bob-${bGithub}`, email: bEmail });
      assert.equal(p.githubUserTokens().find((t) => t.access_token === asB.body.token)?.user_id, bGithub, "minted for B");
      assert.equal((await gitToken(bWork.assignee_agent_id)).body.source, "github_user");
      assert.deepEqual(await identityEvents(bWork.id), [`commits as bob-${bGithub} <${bEmail}>`], "said once per session");
      // Without naming the agent (the internal route, say), tokens are the town's user's: A, never connected.
      assert.deepEqual((await gitToken()).body.identity, { kind: "bot", reason: "not_connected" });
      assert.deepEqual(await identityEvents(bWork.id), [`commits as bob-${bGithub} <${bEmail}>`]);

      // C's work: C never connected, so the bot, and the bead says why.
      const cWork = await working(cToken, "C's work");
      const asC = await gitToken(cWork.assignee_agent_id);
      assert.equal(asC.body.source, "github_app");
      assert.deepEqual(asC.body.identity, { kind: "bot", reason: "not_connected" });
      assert.deepEqual(await identityEvents(cWork.id), ["commits as the bot (not_connected): the user has not connected GitHub"]);

      // B revokes the App mid-session: the next token is the bot's, and the bead says so.
      const payload = webhookPayload("github_app_authorization", "revoked");
      payload.sender.id = bGithub;
      assert.equal((await githubWebhook(worker.url, "github_app_authorization", payload)).status, 200);
      const after = await gitToken(bWork.assignee_agent_id);
      assert.equal(after.status, 200, after.text);
      assert.deepEqual([after.body.source, after.body.identity], ["github_app", { kind: "bot", reason: "revoked" }]);
      assert.deepEqual(await identityEvents(bWork.id), [
        `commits as bob-${bGithub} <${bEmail}>`,
        "fell back to the bot mid-session (revoked): the user's GitHub authorization was revoked",
      ]);
      // A bad agent id is a 422; an agent of another rig or town is not found.
      assert.equal((await gitToken("not an id")).status, 422);
      assert.equal((await gitToken("no-such-agent")).status, 404);
      assert.equal((await as("POST", `/api/towns/${town.id}/stop`, undefined, aToken)).status, 200);
    });

    it("an agent killed mid-run is reported at once: its bead reopens with the exit as the reason, not patrol's", async () => {
      const { town, rig } = await townWithRig("Killed");
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Hang", body: "[demo:hang]" });
      const working = await until("the dispatch", async () => {
        const b = await bead(town.id, slung.body.id);
        return b.status === "in_progress" ? b : not(b.status);
      });
      const running = await until("the agent's process", async () => {
        const a = (await control.town(town.id)).body.agents.find((x) => x.agent_id === working.assignee_agent_id && x.state === "running");
        return a ?? not(null);
      });
      process.kill(running.pid, "SIGKILL");
      const reopened = await until("the exit report", async () => {
        const b = await bead(town.id, slung.body.id);
        const stall = b.events.find((e) => e.kind === "stalled");
        return stall ? b : not(kinds(b));
      }, 10_000);
      const stall = reopened.events.find((e) => e.kind === "stalled");
      assert.match(stall.message, /^its agent was killed by a signal/, "the container's report, not patrol's silence");
      assert.ok(Date.parse(stall.created_at) - Date.parse(working.events.find((e) => e.kind === "dispatched").created_at) < STALL_MS + 2_000);
      assert.ok(kinds(reopened).includes("reopened"));
      // A bad report is refused and changes nothing.
      const ct = (await control.town(town.id)).body.token;
      const exit = (body) => call("POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${working.assignee_agent_id}/exit`, { token: ct, body });
      assert.equal((await exit({ exit_code: "x" })).status, 422);
      assert.equal((await exit({ exit_code: 1, extra: true })).status, 422);
      assert.equal((await call("POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${working.assignee_agent_id}/exit`, { body: { exit_code: 1 } })).status, 401);
      assert.equal((await as("PATCH", `/api/towns/${town.id}/beads/${slung.body.id}`, { status: "closed" })).status, 200);
    });

    it("sling-batch: a convoy whose second bead waits for the first, shows its progress, closes when both close; a failed bead fails it by name; bad batches write nothing", async () => {
      const { town, rig } = await townWithRig("Convoy");
      const batch = (beads, title = "Greetings") => as("POST", `/api/towns/${town.id}/sling-batch`, { title, beads });
      // Refusals first: nothing of them is written.
      for (const [beads, field] of [
        [[{ rig_id: rig.id, title: "A", depends_on: [0] }], "beads[0].depends_on"],
        [[{ rig_id: rig.id, title: "A" }, { rig_id: rig.id, title: "B", depends_on: [1] }], "beads[1].depends_on"],
        [[{ rig_id: rig.id, title: "A" }, { rig_id: rig.id, title: "B", depends_on: [0, 0] }], "beads[1].depends_on"],
        [[{ rig_id: rig.id, title: "A" }, { rig_id: "no-such-rig", title: "B" }], "beads[1].rig_id"],
        [[{ rig_id: rig.id, title: "" }], "beads[0].title"],
        [[{ rig_id: rig.id, title: "A", extra: 1 }], "beads[0].extra"],
        [[], "beads"],
      ]) {
        const res = await batch(beads);
        assert.equal(res.status, 422, res.text);
        assert.equal(res.body.error.field, field, res.text);
      }
      assert.equal((await as("POST", `/api/towns/${town.id}/beads`, { type: "convoy", title: "x" })).status, 422);
      assert.deepEqual((await as("GET", `/api/towns/${town.id}/convoys`)).body, []);
      assert.deepEqual((await as("GET", `/api/towns/${town.id}/beads`)).body, []);
      const outsider = tokenFor(freshUser("convoy-outsider"));
      assert.equal((await as("POST", `/api/towns/${town.id}/sling-batch`, { title: "x", beads: [{ rig_id: rig.id, title: "A" }] }, outsider)).status, 403);

      // The first bead hangs until it is closed; the second waits for it.
      const slung = await batch([
        { rig_id: rig.id, title: "First", body: "[demo:hang]" },
        { rig_id: rig.id, title: "Second", body: "Say hello.", depends_on: [0] },
      ]);
      assert.equal(slung.status, 201, slung.text);
      const convoy = slung.body;
      assert.deepEqual([convoy.type, convoy.status, convoy.progress], ["convoy", "open", { closed: 0, total: 2 }]);
      const [first, second] = convoy.beads;
      assert.deepEqual([first.title, first.depends_on, second.title, second.depends_on], ["First", [], "Second", [first.id]]);
      assert.ok(convoy.beads.every((b) => b.convoy_id === convoy.id && b.created_by === user));
      await until("the first bead's dispatch", async () => {
        const b = await bead(town.id, first.id);
        return b.status === "in_progress" ? b : not(b.status);
      });
      // Several turns of the loop later, the second still waits.
      await sleep(3 * 1000);
      const waiting = await bead(town.id, second.id);
      assert.deepEqual([waiting.status, kinds(waiting)], ["open", ["created"]], "not dispatched before its dependency closed");
      const midway = (await as("GET", `/api/towns/${town.id}/convoys/${convoy.id}`)).body;
      assert.deepEqual([midway.status, midway.progress], ["in_progress", { closed: 0, total: 2 }]);
      assert.equal((await as("PATCH", `/api/towns/${town.id}/beads/${first.id}`, { status: "closed" })).status, 200);
      const done = await until("the second bead to close", async () => {
        const b = await bead(town.id, second.id);
        return b.status === "closed" ? b : not([b.status, kinds(b)]);
      });
      assert.ok(kinds(done).includes("dispatched"));
      const closed = await until("the convoy to close", async () => {
        const c = (await as("GET", `/api/towns/${town.id}/convoys/${convoy.id}`)).body;
        return c.status === "closed" ? c : not(c);
      }, 10_000);
      assert.deepEqual(closed.progress, { closed: 2, total: 2 });
      assert.ok(closed.closed_at);
      const convoyEvents = (await bead(town.id, convoy.id)).events.map((e) => `${e.kind}:${e.message ?? ""}`);
      assert.ok(convoyEvents.includes("closed:all 2 of its beads closed"), convoyEvents.join(" | "));
      const listed = (await as("GET", `/api/towns/${town.id}/convoys`)).body;
      assert.deepEqual(listed.map((c) => [c.id, c.status, c.progress.closed, c.progress.total]), [[convoy.id, "closed", 2, 2]]);
      assert.equal((await as("GET", `/api/towns/${town.id}/convoys/${first.id}`)).status, 404, "a bead that is no convoy");

      // A failed bead fails its convoy, by name: removing the rig fails its work.
      const other = await townWithRig("Convoy fails");
      const failing = (await as("POST", `/api/towns/${other.town.id}/sling-batch`, {
        title: "Doomed",
        beads: [{ rig_id: other.rig.id, title: "Hangs", body: "[demo:hang]" }, { rig_id: other.rig.id, title: "Never", depends_on: [0] }],
      })).body;
      await until("its dispatch", async () => ((await bead(other.town.id, failing.beads[0].id)).status === "in_progress" ? true : not("open")));
      assert.equal((await as("DELETE", `/api/users/${user}/rigs/${other.rig.id}`)).status, 200);
      const failed = await until("the convoy to fail", async () => {
        const c = (await as("GET", `/api/towns/${other.town.id}/convoys/${failing.id}`)).body;
        return c.status === "failed" ? c : not(c);
      }, 10_000);
      assert.match(failed.failure_reason, new RegExp(`^bead ${failing.beads[0].id} \\(Hangs\\) failed: `));
    });

    it("a dead container: attempts back off and stop at 5, the breaker holds dispatch (no storm), the bead fails with a reason, reopen works", async () => {
      const { town, rig } = await townWithRig("Storm");
      await control.fail({ agents_start: true });
      let ids;
      try {
        ids = [];
        for (let i = 0; i < 3; i++) {
          const res = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: `doomed ${i}` });
          assert.equal(res.status, 201);
          ids.push(res.body.id);
        }
        const failed = await until("every bead to fail", async () => {
          const beads = await Promise.all(ids.map((id) => bead(town.id, id)));
          return beads.every((b) => b.status === "failed") ? beads : not(beads.map((b) => [b.status, b.dispatch_attempts]));
        }, 90_000);
        for (const b of failed) {
          assert.equal(b.dispatch_attempts, 5, "exactly the cap");
          assert.match(b.failure_reason, /dispatch failed 5 times.*503.*Reopen/);
          assert.equal(b.assignee_agent_id, null);
          // Backoff: the waits between attempts grow.
          const at = b.events.filter((e) => e.kind === "dispatched").map((e) => Date.parse(e.created_at));
          assert.equal(at.length, 5);
          const gaps = at.slice(1).map((t, i) => t - at[i]);
          assert.ok(gaps[0] >= RETRY_BASE_MS - 50, `first wait ${gaps}`);
          assert.ok(gaps[3] >= 4 * RETRY_BASE_MS, `the waits grow: ${gaps}`);
        }
        // Every start the container saw was one of those 15 attempts: nothing else hit it.
        const inside = (await control.town(town.id)).body;
        assert.equal(inside.agents_start_attempts, 15, JSON.stringify({ attempts: inside.agents_start_attempts }));
        const h = await health(town.id);
        assert.equal(h.dispatch_failures, 15);
        assert.ok(h.breaker_failures >= 3, "the breaker opened");
        await sleep(1_500);
        assert.equal((await control.town(town.id)).body.agents_start_attempts, 15, "failed beads are not retried");
        assert.equal((await health(town.id)).busy, false, "a town whose work all failed is idle");
        // Each failure is escalated, once, for a human (and the mayor).
        const escalations = (await as("GET", `/api/towns/${town.id}/beads?type=escalation`)).body;
        assert.deepEqual(escalations.map((e) => [e.metadata.bead_id, e.labels]).sort(), ids.map((id) => [id, ["dispatch-failed"]]).sort());
      } finally {
        await control.fail({});
      }
      // Reopen: attempts start again, and now it works.
      const reopened = await as("PATCH", `/api/towns/${town.id}/beads/${ids[0]}`, { status: "open" });
      assert.equal(reopened.status, 200, reopened.text);
      assert.deepEqual([reopened.body.status, reopened.body.dispatch_attempts, reopened.body.failure_reason], ["open", 0, null]);
      const closed = await until("the reopened bead to close", async () => {
        const b = await bead(town.id, ids[0]);
        return b.status === "closed" ? b : not([b.status, b.dispatch_attempts, b.failure_reason]);
      });
      assert.ok(kinds(closed).includes("reopened"));
      assert.equal(closed.dispatch_attempts, 1);
    });

    it("patrol: a silent agent is stalled and its bead reopens; three stalls are a crash loop → an escalation, not another restart", async () => {
      const { town, rig } = await townWithRig("Patrol");
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Hang forever", body: "[demo:hang]" });
      assert.equal(slung.status, 201);
      const stalled = await until("a stall", async () => {
        const b = await bead(town.id, slung.body.id);
        return kinds(b).includes("stalled") ? b : not(kinds(b));
      });
      const order = kinds(stalled);
      assert.equal(order[order.indexOf("stalled") + 1], "reopened", "the bead went back to open");
      const failed = await until("the crash loop", async () => {
        const b = await bead(town.id, slung.body.id);
        return b.status === "failed" ? b : not([b.status, kinds(b)]);
      }, 60_000);
      assert.match(failed.failure_reason, /crash loop/);
      assert.equal(kinds(failed).filter((k) => k === "stalled").length, 3);
      assert.equal(failed.dispatch_attempts, 3, "no fourth restart");
      assert.ok(kinds(failed).includes("escalated"));
      const escalations = (await as("GET", `/api/towns/${town.id}/beads?type=escalation`)).body;
      assert.equal(escalations.length, 1, JSON.stringify(escalations));
      assert.deepEqual([escalations[0].status, escalations[0].metadata.bead_id, escalations[0].created_by, escalations[0].rig_id], ["open", slung.body.id, "town", rig.id]);
      const h = await health(town.id);
      assert.ok(h.stalls >= 3);
      const agents = (await as("GET", `/api/towns/${town.id}/agents`)).body;
      assert.ok(agents.every((a) => a.status !== "working"), JSON.stringify(agents));
      // An escalation is for a human: nothing dispatches it, and the town is idle.
      await until("an idle town", async () => ((await health(town.id)).busy ? not("busy") : true), 10_000);
    });

    it("an idle town's alarm pushes nothing, and its container is stopped after the idle timeout; the next sling starts it with fresh tokens", async () => {
      const { town, rig } = await townWithRig("Idle");
      assert.equal((await as("POST", `/api/towns/${town.id}/container/start`)).status, 200);
      const before = (await control.town(town.id)).body;
      const h0 = await health(town.id);
      assert.equal(h0.busy, false);
      await sleep(2_500);
      const h1 = await health(town.id);
      const inside = (await control.town(town.id)).body;
      assert.ok(h1.alarm_runs >= h0.alarm_runs + 2, `the loop ran: ${h0.alarm_runs} → ${h1.alarm_runs}`);
      assert.deepEqual([inside.token_updates, inside.env_updates], [before.token_updates, before.env_updates], "no token, no env");
      assert.deepEqual([h1.token_refreshes, h1.gateway_refreshes], [h0.token_refreshes, h0.gateway_refreshes]);
      // The idle timeout stops the container (the control server drops the town).
      await until("the idle stop", async () => ((await health(town.id)).idle_stops >= 1 ? true : not("running")), 20_000);
      assert.equal((await control.town(town.id)).status, 404, "the container holds nothing of the town");
      assert.equal((await as("GET", `/api/towns/${town.id}/container`)).body.state, "stopped");
      // Work arrives: the container starts again with fresh tokens before the agent does.
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Wake up" });
      await until("the bead to close", async () => {
        const b = await bead(town.id, slung.body.id);
        return b.status === "closed" ? b : not(b.status);
      });
      const after = (await control.town(town.id)).body;
      const gen = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
      assert.ok(gen(after.token).gen > gen(before.token).gen, `a fresh container token, of a newer generation: ${gen(before.token).gen} → ${gen(after.token).gen}`);
      assert.notEqual(after.env.KILO_JWT, before.env.KILO_JWT, "a fresh gateway token");
    });

    it("beads: create, read with events, patch, close, delete; bad input writes nothing; other users are kept out", async () => {
      const { town, rig } = await townWithRig("Crud");
      const made = await as("POST", `/api/towns/${town.id}/beads`, { title: "A note", type: "message", labels: ["x"], metadata: { k: 1 }, priority: 1 });
      assert.equal(made.status, 201, made.text);
      assert.deepEqual([made.body.type, made.body.status, made.body.rig_id, made.body.labels, made.body.metadata, made.body.priority], ["message", "open", null, ["x"], { k: 1 }, 1]);
      for (const [body, field] of [
        [{ title: "no rig" }, "rig_id"],
        [{ title: "x", type: "epic", rig_id: rig.id }, "type"],
        [{ title: "", rig_id: rig.id }, "title"],
        [{ title: "x", rig_id: rig.id, priority: 9 }, "priority"],
        [{ title: "x", rig_id: "00000000-0000-4000-8000-000000000000" }, "rig_id"],
        [{ title: "x", rig_id: rig.id, status: "closed" }, "status"],
      ]) {
        const res = await as("POST", `/api/towns/${town.id}/beads`, body);
        assert.equal(res.status, 422, `${JSON.stringify(body)}: ${res.text}`);
        assert.equal(res.body.error.field, field);
      }
      assert.equal((await as("POST", `/api/towns/${town.id}/sling`, { title: "x" })).status, 422);
      assert.equal((await as("GET", `/api/towns/${town.id}/beads`)).body.length, 1, "nothing written by the refusals");
      const patched = await as("PATCH", `/api/towns/${town.id}/beads/${made.body.id}`, { title: "A better note", labels: ["y", "z"] });
      assert.equal(patched.status, 200, patched.text);
      assert.deepEqual([patched.body.title, patched.body.labels], ["A better note", ["y", "z"]]);
      assert.equal((await as("PATCH", `/api/towns/${town.id}/beads/${made.body.id}`, { status: "in_progress" })).status, 422);
      assert.equal((await as("PATCH", `/api/towns/${town.id}/beads/${made.body.id}`, {})).status, 422);
      const closed = await as("PATCH", `/api/towns/${town.id}/beads/${made.body.id}`, { status: "closed" });
      assert.deepEqual([closed.body.status, Boolean(closed.body.closed_at)], ["closed", true]);
      const detail = await bead(town.id, made.body.id);
      assert.deepEqual(kinds(detail), ["created", "updated", "closed"]);
      assert.equal(detail.events[0].actor, `user:${user}`);
      const stranger = freshUser("stranger");
      assert.equal((await as("GET", `/api/towns/${town.id}/beads`, undefined, tokenFor(stranger))).status, 403);
      assert.equal((await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "x" }, tokenFor(stranger))).status, 403);
      assert.equal((await as("DELETE", `/api/towns/${town.id}/beads/${made.body.id}`)).status, 200);
      assert.equal((await as("GET", `/api/towns/${town.id}/beads/${made.body.id}`)).status, 404);
      assert.equal((await as("DELETE", `/api/towns/${town.id}/beads/${made.body.id}`)).status, 404);
    });

    it("bead lists paginate correctly at 10 000 beads, whole and filtered", { timeout: 300_000 }, async () => {
      const town = await createTown(call, user, "Ten thousand");
      const total = 10_000;
      let next = 0;
      const made = new Array(total);
      const worker = async () => {
        for (;;) {
          const i = next++;
          if (i >= total) return;
          const type = i % 10 === 0 ? "escalation" : "message";
          for (let attempt = 0; ; attempt++) {
            try {
              const res = await as("POST", `/api/towns/${town.id}/beads`, { title: `bead ${i}`, type });
              if (res.status !== 201) throw new Error(`${res.status} ${res.text}`);
              made[i] = res.body;
              break;
            } catch (e) {
              if (attempt >= 2) throw e;
            }
          }
        }
      };
      await Promise.all(Array.from({ length: 24 }, worker));
      const walk = async (query, limit) => {
        const seen = [];
        let after;
        for (;;) {
          const res = await as("GET", `/api/towns/${town.id}/beads?limit=${limit}${query}${after ? `&after=${after}` : ""}`);
          assert.equal(res.status, 200, res.text);
          seen.push(...res.body);
          if (res.body.length < limit) return seen;
          after = res.body.at(-1).id;
        }
      };
      const all = await walk("", 500);
      assert.equal(all.length, total);
      assert.equal(new Set(all.map((b) => b.id)).size, total, "no bead twice");
      const byId = new Map(made.map((b) => [b.id, b]));
      assert.ok(all.every((b) => byId.has(b.id)), "every bead made, and only those");
      for (let i = 1; i < all.length; i++) assert.ok(all[i - 1].created_at <= all[i].created_at, "oldest first");
      const escalations = await walk("&type=escalation", 250);
      assert.equal(escalations.length, total / 10);
      assert.ok(escalations.every((b) => b.type === "escalation"));
      assert.deepEqual(escalations.map((b) => b.id), all.filter((b) => b.type === "escalation").map((b) => b.id), "a filtered walk keeps the order");
      // A page of 50 deep in the list is exactly the next 50.
      const deep = await as("GET", `/api/towns/${town.id}/beads?limit=50&after=${all[9_000].id}`);
      assert.deepEqual(deep.body.map((b) => b.id), all.slice(9_001, 9_051).map((b) => b.id));
      const open = await as("GET", `/api/towns/${town.id}/beads?limit=50&status=open&after=${all[9_949].id}`);
      assert.deepEqual(open.body.map((b) => b.id), all.slice(9_950).map((b) => b.id));
      assert.equal((await as("GET", `/api/towns/${town.id}/beads?after=00000000-0000-4000-8000-000000000000`)).status, 422);
      assert.equal((await as("GET", `/api/towns/${town.id}/beads?status=bogus`)).status, 422);
      assert.equal((await as("GET", `/api/towns/${town.id}/beads?limit=0`)).status, 422);
    });
  });
}

// Issue 11, end to end against the GitHub/GitLab stand-in (tests/e2e/standins/git_platforms.mjs):
// the App install and GitLab OAuth flows with good, forged, expired and replayed state; the
// repository picker and its cache; rigs made from a repository; git tokens from GitHub, GitLab
// and the town's git_auth, always fresh; the GitLab refresh race; suspended and revoked
// integrations; the webhook; the container's git credential helper in a long session; and no
// token anywhere it should not be.
import { describe, it, before } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../../scripts/lib/jwt.mjs";
import { secrets } from "./harness.mjs";
import { webhookPayload, signWebhook } from "./standins/git_platforms.mjs";
import { freshUser, tokenFor, createTown, internalKey, signState, githubWebhook } from "./fixtures.mjs";

const DASHBOARD = secrets.DASHBOARD_URL;


export default function integrations(ctx) {
  const p = () => ctx.platforms;
  const seen = []; // every response body of this suite but the git-token answers
  const as = async (token, method, path, body) => {
    const res = await ctx.call(method, path, { token, body });
    seen.push(res.text);
    return res;
  };
  /** Follows nothing: the callback's redirect, as the browser would receive it. */
  const land = async (path) => {
    const res = await fetch(`${ctx.worker.url}${path}`, { redirect: "manual" });
    const text = await res.text();
    seen.push(text, res.headers.get("location") ?? "");
    return { status: res.status, location: res.headers.get("location") };
  };
  const result = (location) => new URL(location).searchParams.get("result");
  const gitToken = (token, townId, rigId) => ctx.call("POST", `/api/towns/${townId}/rigs/${rigId}/git-token`, { token });
  const internalGitToken = (rigId) => ctx.call("POST", `/api/internal/rigs/${rigId}/git-token`, { headers: { "x-internal-api-key": internalKey() } });
  const webhook = (event, payload, secret) => githubWebhook(ctx.worker.url, event, payload, secret);
  let nextInstallation = 7_000 + (process.pid % 1000) * 10;
  let nextGithubUser = 8_100_000 + (process.pid % 1000) * 100;
  const INSTALLED = `${secrets.PUBLIC_URL}/api/integrations/github/installed`;

  /** A GitHub user of the stand-in; `code()` is what GitHub's install-time authorization hands back. */
  function githubUser(login = `gh-user-${nextGithubUser + 1}`) {
    const id = ++nextGithubUser;
    p().addGithubUser({ id, login });
    return { id, login, code: () => p().issueGithubUserCode({ user_id: id, redirect_uri: INSTALLED }) };
  }
  const installedPath = (id, state, code) =>
    `/api/integrations/github/installed?installation_id=${id}&setup_action=install${code ? `&code=${code}` : ""}&state=${encodeURIComponent(state)}`;

  /** Installs the App for `user` (or their org), through the whole flow; returns the integration. */
  async function install(user, { org, repos = [{ name: "app", default_branch: "trunk" }, { name: "lib" }] } = {}) {
    const id = ++nextInstallation;
    const token = org ? tokenFor(user, { orgs: [{ orgId: org, role: "owner" }] }) : tokenFor(user);
    const start = await as(token, "POST", "/api/integrations/github/install", org ? { org_id: org } : {});
    assert.equal(start.status, 200, start.text);
    const url = new URL(start.body.install_url);
    assert.equal(url.origin + url.pathname, `${p().url}/apps/${secrets.GITHUB_APP_SLUG}/installations/new`);
    const login = `acct-${id}`;
    // A personal account's installation is its own user's; an org's, its admin's.
    const installer = githubUser(org ? undefined : login);
    p().addInstallation({ id, login, type: org ? "Organization" : "User", repos, users: org ? [installer.id] : [] });
    const back = await land(installedPath(id, url.searchParams.get("state"), installer.code()));
    assert.equal(back.status, 302);
    assert.equal(result(back.location), "success", back.location);
    const owner = org ? `/api/orgs/${org}` : `/api/users/${user}`;
    const list = await as(token, "GET", `${owner}/integrations`);
    const integration = list.body.find((i) => i.account_login === login);
    assert.ok(integration, JSON.stringify(list.body));
    return { integration, installationId: id, login, state: url.searchParams.get("state"), installer };
  }

  async function startedTown(user) {
    const town = await createTown(ctx.call, user, "Integrated");
    assert.equal((await as(tokenFor(user), "POST", `/api/towns/${town.id}/container/start`)).status, 200);
    return { town, containerToken: (await ctx.control.town(town.id)).body.token };
  }

  describe("GitHub App: install flow", () => {
    it("records the installation for the user; the App JWT is RS256, from our App, under 10 minutes", async () => {
      const user = freshUser("gh");
      const { integration, login } = await install(user);
      assert.deepEqual(
        [integration.platform, integration.owner_type, integration.owner_id, integration.account_login, integration.status],
        ["github", "user", user, login, "active"],
      );
      const jwt = p().lastAppJwt();
      assert.equal(jwt.header.alg, "RS256");
      assert.equal(String(jwt.claims.iss), secrets.GITHUB_APP_ID);
      assert.ok(jwt.claims.exp - jwt.claims.iat <= 600);
      assert.equal(new URL(`${DASHBOARD}/x`).origin, new URL((await land("/api/integrations/github/installed")).location).origin, "back to the dashboard");
    });

    it("a replayed, forged, expired or other-flow state lands on invalid_state and records nothing", async () => {
      const user = freshUser("ghs");
      const { state } = await install(user);
      const id = ++nextInstallation;
      const owner = githubUser(`acct-${id}`);
      p().addInstallation({ id, login: `acct-${id}`, repos: [] });
      const now = Math.floor(Date.now() / 1000);
      const claims = { kind: "github_install", nonce: crypto.randomUUID(), user_id: user, org_id: null, exp: now + 300 };
      const cases = {
        replayed: state,
        forged: `${state.split(".")[0]}.${Buffer.from("x".repeat(32)).toString("base64url")}`,
        expired: signState({ ...claims, exp: now - 1 }),
        "another flow": signState({ ...claims, kind: "gitlab_connect" }),
        "too long-lived": signState({ ...claims, exp: now + 3600 }),
        garbage: "not-a-state",
      };
      for (const [name, s] of Object.entries(cases)) {
        const back = await land(installedPath(id, s, owner.code()));
        assert.equal(back.status, 302, name);
        assert.equal(result(back.location), "invalid_state", name);
      }
      const good = signState({ ...claims, nonce: crypto.randomUUID() });
      const back = await land(installedPath(id, good, owner.code()));
      assert.equal(result(back.location), "success", "our own independently written state format is accepted");
      const list = (await as(tokenFor(user), "GET", `/api/users/${user}/integrations`)).body;
      assert.equal(list.length, 2, "only the two good flows recorded anything");
      const nope = await land(installedPath(999999999, signState({ ...claims, nonce: crypto.randomUUID() }), owner.code()));
      assert.equal(result(nope.location), "installation_forbidden", "an installation that is not the user's");
      assert.ok(!nope.location.includes("Not Found"), "never provider text");
    });

    it("an org integration needs an org owner to connect; members read it, others do not", async () => {
      const org = `org-${freshUser("gho")}`;
      const owner = freshUser("owner");
      const member = tokenFor(freshUser("member"), { orgs: [{ orgId: org, role: "member" }] });
      const denied = await as(member, "POST", "/api/integrations/github/install", { org_id: org });
      assert.equal(denied.status, 403);
      const { integration } = await install(owner, { org });
      assert.equal(integration.owner_type, "org");
      assert.equal((await as(member, "GET", `/api/orgs/${org}/integrations`)).body.length, 1);
      assert.equal((await as(member, "GET", `/api/integrations/${integration.id}/repositories`)).status, 200);
      assert.equal((await as(tokenFor(freshUser("x")), "GET", `/api/integrations/${integration.id}/repositories`)).status, 403);
      assert.equal((await as(member, "DELETE", `/api/integrations/${integration.id}`)).status, 403, "members do not delete");
    });
  });

  describe("GitHub App: repositories, rigs and git tokens", () => {
    const user = freshUser("ghr");
    let inst;
    let town;
    let containerToken;
    let rig;

    before(async () => {
      inst = await install(user);
      ({ town, containerToken } = await startedTown(user));
    });

    it("the picker lists the installation's repositories, from the cache until asked to refresh", async () => {
      p().resetCalls();
      const path = `/api/integrations/${inst.integration.id}/repositories`;
      const first = await as(tokenFor(user), "GET", path);
      assert.equal(first.status, 200, first.text);
      const app = first.body.find((r) => r.full_name === `${inst.login}/app`);
      assert.deepEqual([app.default_branch, app.private], ["trunk", true]);
      assert.ok(app.git_url.endsWith(`/${inst.login}/app.git`));
      assert.equal(p().calls("github.installation_repositories"), 1);
      assert.equal((await as(tokenFor(user), "GET", path)).body.length, 2);
      assert.equal(p().calls("github.installation_repositories"), 1, "the second read is the cache");
      const filtered = await as(tokenFor(user), "GET", `${path}?q=LI`);
      assert.deepEqual(filtered.body.map((r) => r.full_name), [`${inst.login}/lib`]);
      await as(tokenFor(user), "GET", `${path}?refresh=1`);
      assert.equal(p().calls("github.installation_repositories"), 2, "refresh asks GitHub");
      assert.equal((await as(tokenFor(freshUser("x")), "GET", path)).status, 403, "another user's integration");
    });

    it("a rig made from a repository takes its URL and default branch, and shows its integration", async () => {
      const res = await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, {
        town_id: town.id, name: "app", platform_integration_id: inst.integration.id, repo: `${inst.login}/app`,
      });
      assert.equal(res.status, 201, res.text);
      rig = res.body;
      assert.ok(rig.git_url.endsWith(`/${inst.login}/app.git`));
      assert.equal(rig.default_branch, "trunk");
      const got = await as(tokenFor(user), "GET", `/api/users/${user}/rigs/${rig.id}`);
      assert.deepEqual(got.body.integration, { platform: "github", account_login: inst.login, status: "active", last_error_code: null });
      const unknown = await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, {
        town_id: town.id, name: "nope", platform_integration_id: inst.integration.id, repo: `${inst.login}/missing`,
      });
      assert.equal(unknown.status, 422);
      assert.equal(unknown.body.error.field, "repo");
      const stranger = freshUser("stranger");
      const theirTown = await createTown(ctx.call, stranger, "Theirs");
      const theft = await as(tokenFor(stranger), "POST", `/api/users/${stranger}/rigs`, {
        town_id: theirTown.id, name: "stolen", platform_integration_id: inst.integration.id, repo: `${inst.login}/app`,
      });
      assert.equal(theft.status, 403, "another owner's integration is refused");
      const manual = await as(tokenFor(user), "GET", `/api/users/${user}/rigs/${(await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "manual", git_url: "https://github.com/acme/manual.git" })).body.id}`);
      assert.equal(manual.body.integration, null, "the manual path still works");
    });

    it("git tokens are installation tokens scoped to the rig's repository, cached until near expiry", async () => {
      p().resetCalls();
      const res = await gitToken(containerToken, town.id, rig.id);
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.source, "github_app");
      assert.match(res.body.token, /^ghs_/);
      assert.ok(res.body.expires_at > Date.now() / 1000 + 3000);
      const minted = p().tokens().github.find((t) => t.token === res.body.token);
      assert.deepEqual(minted.repositories, ["app"], "scoped to the rig's repository");
      const again = await gitToken(containerToken, town.id, rig.id);
      assert.equal(again.body.token, res.body.token);
      const internal = await internalGitToken(rig.id);
      assert.equal(internal.status, 200);
      assert.equal(internal.body.token, res.body.token);
      assert.equal(p().calls("github.access_tokens"), 1, "one mint for three requests");
      assert.equal((await gitToken(tokenFor(user), town.id, rig.id)).status, 401, "not with a user token");
      assert.equal((await ctx.call("POST", `/api/internal/rigs/${rig.id}/git-token`)).status, 401, "not without the key");
    });

    it("the webhook suspends, unsuspends and revokes: a refused integration answers its code, never a token", async () => {
      const payload = (action) => {
        const body = webhookPayload("installation", action);
        body.installation.id = inst.installationId;
        return body;
      };
      const forged = await webhook("installation", payload("suspend"), "wrong-secret");
      assert.equal(forged.status, 401);
      assert.equal((await gitToken(containerToken, town.id, rig.id)).status, 200, "a forged webhook changed nothing");
      const unsigned = await fetch(`${ctx.worker.url}/api/webhooks/github`, { method: "POST", headers: { "x-github-event": "installation" }, body: JSON.stringify(payload("suspend")) });
      assert.equal(unsigned.status, 401);
      p().suspendInstallation(inst.installationId);
      const applied = await webhook("installation", payload("suspend"));
      assert.equal(applied.status, 200);
      assert.deepEqual(await applied.json(), { updated: 1 }, "the webhook itself recorded the suspension");
      const suspended = await gitToken(containerToken, town.id, rig.id);
      assert.equal(suspended.status, 409);
      assert.equal(suspended.body.error.code, "integration_suspended");
      assert.ok(!/ghs_/.test(suspended.text));
      assert.equal((await as(tokenFor(user), "GET", `/api/users/${user}/rigs/${rig.id}`)).body.integration.status, "suspended");
      p().unsuspendInstallation(inst.installationId);
      assert.equal((await webhook("installation", payload("unsuspend"))).status, 200);
      assert.equal((await gitToken(containerToken, town.id, rig.id)).status, 200);
      assert.equal((await webhook("ping", { zen: "Keep it logically awesome." })).status, 204, "other events: 204");
      p().deleteInstallation(inst.installationId);
      assert.equal((await webhook("installation", payload("deleted"))).status, 200);
      const revoked = await internalGitToken(rig.id);
      assert.equal(revoked.status, 409);
      assert.equal(revoked.body.error.code, "integration_revoked");
    });
  });

  describe("attacks replayed (issue 18): refused, and nothing left behind", () => {
    const connected = async (user) => (await as(tokenFor(user), "GET", `/api/users/${user}/integrations`)).body;
    const startInstall = async (token, body = {}) =>
      new URL((await as(token, "POST", "/api/integrations/github/install", body)).body.install_url).searchParams.get("state");

    it("another account's installation cannot be connected with one's own state; its owner still can", async () => {
      const victim = freshUser("victim");
      const attacker = freshUser("attacker");
      const id = ++nextInstallation;
      const victimGithub = githubUser(`acct-${id}`);
      p().addInstallation({ id, login: `acct-${id}`, repos: [{ name: "secret" }] });
      const attackerGithub = githubUser();
      p().resetCalls();
      const noCode = await land(installedPath(id, await startInstall(tokenFor(attacker))));
      assert.equal(result(noCode.location), "authorization_required", "no proof, no connection");
      const ownCode = await land(installedPath(id, await startInstall(tokenFor(attacker)), attackerGithub.code()));
      assert.equal(result(ownCode.location), "installation_forbidden", "the attacker's GitHub identity cannot access it");
      const forgedCode = await land(installedPath(id, await startInstall(tokenFor(attacker)), "not-a-code"));
      assert.equal(result(forgedCode.location), "exchange_failed");
      assert.deepEqual(await connected(attacker), [], "no integration row for the attacker");
      assert.equal(p().calls("github.access_tokens"), 0, "no installation token was minted");
      // The real owner connects it; then deletes the integration while the App stays installed.
      const back = await land(installedPath(id, await startInstall(tokenFor(victim)), victimGithub.code()));
      assert.equal(result(back.location), "success");
      const [integration] = await connected(victim);
      assert.equal((await as(tokenFor(victim), "DELETE", `/api/integrations/${integration.id}`)).status, 200);
      const retake = await land(installedPath(id, await startInstall(tokenFor(attacker)), attackerGithub.code()));
      assert.equal(result(retake.location), "installation_forbidden", "a deleted integration needs the same proof");
      assert.deepEqual(await connected(attacker), []);
      const reconnect = await land(installedPath(id, await startInstall(tokenFor(victim)), victimGithub.code()));
      assert.equal(result(reconnect.location), "success", "its owner reconnects it");
    });

    it("an org owner connects an org installation they administer, never a personal one", async () => {
      const org = `org-${freshUser("ghorg")}`;
      const owner = freshUser("orgowner");
      const token = tokenFor(owner, { orgs: [{ orgId: org, role: "owner" }] });
      const admin = githubUser();
      const orgInst = ++nextInstallation;
      p().addInstallation({ id: orgInst, login: `acct-${orgInst}`, type: "Organization", users: [admin.id] });
      const personal = ++nextInstallation;
      const personalGithub = githubUser(`acct-${personal}`);
      p().addInstallation({ id: personal, login: `acct-${personal}`, type: "User" });
      const wrong = await land(installedPath(personal, await startInstall(token, { org_id: org }), personalGithub.code()));
      assert.equal(result(wrong.location), "installation_forbidden", "an org's integration is an organization's installation");
      const notAdmin = await land(installedPath(orgInst, await startInstall(token, { org_id: org }), personalGithub.code()));
      assert.equal(result(notAdmin.location), "installation_forbidden");
      assert.deepEqual((await as(token, "GET", `/api/orgs/${org}/integrations`)).body, []);
      const ok = await land(installedPath(orgInst, await startInstall(token, { org_id: org }), admin.code()));
      assert.equal(result(ok.location), "success");
      assert.equal((await as(token, "GET", `/api/orgs/${org}/integrations`)).body[0].account_login, `acct-${orgInst}`);
    });

    it("a rig that names an integration takes its URL from it: a git_url on another host is 422 and writes nothing", async () => {
      const user = freshUser("exfil");
      const inst = await install(user);
      const town = await createTown(ctx.call, user, "Exfil");
      const rigs = async () => (await as(tokenFor(user), "GET", `/api/users/${user}/towns/${town.id}/rigs`)).body;
      for (const git_url of [
        `https://attacker.example/${inst.login}/app.git`,
        `https://${new URL(p().url).host}@attacker.example/${inst.login}/app.git`,
        `${p().gitUrl}/${inst.login}/not-in-the-installation.git`,
      ]) {
        const res = await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "web", platform_integration_id: inst.integration.id, git_url });
        assert.equal(res.status, 422, `${git_url}: ${res.text}`);
        assert.equal(res.body.error.field, "git_url");
      }
      assert.deepEqual(await rigs(), [], "no rig was written");
      const ok = await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, {
        town_id: town.id, name: "web", platform_integration_id: inst.integration.id, git_url: `${p().gitUrl}/${inst.login.toUpperCase()}/APP`,
      });
      assert.equal(ok.status, 201, ok.text);
      assert.equal(ok.body.git_url, `${p().gitUrl}/${inst.login}/app.git`, "the provider's URL, not the one given");
      assert.equal(ok.body.default_branch, "trunk");
      const token = await internalGitToken(ok.body.id);
      assert.equal(token.status, 200, token.text);
      assert.equal(token.body.host, new URL(p().url).hostname, "the token is labelled with the integration's host");
    });

    it("a rig from an integration clones and pushes through the container's credential helper", async () => {
      const user = freshUser("push");
      const inst = await install(user);
      const { town } = await startedTown(user);
      const rig = (await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "app", platform_integration_id: inst.integration.id, repo: `${inst.login}/app` })).body;
      const dir = mkdtempSync(join(tmpdir(), "gastown-push-"));
      const gitconfig = join(ctx.control.workdir, town.id, "gitconfig");
      assert.ok(existsSync(gitconfig), "the control server wrote the town's gitconfig");
      // As an agent session runs git: the town's gitconfig and the rig; the stand-in's CA.
      const env = {
        ...process.env, GIT_CONFIG_GLOBAL: gitconfig, GIT_CONFIG_NOSYSTEM: "1", GIT_TERMINAL_PROMPT: "0",
        GASTOWN_RIG_ID: rig.id, GASTOWN_WORKER_URL: ctx.worker.url, GIT_SSL_CAINFO: p().gitCaFile,
        GIT_AUTHOR_NAME: "Agent", GIT_AUTHOR_EMAIL: "agent@example.com", GIT_COMMITTER_NAME: "Agent", GIT_COMMITTER_EMAIL: "agent@example.com",
      };
      // Asynchronous: the stand-in lives in this process and must keep answering.
      const git = (args, cwd = dir, extra = {}) => new Promise((resolve) => {
        const child = spawn("git", args, { cwd, env: { ...env, ...extra } });
        let out = "";
        child.stdout.on("data", (d) => (out += d));
        child.stderr.on("data", (d) => (out += d));
        child.on("close", (status) => resolve({ status, out }));
      });
      try {
        const clone = await git(["clone", rig.git_url, "work"]);
        assert.equal(clone.status, 0, clone.out);
        const work = join(dir, "work");
        assert.equal((await git(["commit", "--allow-empty", "-m", "work from the rig"], work)).status, 0);
        const push = await git(["push", "origin", "HEAD:refs/heads/gastown/pushed"], work);
        assert.equal(push.status, 0, push.out);
        const bare = p().gitRepoPath(inst.login, "app");
        assert.equal(execFileSync("git", ["--git-dir", bare, "log", "-1", "--format=%s", "gastown/pushed"], { encoding: "utf8" }).trim(), "work from the rig");
        assert.equal(execFileSync("git", ["--git-dir", bare, "symbolic-ref", "HEAD"], { encoding: "utf8" }).trim(), "refs/heads/trunk");
        const config = readFileSync(join(work, ".git", "config"), "utf8");
        assert.ok(!/ghs_|x-access-token/.test(config), "no token in the remote");
        assert.ok(!/ghs_/.test(clone.out + push.out), "no token in git's output");
        const pushes = p().gitLog().filter((e) => e.service === "git-receive-pack" && e.repo === "app" && e.owner === inst.login);
        assert.ok(pushes.some((e) => e.status === "ok" && e.username === "x-access-token"), JSON.stringify(pushes));
        // Without the helper, the host wants a token.
        const anonymous = await git(["clone", rig.git_url, "anon"], dir, { GIT_CONFIG_GLOBAL: "/dev/null" });
        assert.notEqual(anonymous.status, 0, "the repository is not public");
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("a GitLab connection's token goes only to its own instance", async () => {
      const user = freshUser("glx");
      const start = await as(tokenFor(user), "POST", "/api/integrations/gitlab/connect", {});
      const q = new URL(start.body.authorize_url).searchParams;
      const code = p().issueGitlabCode({
        user: { id: 4300 + (process.pid % 100), username: `glx-${user}` },
        projects: [{ path_with_namespace: `grp-${user}/web` }],
        redirect_uri: q.get("redirect_uri"),
        code_challenge: q.get("code_challenge"),
      });
      assert.equal(result((await land(`/api/integrations/gitlab/callback?code=${code}&state=${encodeURIComponent(q.get("state"))}`)).location), "success");
      const integration = (await as(tokenFor(user), "GET", `/api/users/${user}/integrations`)).body[0];
      const town = await createTown(ctx.call, user, "GitLabExfil");
      const res = await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, {
        town_id: town.id, name: "web", platform_integration_id: integration.id, git_url: `https://attacker.example/grp-${user}/web.git`,
      });
      assert.equal(res.status, 422, res.text);
      assert.deepEqual((await as(tokenFor(user), "GET", `/api/users/${user}/towns/${town.id}/rigs`)).body, []);
    });

    it("a leaked container token cannot outlive a rotation: inside the grace it calls back but never mints", async () => {
      const user = freshUser("leak");
      const { town } = await startedTown(user);
      const leaked = (await ctx.control.town(town.id)).body.token;
      const claims = (t) => JSON.parse(Buffer.from(t.split(".")[1], "base64url").toString());
      assert.equal((await as(tokenFor(user), "POST", `/api/towns/${town.id}/container/refresh-token`)).status, 200);
      // Inside the grace (2 s here): the leaked token still calls back, but mints nothing.
      const within = await as(leaked, "GET", `/api/mayor/${town.id}/tools/rigs`);
      assert.deepEqual([within.status, within.body.error.code], [403, "forbidden"], "admitted within the grace (a mayor tool then wants the mayor's key)");
      for (const path of [`/api/towns/${town.id}/refresh-container-token`, `/api/towns/${town.id}/sandbox-token`]) {
        const res = await as(leaked, "POST", path);
        assert.equal(res.status, 401, `${path}: ${res.text}`);
        assert.equal(res.body.error.code, "token_revoked", path);
        assert.ok(!/eyJ/.test(res.text), "no token in the answer");
      }
      const current = (await ctx.control.town(town.id)).body.token;
      assert.equal(claims(current).gen, claims(leaked).gen + 1, "the rotation pushed the new generation");
      const renewed = await as(current, "POST", `/api/towns/${town.id}/refresh-container-token`);
      assert.equal(renewed.status, 200, "the container that really rotated keeps working");
      assert.equal(claims(renewed.body.token).gen, claims(current).gen);
      assert.equal((await as(current, "POST", `/api/towns/${town.id}/sandbox-token`)).status, 200);
    });

    it("webhooks: a replayed delivery is applied once, and no replay moves an installation away from GitHub's state", async () => {
      const user = freshUser("replay");
      const inst = await install(user);
      const status = async () => (await as(tokenFor(user), "GET", `/api/users/${user}/integrations`)).body[0].status;
      const payload = (action) => {
        const body = webhookPayload("installation", action);
        body.installation.id = inst.installationId;
        return JSON.stringify(body);
      };
      const send = async (action, delivery) => {
        const res = await githubWebhook(ctx.worker.url, "installation", payload(action), undefined, { delivery });
        return { status: res.status, body: await res.json() };
      };
      const suspendDelivery = crypto.randomUUID();
      p().suspendInstallation(inst.installationId);
      assert.deepEqual(await send("suspend", suspendDelivery), { status: 200, body: { updated: 1 } });
      assert.equal(await status(), "suspended");
      const unsuspendDelivery = crypto.randomUUID();
      p().unsuspendInstallation(inst.installationId);
      assert.deepEqual(await send("unsuspend", unsuspendDelivery), { status: 200, body: { updated: 1 } });
      assert.equal(await status(), "active");
      // GitHub suspends it again; a captured unsuspend, replayed, must not lift that.
      p().suspendInstallation(inst.installationId);
      assert.deepEqual(await send("suspend", crypto.randomUUID()), { status: 200, body: { updated: 1 } });
      assert.deepEqual(await send("unsuspend", unsuspendDelivery), { status: 200, body: { duplicate: true } }, "the same delivery");
      assert.deepEqual(await send("unsuspend", crypto.randomUUID()), { status: 200, body: { updated: 0 } }, "a new delivery id on a captured body");
      assert.equal(await status(), "suspended");
      // And once GitHub lifts it, captured suspend and deleted deliveries change nothing.
      p().unsuspendInstallation(inst.installationId);
      assert.deepEqual(await send("unsuspend", crypto.randomUUID()), { status: 200, body: { updated: 1 } });
      assert.deepEqual(await send("suspend", suspendDelivery), { status: 200, body: { duplicate: true } });
      assert.deepEqual(await send("deleted", crypto.randomUUID()), { status: 200, body: { updated: 0 } });
      assert.equal(await status(), "active");
      const missing = await fetch(`${ctx.worker.url}/api/webhooks/github`, {
        method: "POST",
        headers: { "x-github-event": "installation", "x-hub-signature-256": signWebhook(secrets.GITHUB_WEBHOOK_SECRET, payload("suspend")) },
        body: payload("suspend"),
      });
      assert.equal(missing.status, 400, "a delivery without its id is refused");
      assert.equal(await status(), "active");
    });
  });

  describe("rig reconnect (issue 20): PATCH a rig's repository, integration or branch", () => {
    const patch = (token, path, body) => as(token, "PATCH", path, body);
    /** Connects installation `id` again for `user` (the App stayed installed), through the whole proof. */
    async function reconnectInstallation(user, id, installer, old) {
      const start = await as(tokenFor(user), "POST", "/api/integrations/github/install", {});
      const state = new URL(start.body.install_url).searchParams.get("state");
      const back = await land(installedPath(id, state, installer.code()));
      assert.equal(result(back.location), "success", back.location);
      const list = (await as(tokenFor(user), "GET", `/api/users/${user}/integrations`)).body;
      return list.find((i) => i.id !== old.id && i.account_login === old.account_login);
    }

    it("a rig whose integration was removed is reconnected; its next git token comes from the new one", async () => {
      const user = freshUser("reconnect");
      const inst = await install(user);
      const town = await createTown(ctx.call, user, "Reconnect");
      const path = (rig) => `/api/users/${user}/rigs/${rig.id}`;
      const rig = (await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, {
        town_id: town.id, name: "app", platform_integration_id: inst.integration.id, repo: `${inst.login}/app`,
      })).body;
      assert.equal((await internalGitToken(rig.id)).status, 200);
      assert.equal((await as(tokenFor(user), "DELETE", `/api/integrations/${inst.integration.id}`)).status, 200);
      const orphaned = await internalGitToken(rig.id);
      assert.equal(orphaned.status, 409);
      assert.equal(orphaned.body.error.code, "integration_missing");
      const fresh = await reconnectInstallation(user, inst.installationId, inst.installer, inst.integration);
      assert.notEqual(fresh.id, inst.integration.id, "a new integration row");

      // Bad input first: each a 4xx naming its field, and nothing changes.
      const before = (await as(tokenFor(user), "GET", path(rig))).body;
      for (const [body, status, field] of [
        [{}, 422, "body"],
        [{ platform_integration_id: fresh.id, repo: `${inst.login}/missing` }, 422, "repo"],
        [{ platform_integration_id: "no-such-integration" }, 422, "platform_integration_id"],
        [{ repo: "a/b", git_url: "https://github.com/a/b.git" }, 422, "repo"],
        [{ platform_integration_id: fresh.id, git_url: `https://attacker.example/${inst.login}/app.git` }, 422, "git_url"],
        [{ default_branch: "a..b" }, 422, "default_branch"],
      ]) {
        const res = await patch(tokenFor(user), path(rig), body);
        assert.equal(res.status, status, `${JSON.stringify(body)}: ${res.text}`);
        assert.equal(res.body.error.field, field, JSON.stringify(body));
      }
      assert.equal((await as(tokenFor(user), "PATCH", path(rig), "not json")).status, 400);
      assert.deepEqual((await as(tokenFor(user), "GET", path(rig))).body, before, "nothing was written");

      const res = await patch(tokenFor(user), path(rig), { platform_integration_id: fresh.id });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(
        [res.body.platform_integration_id, res.body.git_url, res.body.default_branch, res.body.name],
        [fresh.id, rig.git_url, rig.default_branch, rig.name],
        "the same repository, now through the new integration",
      );
      p().resetCalls();
      const token = await internalGitToken(rig.id);
      assert.equal(token.status, 200, token.text);
      const minted = p().tokens().github.find((t) => t.token === token.body.token);
      assert.equal(String(minted.installation_id), String(inst.installationId));
      assert.equal(p().calls("github.access_tokens"), 1, "minted anew for the new integration, not a cached token of the old");
      const town_rigs = (await as(tokenFor(user), "GET", `/api/towns/${town.id}/rigs`)).body;
      assert.equal(town_rigs.find((r) => r.id === rig.id).platform_integration_id, fresh.id, "the town's own record agrees");

      // Another repository of the integration: its URL and default branch come from GitHub.
      const lib = await patch(tokenFor(user), path(rig), { repo: `${inst.login}/lib` });
      assert.equal(lib.status, 200, lib.text);
      assert.ok(lib.body.git_url.endsWith(`/${inst.login}/lib.git`), lib.body.git_url);
      assert.equal(lib.body.default_branch, "main");
      // Off the integration, keeping its URL: the town's git_auth would be the credential, and there is none.
      const manual = await patch(tokenFor(user), `/api/towns/${town.id}/rigs/${rig.id}`, { platform_integration_id: null, default_branch: "dev" });
      assert.equal(manual.status, 200, manual.text);
      assert.deepEqual([manual.body.platform_integration_id, manual.body.git_url, manual.body.default_branch], [null, lib.body.git_url, "dev"]);
      const none = await internalGitToken(rig.id);
      assert.equal(none.status, 404);
      assert.equal(none.body.error.code, "no_git_credentials");
      // And back onto it.
      const back = await patch(tokenFor(user), path(rig), { platform_integration_id: fresh.id });
      assert.equal(back.status, 200, back.text);
      assert.equal(back.body.default_branch, "dev", "the same repository keeps its branch");
      assert.equal((await internalGitToken(rig.id)).status, 200);
    });

    it("the integration must be the town owner's: another user's is 403 and changes nothing", async () => {
      const user = freshUser("rpown");
      const other = freshUser("rpother");
      const mine = await install(user);
      const theirs = await install(other);
      const town = await createTown(ctx.call, user, "Mine");
      const rig = (await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, {
        town_id: town.id, name: "app", platform_integration_id: mine.integration.id, repo: `${mine.login}/app`,
      })).body;
      const res = await patch(tokenFor(user), `/api/users/${user}/rigs/${rig.id}`, { platform_integration_id: theirs.integration.id, repo: `${theirs.login}/app` });
      assert.equal(res.status, 403, res.text);
      assert.equal((await as(tokenFor(user), "GET", `/api/users/${user}/rigs/${rig.id}`)).body.platform_integration_id, mine.integration.id);
      assert.equal((await patch(tokenFor(other), `/api/users/${user}/rigs/${rig.id}`, { name: "x" })).status, 403, "another user's route");
      assert.equal((await patch(tokenFor(other), `/api/towns/${town.id}/rigs/${rig.id}`, { name: "x" })).status, 403, "another user's town");
      assert.equal((await patch(tokenFor(other), `/api/users/${other}/rigs/${rig.id}`, { name: "x" })).status, 404, "not a rig of theirs");
      const elsewhere = await createTown(ctx.call, user, "Elsewhere");
      assert.equal((await patch(tokenFor(user), `/api/towns/${elsewhere.id}/rigs/${rig.id}`, { name: "x" })).status, 404, "a rig of another town");
    });

    it("org rigs: members and owners may patch, other orgs and outsiders may not; names stay unique", async () => {
      const org = `org-${freshUser("rporg")}`;
      const owner = freshUser("rpowner");
      const member = freshUser("rpmember");
      const ownerToken = tokenFor(owner, { orgs: [{ orgId: org, role: "owner" }] });
      const memberToken = tokenFor(member, { orgs: [{ orgId: org, role: "member" }] });
      const otherOrg = tokenFor(freshUser("rpx"), { orgs: [{ orgId: `${org}-other`, role: "owner" }] });
      const town = (await as(ownerToken, "POST", `/api/orgs/${org}/towns`, { name: "Org" })).body;
      const mk = async (name) => (await as(ownerToken, "POST", `/api/orgs/${org}/rigs`, { town_id: town.id, name, git_url: `https://github.com/acme/${name}.git` })).body;
      const rig = await mk("one");
      await mk("two");
      const byMember = await patch(memberToken, `/api/orgs/${org}/rigs/${rig.id}`, { default_branch: "develop" });
      assert.equal(byMember.status, 200, byMember.text);
      assert.equal(byMember.body.default_branch, "develop");
      const byMemberTown = await patch(memberToken, `/api/towns/${town.id}/rigs/${rig.id}`, { git_url: "https://github.com/acme/moved.git" });
      assert.equal(byMemberTown.status, 200, byMemberTown.text);
      assert.equal((await patch(ownerToken, `/api/orgs/${org}/rigs/${rig.id}`, { name: "uno" })).status, 200);
      const taken = await patch(ownerToken, `/api/orgs/${org}/rigs/${rig.id}`, { name: "two" });
      assert.equal(taken.status, 409, taken.text);
      assert.equal((await patch(otherOrg, `/api/orgs/${org}/rigs/${rig.id}`, { name: "x" })).status, 403);
      assert.equal((await patch(otherOrg, `/api/towns/${town.id}/rigs/${rig.id}`, { name: "x" })).status, 403);
      assert.equal((await patch(tokenFor(freshUser("nobody")), `/api/towns/${town.id}/rigs/${rig.id}`, { name: "x" })).status, 403);
      const got = (await as(ownerToken, "GET", `/api/orgs/${org}/rigs/${rig.id}`)).body;
      assert.deepEqual([got.name, got.default_branch, got.git_url], ["uno", "develop", "https://github.com/acme/moved.git"]);
    });

    it("concurrent patches leave the owner's record and the town's copy the same", async () => {
      const user = freshUser("rprace");
      const town = await createTown(ctx.call, user, "Race");
      const rig = (await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "app", git_url: "https://github.com/acme/app.git" })).body;
      const branches = Array.from({ length: 12 }, (_, i) => `b${i}`);
      const answers = await Promise.all(branches.map((b, i) =>
        patch(tokenFor(user), i % 2 ? `/api/towns/${town.id}/rigs/${rig.id}` : `/api/users/${user}/rigs/${rig.id}`, { default_branch: b, git_url: `https://github.com/acme/app-${b}.git` })));
      for (const a of answers) assert.ok([200, 409].includes(a.status), a.text);
      assert.ok(answers.some((a) => a.status === 200));
      const record = (await as(tokenFor(user), "GET", `/api/users/${user}/rigs/${rig.id}`)).body;
      const copy = (await as(tokenFor(user), "GET", `/api/towns/${town.id}/rigs`)).body.find((r) => r.id === rig.id);
      assert.deepEqual([copy.default_branch, copy.git_url], [record.default_branch, record.git_url]);
      assert.equal(record.git_url, `https://github.com/acme/app-${record.default_branch}.git`, "one patch's fields, whole");
    });
  });

  describe("GitHub suspension seen when minting", () => {
    it("a 403 from GitHub marks the integration suspended and answers integration_suspended", async () => {
      const user = freshUser("ghx");
      const inst = await install(user);
      const { town, containerToken } = await startedTown(user);
      const rig = (await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "app", platform_integration_id: inst.integration.id, repo: `${inst.login}/app` })).body;
      p().suspendInstallation(inst.installationId);
      const res = await gitToken(containerToken, town.id, rig.id);
      assert.equal(res.status, 409, res.text);
      assert.equal(res.body.error.code, "integration_suspended");
      p().unsuspendInstallation(inst.installationId);
    });
  });

  describe("GitLab: connect, projects, tokens and the refresh race", () => {
    const user = freshUser("gl");
    let integration;
    let town;
    let containerToken;
    let rig;

    before(async () => {
      ({ town, containerToken } = await startedTown(user));
    });

    it("connects through OAuth with PKCE; access_denied and a replayed state do not", async () => {
      p().setTokenTtl({ gitlab: 60 }); // the first access token is already within the refresh margin
      const start = await as(tokenFor(user), "POST", "/api/integrations/gitlab/connect", {});
      assert.equal(start.status, 200, start.text);
      const url = new URL(start.body.authorize_url);
      assert.equal(url.origin + url.pathname, `${p().url}/oauth/authorize`);
      const q = url.searchParams;
      assert.equal(q.get("client_id"), secrets.GITLAB_CLIENT_ID);
      assert.equal(q.get("redirect_uri"), `${secrets.PUBLIC_URL}/api/integrations/gitlab/callback`);
      assert.equal(q.get("code_challenge_method"), "S256");
      const code = p().issueGitlabCode({
        user: { id: 4242, username: `gl-${user}` },
        projects: [{ path_with_namespace: `grp-${user}/svc`, default_branch: "develop", visibility: "private" }],
        redirect_uri: q.get("redirect_uri"),
        code_challenge: q.get("code_challenge"),
      });
      const state = encodeURIComponent(q.get("state"));
      const back = await land(`/api/integrations/gitlab/callback?code=${code}&state=${state}`);
      assert.equal(result(back.location), "success", back.location);
      const replay = await land(`/api/integrations/gitlab/callback?code=${code}&state=${state}`);
      assert.equal(result(replay.location), "invalid_state");
      const denied = (await as(tokenFor(user), "POST", "/api/integrations/gitlab/connect", {})).body.authorize_url;
      const deniedBack = await land(`/api/integrations/gitlab/callback?error=access_denied&error_description=The+user+denied&state=${encodeURIComponent(new URL(denied).searchParams.get("state"))}`);
      assert.equal(result(deniedBack.location), "access_denied");
      const list = (await as(tokenFor(user), "GET", `/api/users/${user}/integrations`)).body;
      assert.equal(list.length, 1);
      integration = list[0];
      assert.deepEqual([integration.platform, integration.account_login], ["gitlab", `gl-${user}`]);
      assert.ok(!JSON.stringify(list).match(/token/i), "no token field in the list");
    });

    it("the refresh race: parallel git-token requests spend the refresh token exactly once", async () => {
      const res = await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, {
        town_id: town.id, name: "svc", platform_integration_id: integration.id, repo: `grp-${user}/svc`,
      });
      assert.equal(res.status, 201, res.text);
      rig = res.body;
      assert.equal(rig.default_branch, "develop");
      // The stored token is still one of 60 s (due); the next refresh gives a long-lived one.
      p().setTokenTtl({ gitlab: 7200 });
      p().resetCalls();
      p().setLatency(150);
      const answers = await Promise.all(Array.from({ length: 6 }, () => gitToken(containerToken, town.id, rig.id)));
      p().setLatency(0);
      for (const a of answers) assert.equal(a.status, 200, a.text);
      assert.equal(p().calls("gitlab.token.refresh_token"), 1, "exactly one upstream refresh");
      assert.equal(new Set(answers.map((a) => a.body.token)).size, 1, "everyone got the new token");
      assert.equal(answers[0].body.source, "gitlab_oauth");
      const again = await gitToken(containerToken, town.id, rig.id);
      assert.equal(again.body.token, answers[0].body.token, "then cached");
      assert.equal(p().calls("gitlab.token.refresh_token"), 1);
    });
  });

  describe("the town's git_auth as the fallback", () => {
    it("a manual rig gets the town's token for its host, and nothing for another host", async () => {
      const user = freshUser("fb");
      const { town, containerToken } = await startedTown(user);
      const mk = async (name, git_url) => (await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, { town_id: town.id, name, git_url })).body;
      const gh = await mk("gh", "https://github.com/acme/app.git");
      const other = await mk("other", "https://git.example.org/acme/app.git");
      const none = await gitToken(containerToken, town.id, gh.id);
      assert.equal(none.status, 404);
      assert.equal(none.body.error.code, "no_git_credentials");
      const patch = await as(tokenFor(user), "PATCH", `/api/towns/${town.id}/config`, { git_auth: { github_token: "ghp_town_fallback_token_0123456789" } });
      assert.equal(patch.status, 200);
      const res = await gitToken(containerToken, town.id, gh.id);
      assert.equal(res.status, 200, res.text);
      assert.deepEqual([res.body.token, res.body.source], ["ghp_town_fallback_token_0123456789", "town_config"]);
      assert.equal((await gitToken(containerToken, town.id, other.id)).status, 404, "never a token for another host");
    });
  });

  describe("the container's git credential helper", () => {
    it("asks the worker per git operation and fetches a new token when the old one nears expiry", async () => {
      const user = freshUser("cred");
      const inst = await install(user);
      const { town } = await startedTown(user);
      const rig = (await as(tokenFor(user), "POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "app", platform_integration_id: inst.integration.id, repo: `${inst.login}/app` })).body;
      // Asynchronous: the stand-in GitHub lives in this process and must keep answering.
      const rigHost = new URL(rig.git_url).host;
      const helper = (action, input = `protocol=https\nhost=${rigHost}\npath=x/app.git\n\n`) =>
        new Promise((resolve) => {
          const child = spawn(join(ROOT, "target", "release", "gastown-control"), ["git-credential", action], {
            env: { ...process.env, GASTOWN_WORKER_URL: ctx.worker.url, GASTOWN_TOWN_ID: town.id, GASTOWN_RIG_ID: rig.id, GASTOWN_WORKDIR: ctx.control.workdir },
          });
          let stdout = "";
          let stderr = "";
          child.stdout.on("data", (d) => (stdout += d));
          child.stderr.on("data", (d) => (stderr += d));
          child.on("close", (status) => resolve({ status, stdout, stderr }));
          child.stdin.end(input);
        });
      const password = (out) => out.stdout.match(/^password=(.*)$/m)?.[1];
      // Tokens that live two minutes: always inside the five-minute margin.
      p().setTokenTtl({ github: 120 });
      p().resetCalls();
      const first = await helper("get");
      assert.equal(first.status, 0, first.stderr);
      assert.match(first.stdout, /^username=x-access-token$/m);
      const t1 = password(first);
      assert.match(t1, /^ghs_/);
      const second = await helper("get");
      assert.equal(second.status, 0, second.stderr);
      assert.notEqual(password(second), t1, "a token near expiry is never handed out again");
      assert.equal(p().calls("github.access_tokens"), 2);
      // Long-lived tokens are reused across operations.
      p().setTokenTtl({ github: 3600 });
      const third = await helper("get");
      const fourth = await helper("get");
      assert.equal(password(third), password(fourth));
      assert.equal(p().calls("github.access_tokens"), 3);
      for (const out of [first, second, third]) assert.ok(!out.stderr.includes("ghs_"), "no token on stderr");
      // A submodule on another host never receives the rig's token.
      const elsewhere = await helper("get", "protocol=https\nhost=evil.example\npath=x/y.git\n\n");
      assert.notEqual(elsewhere.status, 0);
      assert.equal(elsewhere.stdout, "", "nothing for another host");
      const direct = await ctx.call("POST", `/api/internal/rigs/${rig.id}/git-token`, { headers: { "x-internal-api-key": internalKey() } });
      assert.equal(direct.body.host, "127.0.0.1", "the answer names the repository's host");
    });
  });

  describe("no token where it does not belong", () => {
    it("no response but the git-token answers, and no worker log line, holds a token", async () => {
      const issued = [...p().tokens().github.map((t) => t.token), ...p().tokens().gitlab.flatMap((t) => [t.access_token, t.refresh_token])];
      assert.ok(issued.length > 5);
      const log = ctx.worker.output();
      for (const token of issued) {
        assert.ok(!seen.some((text) => text.includes(token)), "a response leaked a provider token");
        assert.ok(!log.includes(token), "the worker log holds a provider token");
      }
      assert.ok(!log.includes("BEGIN RSA PRIVATE KEY"));
    });
  });
}

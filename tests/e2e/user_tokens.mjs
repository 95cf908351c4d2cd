// Issue 12, end to end against the GitHub stand-in: connecting a user's GitHub identity (good,
// forged, expired and replayed state; access_denied; a failed exchange), status, commits as the
// user through the git-token endpoints with the bot as the fallback (not connected, no push
// access, a refused refresh, a revocation webhook), the refresh race, disconnect, personal data
// deletion, and the feature flag.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { secrets, startWorker, makePersistDir, removePersistDir, migrateD1, client } from "./harness.mjs";
import { webhookPayload } from "./standins/git_platforms.mjs";
import { freshUser, tokenFor, createTown, internalKey, signState, githubWebhook } from "./fixtures.mjs";

const CALLBACK = `${secrets.PUBLIC_URL}/api/integrations/github/user-connect/callback`;


let nextGithubId = 583_000 + (process.pid % 1000) * 100;
let nextInstallation = 90_000 + (process.pid % 1000) * 100;

export default function userTokens(ctx) {
  const p = () => ctx.platforms;
  const as = (token, method, path, body) => ctx.call(method, path, { token, body });
  const land = async (path, base = ctx.worker.url) => {
    const res = await fetch(`${base}${path}`, { redirect: "manual" });
    await res.text();
    return { status: res.status, location: res.headers.get("location") ?? "" };
  };
  const result = (location) => new URL(location).searchParams.get("result");
  const webhook = (event, payload, secret) => githubWebhook(ctx.worker.url, event, payload, secret);

  /**
   * A user with an App installation, a started town and a rig from the installation's repo
   * `acct/app`, and a GitHub identity (`push` on that repo, or not).
   */
  async function world({ push = true, call = ctx.call } = {}) {
    const user = freshUser("ut");
    const installationId = ++nextInstallation;
    const login = `acct-${installationId}`;
    p().addInstallation({ id: installationId, login, repos: [{ name: "app" }] });
    // The account that installs the App proves it at GitHub's install-time authorization.
    const installer = ++nextGithubId;
    p().addGithubUser({ id: installer, login });
    const code = p().issueGithubUserCode({ user_id: installer, redirect_uri: `${secrets.PUBLIC_URL}/api/integrations/github/installed` });
    const start = await call("POST", "/api/integrations/github/install", { token: tokenFor(user), body: {} });
    const state = new URL(start.body.install_url).searchParams.get("state");
    const base = call === ctx.call ? ctx.worker.url : call.base;
    const back = await land(`/api/integrations/github/installed?installation_id=${installationId}&setup_action=install&code=${code}&state=${encodeURIComponent(state)}`, base);
    assert.equal(result(back.location), "success");
    const integration = (await call("GET", `/api/users/${user}/integrations`, { token: tokenFor(user) })).body[0];
    const town = await createTown(call, user, "As the user");
    assert.equal((await call("POST", `/api/towns/${town.id}/container/start`, { token: tokenFor(user) })).status, 200);
    const control = call === ctx.call ? ctx.control : call.control;
    const containerToken = (await control.town(town.id)).body.token;
    const rig = (await call("POST", `/api/users/${user}/rigs`, { token: tokenFor(user), body: { town_id: town.id, name: "app", platform_integration_id: integration.id, repo: `${login}/app` } })).body;
    const githubId = ++nextGithubId;
    const ghLogin = `octo-${githubId}`;
    p().addGithubUser({ id: githubId, login: ghLogin, repos: { [`${login}/app`]: { push } } });
    const gitToken = () => call("POST", `/api/towns/${town.id}/rigs/${rig.id}/git-token`, { token: containerToken });
    return { user, town, rig, githubId, ghLogin, gitToken, integration };
  }

  /** The whole connect flow for `w.user`. */
  async function connect(w, call = ctx.call) {
    const start = await call("POST", "/api/integrations/github/user-connect", { token: tokenFor(w.user) });
    assert.equal(start.status, 200, start.text);
    const url = new URL(start.body.authorize_url);
    const code = p().issueGithubUserCode({ user_id: w.githubId, redirect_uri: url.searchParams.get("redirect_uri") });
    const base = call === ctx.call ? ctx.worker.url : call.base;
    return land(`/api/integrations/github/user-connect/callback?code=${code}&state=${encodeURIComponent(url.searchParams.get("state"))}`, base);
  }

  const commitAsUser = (w, on = true) => as(tokenFor(w.user), "PATCH", `/api/towns/${w.town.id}/config`, { commit_as_user: on });
  const status = async (w) => (await as(tokenFor(w.user), "GET", "/api/integrations/github/user-connect")).body;

  describe("commit as the user: connecting", () => {
    it("the authorize URL has only what GitHub supports; the callback connects; status tells the states apart", async () => {
      const w = await world();
      assert.deepEqual(await status(w), { status: "not_connected" });
      const start = await as(tokenFor(w.user), "POST", "/api/integrations/github/user-connect");
      const url = new URL(start.body.authorize_url);
      assert.equal(url.origin + url.pathname, `${p().url}/login/oauth/authorize`);
      assert.deepEqual([...url.searchParams.keys()].sort(), ["client_id", "redirect_uri", "state"]);
      assert.equal(url.searchParams.get("client_id"), secrets.GITHUB_APP_CLIENT_ID);
      assert.equal(url.searchParams.get("redirect_uri"), CALLBACK);
      const back = await connect(w);
      assert.equal(back.status, 302);
      assert.equal(result(back.location), "success");
      const s = await status(w);
      assert.deepEqual([s.status, s.github_login], ["connected", w.ghLogin]);
      assert.ok(s.connected_at);
    });

    it("forged, expired and replayed states, access_denied and a failed exchange land on friendly codes", async () => {
      const w = await world();
      const start = await as(tokenFor(w.user), "POST", "/api/integrations/github/user-connect");
      const state = new URL(start.body.authorize_url).searchParams.get("state");
      const now = Math.floor(Date.now() / 1000);
      const claims = { kind: "github_user_connect", nonce: crypto.randomUUID(), user_id: w.user, org_id: null, exp: now + 300 };
      const cb = (q) => land(`/api/integrations/github/user-connect/callback?${q}`);
      const code = () => p().issueGithubUserCode({ user_id: w.githubId, redirect_uri: CALLBACK });
      assert.equal(result((await cb(`code=${code()}&state=${encodeURIComponent(signState({ ...claims, exp: now - 5 }))}`)).location), "invalid_state");
      assert.equal(result((await cb(`code=${code()}&state=${encodeURIComponent(`${state.split(".")[0]}.AAAA`)}`)).location), "invalid_state");
      assert.equal(result((await cb(`code=${code()}&state=${encodeURIComponent(signState({ ...claims, kind: "github_install" }))}`)).location), "invalid_state");
      const denied = await cb(`error=access_denied&error_description=The+user+has+denied+your+application+access.&state=${encodeURIComponent(state)}`);
      assert.equal(result(denied.location), "access_denied");
      assert.ok(!denied.location.includes("denied+your"), "provider text stays out of the URL");
      assert.equal(result((await cb(`code=${code()}&state=${encodeURIComponent(state)}`)).location), "invalid_state", "the state was spent");
      const bad = await cb(`code=not-a-code&state=${encodeURIComponent(signState({ ...claims, nonce: crypto.randomUUID() }))}`);
      assert.equal(result(bad.location), "exchange_failed");
      assert.deepEqual(await status(w), { status: "not_connected" }, "nothing was stored");
    });
  });

  describe("commit as the user: git tokens", () => {
    it("off: the bot, saying so; on: the user's token, login and no-reply email", async () => {
      const w = await world();
      assert.equal(result((await connect(w)).location), "success");
      const bot = await w.gitToken();
      assert.equal(bot.status, 200, bot.text);
      assert.equal(bot.body.source, "github_app");
      assert.deepEqual(bot.body.identity, { kind: "bot", reason: "disabled" });
      assert.equal((await commitAsUser(w)).status, 200);
      const res = await w.gitToken();
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.source, "github_user");
      assert.match(res.body.token, /^ghu_/);
      assert.deepEqual(res.body.identity, { kind: "user", name: w.ghLogin, email: `${w.githubId}+${w.ghLogin}@users.noreply.github.com` });
      const internal = await ctx.call("POST", `/api/internal/rigs/${w.rig.id}/git-token`, { headers: { "x-internal-api-key": internalKey() } });
      assert.equal(internal.body.source, "github_user");
    });

    it("not connected, or no push access: the bot with the reason", async () => {
      const none = await world();
      await commitAsUser(none);
      assert.deepEqual((await none.gitToken()).body.identity, { kind: "bot", reason: "not_connected" });
      const readOnly = await world({ push: false });
      assert.equal(result((await connect(readOnly)).location), "success");
      await commitAsUser(readOnly);
      const res = await readOnly.gitToken();
      assert.equal(res.body.source, "github_app");
      assert.deepEqual(res.body.identity, { kind: "bot", reason: "no_repo_access" });
    });

    it("near expiry, parallel requests refresh exactly once", async () => {
      const w = await world();
      p().setUserTokenTtl(60); // already inside the five-minute margin
      assert.equal(result((await connect(w)).location), "success");
      await commitAsUser(w);
      p().setUserTokenTtl(28800);
      p().resetCalls();
      p().setLatency(150);
      const answers = await Promise.all(Array.from({ length: 6 }, () => w.gitToken()));
      p().setLatency(0);
      for (const a of answers) assert.equal(a.body.source, "github_user", a.text);
      assert.equal(p().calls("github.oauth.refresh"), 1, "one refresh token spent once");
      assert.equal(p().calls("github.oauth.invalid"), 0);
      assert.equal(new Set(answers.map((a) => a.body.token)).size, 1);
    });

    it("a refresh GitHub rejects marks the connection revoked and falls back to the bot", async () => {
      const w = await world();
      p().setUserTokenTtl(60);
      assert.equal(result((await connect(w)).location), "success");
      p().setUserTokenTtl(28800);
      await commitAsUser(w);
      p().revokeUserGrant(w.githubId); // the user revoked the App in their GitHub settings
      const res = await w.gitToken();
      assert.equal(res.body.source, "github_app");
      assert.deepEqual(res.body.identity, { kind: "bot", reason: "refresh_failed" });
      assert.equal((await status(w)).status, "revoked");
      assert.deepEqual((await w.gitToken()).body.identity, { kind: "bot", reason: "revoked" });
      assert.equal(result((await connect(w)).location), "success", "a reconnect clears the revocation");
      assert.equal((await status(w)).status, "connected");
      assert.equal((await w.gitToken()).body.source, "github_user");
    });

    it("the revocation webhook (a real payload) revokes; a bad signature changes nothing", async () => {
      const w = await world();
      assert.equal(result((await connect(w)).location), "success");
      await commitAsUser(w);
      const payload = webhookPayload("github_app_authorization", "revoked");
      payload.sender.id = w.githubId;
      assert.equal((await webhook("github_app_authorization", payload, "not-the-secret")).status, 401);
      assert.equal((await w.gitToken()).body.source, "github_user", "unchanged");
      const delivery = crypto.randomUUID();
      const res = await githubWebhook(ctx.worker.url, "github_app_authorization", payload, undefined, { delivery });
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { updated: 1 });
      assert.equal((await status(w)).status, "revoked");
      assert.deepEqual((await w.gitToken()).body.identity, { kind: "bot", reason: "revoked" });
      // The user connects again; the captured delivery, replayed byte for byte, revokes nothing.
      assert.equal(result((await connect(w)).location), "success");
      const replay = await githubWebhook(ctx.worker.url, "github_app_authorization", payload, undefined, { delivery });
      assert.equal(replay.status, 200);
      assert.deepEqual(await replay.json(), { duplicate: true });
      assert.equal((await status(w)).status, "connected", "the replay changed nothing");
      assert.equal((await w.gitToken()).body.source, "github_user");
    });

    it("disconnect revokes the grant at GitHub and forgets it", async () => {
      const w = await world();
      assert.equal(result((await connect(w)).location), "success");
      p().resetCalls();
      const res = await as(tokenFor(w.user), "DELETE", "/api/integrations/github/user-connect");
      assert.equal(res.status, 200);
      assert.deepEqual(res.body, { deleted: true });
      assert.equal(p().calls("github.grant_delete"), 1);
      const mine = p().githubUserTokens().filter((t) => t.user_id === w.githubId);
      assert.ok(mine.every((t) => t.access_state !== "active"), "GitHub revoked every token of the grant");
      assert.deepEqual(await status(w), { status: "not_connected" });
    });
  });

  describe("personal data deletion", () => {
    it("leaves no row of the user anywhere, and is idempotent", async () => {
      const w = await world();
      assert.equal(result((await connect(w)).location), "success");
      p().resetCalls();
      const del = (key = internalKey()) => ctx.call("DELETE", `/api/internal/users/${w.user}`, { headers: { "x-internal-api-key": key } });
      assert.equal((await del("wrong")).status, 401);
      const res = await del();
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, { deleted: true, towns: 1, org_towns: 0, integrations: 1 });
      assert.equal(p().calls("github.grant_delete"), 1, "the grant was revoked at GitHub");
      const t = tokenFor(w.user);
      assert.deepEqual((await as(t, "GET", `/api/users/${w.user}/towns`)).body, []);
      assert.equal((await as(t, "GET", `/api/towns/${w.town.id}`)).status, 404);
      assert.deepEqual((await as(t, "GET", `/api/users/${w.user}/integrations`)).body, []);
      assert.deepEqual(await status(w), { status: "not_connected" });
      assert.equal((await ctx.call("GET", `/api/internal/rigs/${w.rig.id}`, { headers: { "x-internal-api-key": internalKey() } })).status, 404);
      assert.equal((await ctx.control.town(w.town.id)).status, 404, "its container holds nothing");
      const again = await del();
      assert.equal(again.status, 200);
      assert.deepEqual(again.body, { deleted: true, towns: 0, org_towns: 0, integrations: 0 });
    });
  });

  describe("FEATURE_GITHUB_USER_TOKENS off", () => {
    let persistDir;
    let worker;
    let call;
    before(async () => {
      persistDir = makePersistDir();
      migrateD1(persistDir);
      worker = await startWorker({ persistDir, vars: { ...ctx.vars(), FEATURE_GITHUB_USER_TOKENS: "false" } });
      call = client(() => worker.url);
      call.base = worker.url;
      call.control = ctx.control;
    });
    after(async () => {
      await worker?.stop();
      removePersistDir(persistDir);
    });

    it("the user-connect routes are 404 and git tokens are the bot's, as before", async () => {
      const w = await world({ call });
      for (const method of ["POST", "GET", "DELETE"]) {
        assert.equal((await call(method, "/api/integrations/github/user-connect", { token: tokenFor(w.user) })).status, 404, method);
      }
      assert.equal((await land("/api/integrations/github/user-connect/callback?code=x&state=y", worker.url)).status, 404);
      assert.equal((await call("PATCH", `/api/towns/${w.town.id}/config`, { token: tokenFor(w.user), body: { commit_as_user: true } })).status, 200);
      const res = await w.gitToken();
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.source, "github_app");
      assert.deepEqual(res.body.identity, { kind: "bot", reason: "disabled" });
    });
  });
}

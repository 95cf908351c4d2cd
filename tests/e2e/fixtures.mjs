// Tokens and builders shared by the suites.
import { createHash, createHmac, createPublicKey } from "node:crypto";
import { startGitPlatforms } from "./standins/git_platforms.mjs";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { secrets } from "./harness.mjs";
import { userToken, containerToken, agentToken, sandboxToken } from "../../scripts/lib/jwt.mjs";

let n = 0;
/** A user id no other test uses. */
export const freshUser = (label = "u") => `${label}-${process.pid}-${++n}-${Date.now().toString(36)}`;

export const tokenFor = (userId, opts) => userToken(secrets.NEXTAUTH_SECRET, userId, opts);
export const containerTokenFor = (townId, userId) => containerToken(secrets.GASTOWN_JWT_SECRET, townId, userId);
export const agentTokenFor = (townId, userId, { rigId = "r1", agentId = "a1" } = {}) =>
  agentToken(secrets.GASTOWN_JWT_SECRET, { agentId, rigId, townId, userId });
export const sandboxTokenFor = (userId, townId) => sandboxToken(secrets.NEXTAUTH_SECRET, userId, townId);
export const internalKey = () => secrets.INTERNAL_API_KEY;

/** Creates a town for `user` and returns it (asserting 201). */
export async function createTown(call, user, name = "Town") {
  const res = await call("POST", `/api/users/${user}/towns`, { token: tokenFor(user), body: { name } });
  if (res.status !== 201) throw new Error(`create town: ${res.status} ${res.text}`);
  return res.body;
}

/** Creates a rig in `townId` and returns it (asserting 201). */
export async function createRig(call, user, townId, name = "repo") {
  const res = await call("POST", `/api/users/${user}/rigs`, {
    token: tokenFor(user),
    body: { town_id: townId, name, git_url: `https://github.com/acme/${name}.git` },
  });
  if (res.status !== 201) throw new Error(`create rig: ${res.status} ${res.text}`);
  return res.body;
}

/** Everything a user can see: towns and each town's rigs. */
export async function snapshot(call, user) {
  const token = tokenFor(user);
  const towns = await call("GET", `/api/users/${user}/towns`, { token });
  const rigs = {};
  for (const t of towns.body ?? []) {
    rigs[t.id] = (await call("GET", `/api/users/${user}/towns/${t.id}/rigs`, { token })).body;
  }
  return { towns: towns.body, rigs };
}

/**
 * Registers a polecat (or refinery) of `rigId` through the test-only internal hook (until
 * dispatch creates agents) and returns it (asserting 201). Callbacks are honoured only for
 * agents a town registered.
 */
export async function registerAgent(call, townId, rigId, { role = "polecat", name = "polecat", working = false } = {}) {
  const res = await call("POST", `/api/internal/towns/${townId}/agents`, {
    headers: { "x-internal-api-key": internalKey() },
    body: { role, rig_id: rigId, name, working },
  });
  if (res.status !== 201) throw new Error(`register agent: ${res.status} ${res.text}`);
  return res.body;
}

/**
 * A connect-flow `state` in gastown_core::integrations's format, written independently of the
 * worker (so a test can forge an expired or other-flow one that is otherwise valid).
 */
export function signState(claims) {
  const key = createHash("sha256").update("gastown-connect-state-key-v1:").update(secrets.GASTOWN_ENCRYPTION_KEY).digest();
  const body = Buffer.from(JSON.stringify(claims)).toString("base64url");
  const sig = createHmac("sha256", key).update("gastown-oauth-state-v1:").update(body).digest("base64url");
  return `${body}.${sig}`;
}

/** POSTs a GitHub webhook to the worker at `base`, signed with `secret`. */
export function githubWebhook(base, event, payload, secret = secrets.GITHUB_WEBHOOK_SECRET, { delivery = crypto.randomUUID() } = {}) {
  const body = typeof payload === "string" ? payload : JSON.stringify(payload);
  const signature = `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
  return fetch(`${base}/api/webhooks/github`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-github-event": event, "x-hub-signature-256": signature, "x-github-delivery": delivery },
    body,
  });
}

/**
 * Keeps a town busy: an idle town's alarm pushes no token and no env (issue 13), so tests of
 * the alarm's pushes give the town a working agent that heartbeats every second (with a fresh
 * legacy agent token each time, which no rotation revokes). Returns the function that stops it.
 */
export async function keepBusy(call, townId, userId, rigId) {
  const agent = await registerAgent(call, townId, rigId, { name: "busy", working: true });
  const beat = () =>
    call("POST", `/api/towns/${townId}/rigs/${rigId}/agents/${agent.id}/heartbeat`, {
      token: agentTokenFor(townId, userId, { rigId, agentId: agent.id }),
    }).catch(() => {});
  await beat();
  const timer = setInterval(beat, 1_000);
  return () => clearInterval(timer);
}

/**
 * A personal town of `user` with one rig on the repository `app` of a GitHub App installation
 * of the stand-in (`platforms`), installed through the whole flow on the worker at `workerUrl`.
 * `installation` must be unique in the run (the installer is GitHub user `installation + 1`).
 */
export async function installedTownWithRig({ call, workerUrl, platforms, user, installation, label = "gh" }) {
  const as = (method, path, body) => call(method, path, { token: tokenFor(user), body });
  const login = `${label}-acct-${installation}`;
  platforms.addGithubUser({ id: installation + 1, login });
  platforms.addInstallation({ id: installation, login, repos: [{ name: "app" }] });
  const start = await as("POST", "/api/integrations/github/install", {});
  const state = new URL(start.body.install_url).searchParams.get("state");
  const code = platforms.issueGithubUserCode({ user_id: installation + 1, redirect_uri: `${secrets.PUBLIC_URL}/api/integrations/github/installed` });
  const back = await fetch(`${workerUrl}/api/integrations/github/installed?installation_id=${installation}&setup_action=install&code=${code}&state=${encodeURIComponent(state)}`, { redirect: "manual" });
  const result = new URL(back.headers.get("location")).searchParams.get("result");
  if (result !== "success") throw new Error(`the install landed on ${result}`);
  const integration = (await as("GET", `/api/users/${user}/integrations`)).body.find((i) => i.account_login === login);
  const town = await createTown(call, user, label);
  const author = await as("PATCH", `/api/towns/${town.id}/config`, { git_author_name: "Town Author", git_author_email: "author@example.com" });
  if (author.status !== 200) throw new Error(author.text);
  const rig = (await as("POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "app", platform_integration_id: integration.id, repo: `${login}/app` })).body;
  return { town, rig, login, installation };
}

/** git, never prompting; its output trimmed. */
export const git = (...args) => execFileSync("git", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, GIT_TERMINAL_PROMPT: "0" } }).trim();

/** A bare repository with one commit on `main`, as a user would make for a local rig. */
export function bareRepo(dir) {
  const bare = join(dir, `repo-${Math.random().toString(36).slice(2)}.git`);
  git("init", "--quiet", "--bare", "--initial-branch=main", bare);
  const seed = mkdtempSync(join(tmpdir(), "gastown-seed-"));
  git("clone", "--quiet", bare, seed);
  writeFileSync(join(seed, "README.md"), "demo\n");
  git("-C", seed, "add", "README.md");
  git("-C", seed, "-c", "user.name=Seed", "-c", "user.email=seed@example.com", "commit", "--quiet", "-m", "seed");
  git("-C", seed, "push", "--quiet", "origin", "HEAD:main");
  rmSync(seed, { recursive: true, force: true });
  return bare;
}

/**
 * The GitHub/GitLab stand-in holding the development App and OAuth credentials of .dev.vars,
 * as the worker is configured with them.
 */
export function startDevPlatforms() {
  return startGitPlatforms({
    appId: secrets.GITHUB_APP_ID,
    // The dev App key is one line with \n escapes; its public half verifies the App JWTs.
    publicKeyPem: createPublicKey(secrets.GITHUB_APP_PRIVATE_KEY.replace(/\\n/g, "\n")).export({ type: "spki", format: "pem" }),
    githubClientId: secrets.GITHUB_APP_CLIENT_ID,
    githubClientSecret: secrets.GITHUB_APP_CLIENT_SECRET,
    gitlabClientId: secrets.GITLAB_CLIENT_ID,
    gitlabClientSecret: secrets.GITLAB_CLIENT_SECRET,
  });
}

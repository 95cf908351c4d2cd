#!/usr/bin/env node
// The GitHub/GitLab stand-in (git_platforms.mjs) as a process of its own, for development
// (`GASTOWN_STANDINS=1 npm run dev` starts it): the worker's GITHUB_API_URL, GITHUB_WEB_URL and
// GITLAB_URL point at it, and the container control server's agents clone and push over HTTPS
// from its git host, trusting its certificate (`gastown-control --git-ca-file <ca>`).
//
//   node tests/e2e/standins/serve.mjs [--port 8790] [--control-port 8791] [--git-port 8792]
//                                     [--worker-url http://127.0.0.1:8787] [--no-webhooks]
//
// It runs with the secrets of .dev.vars (the dev App's key verifies App JWTs, its OAuth client
// and the GitLab client as the worker knows them) and prints one line once it is up:
//
//   stand-ins up: api=http://127.0.0.1:8790 git=https://127.0.0.1:8792 control=http://127.0.0.1:8791 webhooks=on ca=<file>
//
// The git host (--git-port, default --port + 2) keeps its port across restarts because the
// worker caches an integration's repositories with their clone_url; its certificate is new on
// every start.
//
// Its controls answer on a separate loopback port (--control-port, default --port + 1), so none
// of them shadows a GitHub or GitLab route of the stand-in:
//
//   GET  /                     -> {api, git, ca, control, webhooks, controls: [names]}
//   POST /<control>  [args...] -> that control's JSON result (400 {error} when it throws; 404 for a
//                                 name not in CONTROLS). The controls that make a webhook payload
//                                 (mergePull, closePull, reopenPull, addReview, setCheckRun; the
//                                 GitLab merge/close/review/pipeline ones) also deliver it to the
//                                 worker as the platform does and answer {result, delivery:
//                                 {status, body}} (delivery null with --no-webhooks, which leaves
//                                 the change to the refinery's poll, PR_POLL_MS).
//   POST /install {installation, login, repo = "app", user}
//                              -> {integration_id, repo: "<login>/<repo>", clone_url}: a GitHub App
//                                 installation on account <login> holding <repo> (its bare
//                                 repository with one commit on main), connected to Gastown user
//                                 <user> through the worker's whole install flow.
//
// e.g.  curl -s -X POST http://127.0.0.1:8791/pulls -d '["acme","app"]'
//       curl -s -X POST http://127.0.0.1:8791/mergePull -d '["acme","app",1]'
//
// State lives in memory (and the git host's temporary folder): a restart forgets installations,
// repositories, pull requests and the tokens it issued (a worker with persisted state may still
// hold an installation token of the last run for up to an hour: install anew under another
// installation id and login, or remove .wrangler/state). It stops on SIGINT / SIGTERM.
import { createServer } from "node:http";
import net from "node:net";
import { createPublicKey, randomUUID } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startGitPlatforms, signWebhook } from "./git_platforms.mjs";
import { devVars, userToken } from "../../../scripts/lib/jwt.mjs";

/** Controls the control port may call; values: the webhook a returned payload is delivered as. */
const CONTROLS = {
  addInstallation: null,
  addGithubUser: null,
  issueGithubUserCode: null,
  pulls: null,
  mergePull: { platform: "github", event: "pull_request" },
  closePull: { platform: "github", event: "pull_request" },
  reopenPull: { platform: "github", event: "pull_request" },
  addReview: { platform: "github", event: "pull_request_review" },
  setCheckRun: { platform: "github", event: "check_run" },
  gitRepoPath: null,
  calls: null,
  issueGitlabCode: null,
  pushGitlabBranch: null,
  gitlabMergeRequests: null,
  mergeGitlabMergeRequest: { platform: "gitlab", event: "Merge Request Hook" },
  closeGitlabMergeRequest: { platform: "gitlab", event: "Merge Request Hook" },
  reviewGitlabMergeRequest: { platform: "gitlab", event: "Merge Request Hook" },
  setGitlabPipeline: { platform: "gitlab", event: "Merge Request Hook" },
};
const MAX_BODY = 1 << 20;

const usage = "usage: node tests/e2e/standins/serve.mjs [--port 8790] [--control-port PORT+1] [--git-port PORT+2] [--worker-url http://127.0.0.1:8787] [--no-webhooks]";
let values;
try {
  ({ values } = parseArgs({
    options: {
      port: { type: "string", default: "8790" },
      "control-port": { type: "string" },
      "git-port": { type: "string" },
      "worker-url": { type: "string", default: "http://127.0.0.1:8787" },
      "no-webhooks": { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    },
  }));
} catch (e) {
  console.error(`serve: ${e.message}\n${usage}`);
  process.exit(2);
}
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const port = Number(values.port);
const controlPort = Number(values["control-port"] ?? port + 1);
const gitPort = Number(values["git-port"] ?? port + 2);
for (const [name, p] of [["--port", port], ["--control-port", controlPort], ["--git-port", gitPort]]) {
  if (!Number.isInteger(p) || p < 1 || p > 65535) {
    console.error(`serve: ${name} must be a port number\n${usage}`);
    process.exit(2);
  }
}
if (new Set([port, controlPort, gitPort]).size !== 3) {
  console.error("serve: --port, --control-port and --git-port must differ");
  process.exit(2);
}
const workerUrl = values["worker-url"].replace(/\/+$/, "");
const webhooks = !values["no-webhooks"];
const secrets = devVars();

/** Whether nothing listens on loopback `p` (checked first, so a taken port fails before anything starts). */
function portFree(p) {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once("error", () => resolve(false));
    probe.listen(p, "127.0.0.1", () => probe.close(() => resolve(true)));
  });
}
for (const [name, p] of [["--port", port], ["--control-port", controlPort], ["--git-port", gitPort]]) {
  if (!(await portFree(p))) {
    console.error(`serve: port ${p} (${name}) is taken`);
    process.exit(1);
  }
}

let platforms;
try {
  platforms = await startGitPlatforms({
    port,
    gitPort,
    appId: secrets.GITHUB_APP_ID,
    // The dev App key is one line with \n escapes; its public half verifies the App JWTs.
    publicKeyPem: secrets.GITHUB_APP_PRIVATE_KEY
      ? createPublicKey(secrets.GITHUB_APP_PRIVATE_KEY.replace(/\\n/g, "\n")).export({ type: "spki", format: "pem" })
      : undefined,
    githubClientId: secrets.GITHUB_APP_CLIENT_ID,
    githubClientSecret: secrets.GITHUB_APP_CLIENT_SECRET,
    gitlabClientId: secrets.GITLAB_CLIENT_ID,
    gitlabClientSecret: secrets.GITLAB_CLIENT_SECRET,
  });
} catch (e) {
  console.error(`serve: the stand-in did not start on ports ${port} (API) and ${gitPort} (git): ${e.message}`);
  process.exit(1);
}
if (new URL(platforms.url).port !== String(port) || new URL(platforms.gitUrl).port !== String(gitPort)) {
  await platforms.stop();
  console.error(`serve: the stand-in listens on ${platforms.url} and ${platforms.gitUrl}, not on ports ${port} and ${gitPort} `);
  process.exit(1);
}

// ------------------------------------------------------------------ webhook delivery

/** Delivers a webhook `payload` to the worker as GitHub or GitLab does: {status, body} or {error}. */
async function deliver({ platform, event }, payload) {
  const body = JSON.stringify(payload);
  const headers = { "content-type": "application/json" };
  let path;
  if (platform === "github") {
    path = "/api/webhooks/github";
    Object.assign(headers, {
      "user-agent": "GitHub-Hookshot/stand-in",
      "x-github-event": event,
      "x-github-delivery": randomUUID(),
      "x-hub-signature-256": signWebhook(secrets.GITHUB_WEBHOOK_SECRET ?? "", body),
      "x-github-hook-installation-target-type": "integration",
      "x-github-hook-installation-target-id": String(secrets.GITHUB_APP_ID ?? ""),
    });
  } else {
    path = "/api/webhooks/gitlab";
    Object.assign(headers, {
      "user-agent": "GitLab/stand-in",
      "x-gitlab-event": event,
      "x-gitlab-token": secrets.GITLAB_WEBHOOK_SECRET ?? "",
      "x-gitlab-event-uuid": randomUUID(),
      "x-gitlab-instance": platforms.url,
    });
  }
  try {
    const res = await fetch(`${workerUrl}${path}`, { method: "POST", headers, body, signal: AbortSignal.timeout(30_000) });
    return { status: res.status, body: parseMaybe(await res.text()) };
  } catch (e) {
    return { error: `could not deliver to ${workerUrl}${path}: ${e.cause?.message ?? e.message}` };
  }
}

function parseMaybe(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// ------------------------------------------------------------------ install

const git = (args, options = {}) => execFileSync("git", args, { encoding: "utf8", stdio: ["pipe", "pipe", "pipe"], ...options }).trim();
/** Repositories per installation id that /install added, so a second repo keeps the first. */
const installed = new Map();
let nextGithubUserId = 5_000_001;

/** Makes sure the bare repository of login/repo has a commit on `branch` (a README). */
function seedRepo(login, repo, branch = "main") {
  const bare = platforms.gitRepoPath(login, repo);
  try {
    git(["--git-dir", bare, "rev-parse", "--verify", "--quiet", `refs/heads/${branch}`]);
    return bare; // the git host made it with one commit already
  } catch {
    // empty: push a first commit from a temporary clone
  }
  const dir = mkdtempSync(join(tmpdir(), "gastown-standin-seed-"));
  try {
    const identity = { GIT_AUTHOR_NAME: "Stand-in", GIT_AUTHOR_EMAIL: "standin@example.com", GIT_COMMITTER_NAME: "Stand-in", GIT_COMMITTER_EMAIL: "standin@example.com" };
    const env = { ...process.env, ...identity };
    git(["clone", "--quiet", bare, join(dir, "work")], { env });
    writeFileSync(join(dir, "work", "README.md"), `# ${repo}\n`);
    git(["-C", join(dir, "work"), "add", "README.md"], { env });
    git(["-C", join(dir, "work"), "commit", "--quiet", "-m", "Initial commit"], { env });
    git(["-C", join(dir, "work"), "push", "--quiet", "origin", `HEAD:refs/heads/${branch}`], { env });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return bare;
}

/**
 * The App install flow of fixtures.mjs's installedTownWithRig, against the worker: GitHub user
 * <login> installs the App on their account with <repo>, the user's dashboard asks the worker
 * for an install URL, and GitHub sends the browser back to the worker with the installation and
 * an authorization code.
 */
async function install({ installation, login, repo = "app", user } = {}) {
  if (typeof installation === "string" && /^\d+$/.test(installation)) installation = Number(installation);
  if (!Number.isInteger(installation) || installation <= 0) throw new TypeError("install: installation must be a positive integer");
  if (typeof login !== "string" || !/^[A-Za-z0-9-]+$/.test(login)) throw new TypeError("install: login must be a GitHub login (letters, digits, -)");
  if (typeof repo !== "string" || !/^[A-Za-z0-9_.-]+$/.test(repo)) throw new TypeError("install: repo must be a repository name");
  if (typeof user !== "string" || !user) throw new TypeError("install: user (the Gastown user id) is required");
  if (!secrets.NEXTAUTH_SECRET) throw new Error("install: no NEXTAUTH_SECRET in .dev.vars to sign the user's token with");

  const previous = installed.get(installation);
  if (previous && previous.login !== login) throw new Error(`install: installation ${installation} is on account ${previous.login}, not ${login}`);
  const repos = [...new Set([...(previous?.repos ?? []), repo])];
  const githubUserId = previous?.githubUserId ?? nextGithubUserId++;
  // The installer: a User installation is accessible to the user whose login it carries.
  platforms.addGithubUser({ id: githubUserId, login });
  platforms.addInstallation({ id: installation, login, repos: repos.map((name) => ({ name })) });
  installed.set(installation, { login, repos, githubUserId });
  seedRepo(login, repo);

  const token = userToken(secrets.NEXTAUTH_SECRET, user);
  const worker = async (path, init) => {
    try {
      return await fetch(`${workerUrl}${path}`, init);
    } catch (e) {
      throw new Error(`install: could not reach the worker at ${workerUrl}: ${e.cause?.message ?? e.message}`);
    }
  };
  const api = async (method, path, body) => {
    const res = await worker(path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return JSON.parse(text);
  };
  const start = await api("POST", "/api/integrations/github/install", {});
  const state = new URL(start.install_url).searchParams.get("state");
  const code = platforms.issueGithubUserCode({ user_id: githubUserId });
  const query = new URLSearchParams({ installation_id: String(installation), setup_action: "install", code, state });
  const back = await worker(`/api/integrations/github/installed?${query}`, { redirect: "manual" });
  const location = back.headers.get("location");
  const result = location && new URL(location).searchParams.get("result");
  if (result !== "success") throw new Error(`install: the worker's install callback answered ${back.status} and landed on ${location ? `result=${result}` : "no redirect"}`);
  const integrations = await api("GET", `/api/users/${encodeURIComponent(user)}/integrations`);
  const integration = integrations
    .filter((i) => i.platform === "github" && i.account_login === login)
    .sort((a, b) => String(b.updated_at).localeCompare(String(a.updated_at)))[0];
  if (!integration) throw new Error(`install: no GitHub integration of ${login} among ${user}'s integrations`);
  return { integration_id: integration.id, repo: `${login}/${repo}`, clone_url: `${platforms.gitUrl}/${login}/${repo}.git` };
}

// ------------------------------------------------------------------ control server

function send(res, status, value) {
  const body = `${JSON.stringify(value === undefined ? null : value)}\n`;
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Error("body too large");
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString("utf8").trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`body is not JSON: ${e.message}`);
  }
}

const info = () => ({
  api: platforms.url,
  git: platforms.gitUrl,
  ca: platforms.gitCaFile,
  control: `http://127.0.0.1:${controlPort}`,
  worker: workerUrl,
  webhooks,
  controls: ["install", ...Object.keys(CONTROLS)],
});

const control = createServer(async (req, res) => {
  const name = new URL(req.url, "http://x").pathname.replace(/^\/+|\/+$/g, "");
  try {
    if (name === "" && (req.method === "GET" || req.method === "HEAD")) return send(res, 200, info());
    if (name !== "install" && !Object.hasOwn(CONTROLS, name)) return send(res, 404, { error: `no control ${JSON.stringify(name)}`, controls: info().controls });
    if (req.method !== "POST") return send(res, 405, { error: "POST a JSON array of arguments (POST /install: a JSON object)" });
    let body;
    try {
      body = await readJson(req);
    } catch (e) {
      return send(res, 400, { error: e.message });
    }
    if (name === "install") {
      if (body !== undefined && (body === null || typeof body !== "object" || Array.isArray(body))) {
        return send(res, 400, { error: 'POST /install takes {"installation", "login", "repo", "user"}' });
      }
      return send(res, 200, await install(body ?? {}));
    }
    const args = body ?? [];
    if (!Array.isArray(args)) return send(res, 400, { error: `POST /${name} takes a JSON array of its arguments` });
    let result;
    try {
      result = await platforms[name](...args);
    } catch (e) {
      return send(res, 400, { error: e.message });
    }
    const hook = CONTROLS[name];
    if (!hook) return send(res, 200, result);
    return send(res, 200, { result, delivery: webhooks ? await deliver(hook, result) : null });
  } catch (e) {
    if (!res.headersSent) send(res, 400, { error: e.message });
    else res.destroy();
  }
});
try {
  await new Promise((resolve, reject) => {
    control.once("error", reject);
    control.listen(controlPort, "127.0.0.1", resolve);
  });
} catch (e) {
  await platforms.stop();
  console.error(`serve: the control server did not start on port ${controlPort}: ${e.message}`);
  process.exit(1);
}

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  control.closeAllConnections?.();
  await new Promise((r) => control.close(() => r()));
  await platforms.stop();
  process.exit(0);
}
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, stop);

const i = info();
console.log(`stand-ins up: api=${i.api} git=${i.git} control=${i.control} webhooks=${webhooks ? "on" : "off"} ca=${i.ca}`);

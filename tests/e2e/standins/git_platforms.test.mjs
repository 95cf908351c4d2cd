// Self-test of the GitHub + GitLab stand-in: its GitHub answers against the response schemas of
// GitHub's published OpenAPI description (@octokit/openapi), App JWT verification, token
// lifecycles, pagination, the webhook helpers, pull requests (real merges in the git host's bare
// repositories; webhook payloads against @octokit/webhooks-examples) and GitLab merge requests.
// Run: node --test tests/e2e/standins/git_platforms.test.mjs
import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { createHmac, generateKeyPairSync, sign } from "node:crypto";
import { createRequire } from "node:module";
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { execFile, execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import addFormats from "ajv-formats";
import { startGitPlatforms, webhookPayload, signWebhook } from "./git_platforms.mjs";

const require = createRequire(import.meta.url);
const APP_ID = 424242;
const CLIENT_ID = "gl-client-id";
const CLIENT_SECRET = "gl-client-secret";
const GH_CLIENT_ID = "Iv23liGastownDev0001";
const GH_CLIENT_SECRET = "gh-app-client-secret-0123456789abcdef";

// ------------------------------------------------------------------ keys and JWTs

// PKCS#1 private key, as GitHub hands out App keys (-----BEGIN RSA PRIVATE KEY-----).
const appKeys = generateKeyPairSync("rsa", {
  modulusLength: 2048,
  publicKeyEncoding: { type: "spki", format: "pem" },
  privateKeyEncoding: { type: "pkcs1", format: "pem" },
});
const otherKeys = generateKeyPairSync("rsa", {
  modulusLength: 2048,
  publicKeyEncoding: { type: "spki", format: "pem" },
  privateKeyEncoding: { type: "pkcs1", format: "pem" },
});

const seg = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
const nowS = () => Math.floor(Date.now() / 1000);

/** An App JWT; `alg` other than RS256 is signed accordingly (HS256 with `hmacKey`, none unsigned). */
function appJwt({ privateKey = appKeys.privateKey, iss = APP_ID, iat = nowS() - 60, exp = nowS() + 540, alg = "RS256", hmacKey } = {}) {
  const input = `${seg({ alg, typ: "JWT" })}.${seg({ iat, exp, iss })}`;
  if (alg === "none") return `${input}.`;
  if (alg === "HS256") return `${input}.${createHmac("sha256", hmacKey).update(input).digest("base64url")}`;
  return `${input}.${sign("sha256", Buffer.from(input), privateKey).toString("base64url")}`;
}

// ------------------------------------------------------------------ OpenAPI response schemas

const spec = JSON.parse(readFileSync(require.resolve("@octokit/openapi/generated/api.github.com.json"), "utf8"));

/**
 * OpenAPI 3.0 schema -> JSON Schema for ajv: `nullable: true` becomes a type union (or an anyOf
 * with null), and every `#/components/schemas/X` reachable is copied into `$defs`.
 */
function toJsonSchema(root) {
  const defs = {};
  const pending = [];
  const convert = (node) => {
    if (Array.isArray(node)) return node.map(convert);
    if (node === null || typeof node !== "object") return node;
    if (typeof node.$ref === "string") {
      const m = /^#\/components\/schemas\/(.+)$/.exec(node.$ref);
      if (!m) throw new Error(`unexpected $ref ${node.$ref}`);
      if (!(m[1] in defs)) {
        defs[m[1]] = null;
        pending.push(m[1]);
      }
      return { $ref: `#/$defs/${m[1]}` };
    }
    const out = {};
    for (const [k, v] of Object.entries(node)) {
      if (k === "nullable" || k === "example" || k === "examples" || k === "discriminator" || k === "xml" || k === "externalDocs" || k.startsWith("x-")) continue;
      // Property maps hold names, not keywords: convert their values only.
      if (k === "properties" || k === "patternProperties") {
        out[k] = Object.fromEntries(Object.entries(v).map(([name, sub]) => [name, convert(sub)]));
      } else {
        out[k] = convert(v);
      }
    }
    if (node.nullable === true) {
      if (typeof out.type === "string") {
        out.type = [out.type, "null"];
        if (Array.isArray(out.enum) && !out.enum.includes(null)) out.enum = [...out.enum, null];
        return out;
      }
      return { anyOf: [out, { type: "null" }] };
    }
    return out;
  };
  const schema = convert(root);
  while (pending.length) {
    const name = pending.pop();
    defs[name] = convert(spec.components.schemas[name]);
  }
  return { ...schema, $defs: defs };
}

const ajv = new Ajv({ strict: false, allErrors: true, logger: false });
addFormats(ajv);
for (const f of ["int32", "int64", "float", "double", "byte", "binary", "password", "repo.nwo", "ssh-key", "ssh-key fingerprint", "uri-template"]) {
  if (!ajv.formats[f]) ajv.addFormat(f, true);
}

function resolveResponse(r) {
  while (r.$ref) r = r.$ref.split("/").slice(1).reduce((o, k) => o[k], spec);
  return r;
}
function responseValidator(path, method, status) {
  const op = spec.paths[path]?.[method];
  assert.ok(op, `no ${method.toUpperCase()} ${path} in the OpenAPI description`);
  const response = resolveResponse(op.responses[String(status)]);
  assert.ok(response, `no ${status} response for ${method.toUpperCase()} ${path}`);
  return ajv.compile(toJsonSchema(response.content["application/json"].schema));
}
function assertValid(validate, body, what) {
  const ok = validate(body);
  assert.ok(ok, `${what} does not match GitHub's OpenAPI schema:\n${ajv.errorsText(validate.errors, { separator: "\n" })}`);
}

const v = {
  installation: responseValidator("/app/installations/{installation_id}", "get", 200),
  installation404: responseValidator("/app/installations/{installation_id}", "get", 404),
  accessToken: responseValidator("/app/installations/{installation_id}/access_tokens", "post", 201),
  accessToken403: responseValidator("/app/installations/{installation_id}/access_tokens", "post", 403),
  accessToken404: responseValidator("/app/installations/{installation_id}/access_tokens", "post", 404),
  accessToken422: responseValidator("/app/installations/{installation_id}/access_tokens", "post", 422),
  repositories: responseValidator("/installation/repositories", "get", 200),
  repositories401: responseValidator("/installation/repositories", "get", 401),
  user: responseValidator("/user", "get", 200),
  user401: responseValidator("/user", "get", 401),
  user403: responseValidator("/user", "get", 403),
  userInstallations: responseValidator("/user/installations", "get", 200),
  userInstallations401: responseValidator("/user/installations", "get", 401),
  userInstallations403: responseValidator("/user/installations", "get", 403),
  repo: responseValidator("/repos/{owner}/{repo}", "get", 200),
  repo404: responseValidator("/repos/{owner}/{repo}", "get", 404),
  pulls: responseValidator("/repos/{owner}/{repo}/pulls", "get", 200),
  pulls422: responseValidator("/repos/{owner}/{repo}/pulls", "get", 422),
  createPull: responseValidator("/repos/{owner}/{repo}/pulls", "post", 201),
  createPull403: responseValidator("/repos/{owner}/{repo}/pulls", "post", 403),
  createPull422: responseValidator("/repos/{owner}/{repo}/pulls", "post", 422),
  pull: responseValidator("/repos/{owner}/{repo}/pulls/{pull_number}", "get", 200),
  pull404: responseValidator("/repos/{owner}/{repo}/pulls/{pull_number}", "get", 404),
  reviews: responseValidator("/repos/{owner}/{repo}/pulls/{pull_number}/reviews", "get", 200),
  reviewComments: responseValidator("/repos/{owner}/{repo}/pulls/{pull_number}/comments", "get", 200),
  merge: responseValidator("/repos/{owner}/{repo}/pulls/{pull_number}/merge", "put", 200),
  merge405: responseValidator("/repos/{owner}/{repo}/pulls/{pull_number}/merge", "put", 405),
  merge409: responseValidator("/repos/{owner}/{repo}/pulls/{pull_number}/merge", "put", 409),
  checkRuns: responseValidator("/repos/{owner}/{repo}/commits/{ref}/check-runs", "get", 200),
};

// ------------------------------------------------------------------ server

let gp;
before(async () => {
  gp = await startGitPlatforms({
    appId: APP_ID,
    publicKeyPem: appKeys.publicKey,
    gitlabClientId: CLIENT_ID,
    gitlabClientSecret: CLIENT_SECRET,
    githubClientId: GH_CLIENT_ID,
    githubClientSecret: GH_CLIENT_SECRET,
  });
});
after(async () => {
  await gp?.stop();
});
beforeEach(() => {
  gp.setLatency(0);
  gp.setTokenTtl({ github: 3600, gitlab: 7200 });
  gp.setUserTokenTtl(28800, 15897600);
});

async function call(method, path, { auth, json, form, headers = {} } = {}) {
  const h = { accept: "application/vnd.github+json", ...headers };
  if (auth) h.authorization = auth;
  let body;
  if (json !== undefined) {
    h["content-type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    h["content-type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(form).toString();
  }
  const res = await fetch(gp.url + path, { method, headers: h, body });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
}
const app = (opts) => `Bearer ${appJwt(opts)}`;
const assertGithub401 = (r, what) => {
  assert.equal(r.status, 401, `${what}: ${JSON.stringify(r.body)}`);
  assert.equal(typeof r.body.message, "string", what);
  assert.equal(typeof r.body.documentation_url, "string", what);
};

// ------------------------------------------------------------------ conformance

test("the schema converter accepts GitHub's own examples and rejects broken objects", () => {
  const ex = (name) => spec.components.examples[name].value;
  assertValid(v.installation, ex("base-installation"), "example base-installation");
  assertValid(v.accessToken, ex("installation-token"), "example installation-token");
  const broken = structuredClone(ex("base-installation"));
  delete broken.app_slug;
  assert.equal(v.installation(broken), false, "a missing required field must fail");
  assert.equal(v.installation({ ...ex("base-installation"), suspended_at: 5 }), false, "a wrong type must fail");
  assert.equal(v.installation({ ...ex("base-installation"), account: null }), true, "nullable account accepts null");
});

test("GitHub answers match the OpenAPI response schemas", async () => {
  gp.addInstallation({ id: 1001, login: "acme", type: "Organization", repos: [{ name: "rig", private: true, default_branch: "main" }, { name: "docs", private: false, default_branch: "trunk" }] });
  gp.addInstallation({ id: 1002, login: "alice", type: "User", repos: [{ name: "dotfiles" }] });

  for (const id of [1001, 1002]) {
    const inst = await call("GET", `/app/installations/${id}`, { auth: app() });
    assert.equal(inst.status, 200);
    assertValid(v.installation, inst.body, `GET /app/installations/${id}`);
    assert.equal(inst.body.id, id);
    assert.equal(inst.body.app_id, APP_ID);
    assert.equal(inst.body.app_slug, "gastown-dev");
    assert.equal(inst.body.suspended_at, null);
  }
  const org = (await call("GET", "/app/installations/1001", { auth: app() })).body;
  assert.equal(org.account.login, "acme");
  assert.equal(org.account.type, "Organization");
  assert.equal(org.target_type, "Organization");
  assert.equal(org.access_tokens_url, `${gp.url}/app/installations/1001/access_tokens`);

  const missing = await call("GET", "/app/installations/999", { auth: app() });
  assert.equal(missing.status, 404);
  assert.equal(missing.body.message, "Not Found");
  assertValid(v.installation404, missing.body, "404 body");

  const unscoped = await call("POST", "/app/installations/1001/access_tokens", { auth: app() });
  assert.equal(unscoped.status, 201);
  assertValid(v.accessToken, unscoped.body, "POST access_tokens (unscoped)");
  assert.match(unscoped.body.token, /^ghs_[A-Za-z0-9]{36}$/);
  assert.equal(unscoped.body.repositories, undefined);
  const ttl = Date.parse(unscoped.body.expires_at) - Date.now();
  assert.ok(ttl > 3590_000 && ttl <= 3600_000, `expires_at is about an hour away: ${unscoped.body.expires_at}`);
  assert.match(unscoped.body.expires_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

  const scoped = await call("POST", "/app/installations/1001/access_tokens", { auth: app(), json: { repositories: ["rig"] } });
  assert.equal(scoped.status, 201);
  assertValid(v.accessToken, scoped.body, "POST access_tokens (scoped)");
  assert.equal(scoped.body.repository_selection, "selected");
  assert.deepEqual(scoped.body.repositories.map((r) => r.full_name), ["acme/rig"]);
  const rec = gp.tokens().github.find((t) => t.token === scoped.body.token);
  assert.deepEqual(rec.repositories, ["rig"]);
  assert.equal(rec.installation_id, 1001);
  assert.equal(gp.tokens().github.find((t) => t.token === unscoped.body.token).repositories, null);

  const all = await call("GET", "/installation/repositories", { auth: `token ${unscoped.body.token}` });
  assert.equal(all.status, 200);
  assertValid(v.repositories, all.body, "GET /installation/repositories");
  assert.equal(all.body.total_count, 2);
  assert.deepEqual(all.body.repositories.map((r) => [r.full_name, r.private, r.default_branch]), [["acme/rig", true, "main"], ["acme/docs", false, "trunk"]]);
  assert.equal(all.body.repositories[0].clone_url, `${gp.gitUrl}/acme/rig.git`);

  const only = await call("GET", "/installation/repositories", { auth: `Bearer ${scoped.body.token}` });
  assertValid(v.repositories, only.body, "GET /installation/repositories (scoped token)");
  assert.deepEqual(only.body.repositories.map((r) => r.name), ["rig"]);
  assert.equal(only.body.total_count, 1);

  const bad = await call("GET", "/installation/repositories", { auth: "token ghs_nope" });
  assert.equal(bad.status, 401);
  assert.equal(bad.body.message, "Bad credentials");
  assertValid(v.repositories401, bad.body, "401 body");

  const unknownRepo = await call("POST", "/app/installations/1001/access_tokens", { auth: app(), json: { repositories: ["nope"] } });
  assert.equal(unknownRepo.status, 422);
  assertValid(v.accessToken422, unknownRepo.body, "422 body");
  const tooMuch = await call("POST", "/app/installations/1001/access_tokens", { auth: app(), json: { permissions: { administration: "write" } } });
  assert.equal(tooMuch.status, 422);
  const fewer = await call("POST", "/app/installations/1001/access_tokens", { auth: app(), json: { permissions: { contents: "read" } } });
  assert.equal(fewer.status, 201);
  assert.deepEqual(fewer.body.permissions, { contents: "read" });
  const noInst = await call("POST", "/app/installations/999/access_tokens", { auth: app() });
  assert.equal(noInst.status, 404);
  assertValid(v.accessToken404, noInst.body, "404 body");
});

// ------------------------------------------------------------------ App JWT

test("App JWT: RS256 by the App key is accepted, everything else is 401", async () => {
  gp.addInstallation({ id: 2001, login: "jwt-org", type: "Organization", repos: [] });
  const path = "/app/installations/2001";
  const good = await call("GET", path, { auth: app() });
  assert.equal(good.status, 200);
  const last = gp.lastAppJwt();
  assert.equal(last.header.alg, "RS256");
  assert.equal(last.claims.iss, APP_ID);

  assert.equal((await call("GET", path, { auth: app({ iss: String(APP_ID) }) })).status, 200, "iss as a string");
  assert.equal((await call("GET", path, { auth: app({ iat: nowS() - 60, exp: nowS() + 600 }) })).status, 200, "exp - iat = 660 s");
  assert.equal((await call("GET", path, { auth: app({ iat: nowS() + 30 }) })).status, 200, "iat within the 60 s skew");
  const lastGood = gp.lastAppJwt();

  const cases = {
    "wrong key": app({ privateKey: otherKeys.privateKey }),
    "expired": app({ iat: nowS() - 700, exp: nowS() - 100 }),
    "exp - iat > 10 min": app({ iat: nowS() - 30, exp: nowS() + 900 }),
    "iat in the future": app({ iat: nowS() + 300, exp: nowS() + 600 }),
    "wrong iss": app({ iss: APP_ID + 1 }),
    "alg none": app({ alg: "none" }),
    "HS256 keyed with the public key": app({ alg: "HS256", hmacKey: appKeys.publicKey }),
    "garbage": "Bearer not.a.jwt",
    "token scheme": `token ${appJwt()}`,
  };
  for (const [what, auth] of Object.entries(cases)) {
    const r = await call("GET", path, { auth });
    assertGithub401(r, what);
    const p = await call("POST", `${path}/access_tokens`, { auth });
    assertGithub401(p, `${what} (access_tokens)`);
  }
  assertGithub401(await call("GET", path), "no Authorization");
  assert.deepEqual(gp.lastAppJwt(), lastGood, "rejected JWTs are not recorded");
  const reasons = gp.log().filter((e) => e.status === 401).map((e) => e.reason);
  assert.ok(reasons.every((r) => typeof r === "string" && r.length > 0), "each rejection logs why");
});

// ------------------------------------------------------------------ installations and tokens

test("suspended installation: 403 on access_tokens, 200 again after unsuspend; deleted: 404 and 401", async () => {
  gp.addInstallation({ id: 3001, login: "sus", type: "Organization", repos: [{ name: "r" }] });
  const before = await call("POST", "/app/installations/3001/access_tokens", { auth: app() });
  assert.equal(before.status, 201);

  gp.suspendInstallation(3001);
  const inst = await call("GET", "/app/installations/3001", { auth: app() });
  assert.equal(inst.status, 200);
  assertValid(v.installation, inst.body, "suspended installation");
  assert.ok(inst.body.suspended_at, "suspended_at is set");
  assert.equal(inst.body.suspended_by.login, "sus");
  const denied = await call("POST", "/app/installations/3001/access_tokens", { auth: app() });
  assert.equal(denied.status, 403);
  assert.equal(denied.body.message, "This installation has been suspended");
  assertValid(v.accessToken403, denied.body, "403 body");
  assert.equal((await call("GET", "/installation/repositories", { auth: `token ${before.body.token}` })).status, 403);

  gp.unsuspendInstallation(3001);
  assert.equal((await call("POST", "/app/installations/3001/access_tokens", { auth: app() })).status, 201);
  assert.equal((await call("GET", "/installation/repositories", { auth: `token ${before.body.token}` })).status, 200);

  gp.deleteInstallation(3001);
  assert.equal((await call("GET", "/app/installations/3001", { auth: app() })).status, 404);
  assert.equal((await call("POST", "/app/installations/3001/access_tokens", { auth: app() })).status, 404);
  assert.equal((await call("GET", "/installation/repositories", { auth: `token ${before.body.token}` })).status, 401);
});

test("installation tokens expire after the configured TTL", async () => {
  gp.addInstallation({ id: 3101, login: "ttl", repos: [{ name: "r" }] });
  gp.setTokenTtl({ github: 0 });
  const t = await call("POST", "/app/installations/3101/access_tokens", { auth: app() });
  assert.equal(t.status, 201);
  const r = await call("GET", "/installation/repositories", { auth: `token ${t.body.token}` });
  assert.equal(r.status, 401);
  assert.equal(gp.tokens().github.find((x) => x.token === t.body.token).expired, true);
});

test("GitHub pagination: Link header with next/last, then prev/first", async () => {
  gp.addInstallation({ id: 4001, login: "many", type: "Organization", repos: ["a", "b", "c", "d", "e"].map((name) => ({ name })) });
  const { body: { token } } = await call("POST", "/app/installations/4001/access_tokens", { auth: app() });
  const page = (n) => call("GET", `/installation/repositories?per_page=2&page=${n}`, { auth: `token ${token}` });
  const links = (h) => Object.fromEntries([...(h.get("link") ?? "").matchAll(/<([^>]+)>; rel="(\w+)"/g)].map((m) => [m[2], new URL(m[1])]));

  const p1 = await page(1);
  assertValid(v.repositories, p1.body, "page 1");
  assert.equal(p1.body.total_count, 5);
  assert.deepEqual(p1.body.repositories.map((r) => r.name), ["a", "b"]);
  let l = links(p1.headers);
  assert.deepEqual(Object.keys(l).sort(), ["last", "next"]);
  assert.equal(l.next.searchParams.get("page"), "2");
  assert.equal(l.next.searchParams.get("per_page"), "2");
  assert.equal(l.last.searchParams.get("page"), "3");
  assert.equal(l.next.pathname, "/installation/repositories");

  const p2 = await page(2);
  assert.deepEqual(p2.body.repositories.map((r) => r.name), ["c", "d"]);
  assert.deepEqual(Object.keys(links(p2.headers)).sort(), ["first", "last", "next", "prev"]);

  const p3 = await page(3);
  assert.deepEqual(p3.body.repositories.map((r) => r.name), ["e"]);
  l = links(p3.headers);
  assert.deepEqual(Object.keys(l).sort(), ["first", "prev"]);
  assert.equal(l.prev.searchParams.get("page"), "2");

  const single = await call("GET", "/installation/repositories", { auth: `token ${token}` });
  assert.equal(single.headers.get("link"), null, "one page: no Link header");
  assert.equal(single.body.repositories.length, 5);
});

// ------------------------------------------------------------------ GitLab

const gitlabToken = (params, as = "form") =>
  call("POST", "/oauth/token", as === "json" ? { json: params } : { form: params });

test("GitLab: authorization code grant, single-use codes, client authentication", async () => {
  const code = gp.issueGitlabCode({ code: "code-1", user: { id: 77, username: "gl-user" }, projects: [{ path_with_namespace: "gl-user/app", default_branch: "main", visibility: "private" }], redirect_uri: "https://cb.example/gitlab" });
  assert.equal(code, "code-1");
  const base = { grant_type: "authorization_code", code, redirect_uri: "https://cb.example/gitlab", client_id: CLIENT_ID, client_secret: CLIENT_SECRET };

  const wrongClient = await gitlabToken({ ...base, client_secret: "nope" });
  assert.equal(wrongClient.status, 401);
  assert.equal(wrongClient.body.error, "invalid_client");
  const wrongRedirect = await gitlabToken({ ...base, redirect_uri: "https://evil.example/" });
  assert.equal(wrongRedirect.status, 400);
  assert.equal(wrongRedirect.body.error, "invalid_grant");

  const ok = await gitlabToken(base);
  assert.equal(ok.status, 200);
  assert.equal(ok.body.token_type, "Bearer");
  assert.equal(ok.body.expires_in, 7200);
  assert.equal(typeof ok.body.access_token, "string");
  assert.equal(typeof ok.body.refresh_token, "string");
  assert.equal(ok.body.scope, "api");
  assert.ok(Math.abs(ok.body.created_at - nowS()) <= 2);
  assert.equal(ok.headers.get("cache-control"), "no-store");

  const again = await gitlabToken(base, "json");
  assert.equal(again.status, 400, "a code works once");
  assert.equal(again.body.error, "invalid_grant");
  assert.equal(typeof again.body.error_description, "string");

  const unknown = await gitlabToken({ ...base, code: "never-issued" }, "json");
  assert.equal(unknown.status, 400);
  assert.equal(unknown.body.error, "invalid_grant");

  // JSON bodies work too, and so does PKCE.
  const verifier = "v".repeat(50);
  const challenge = (await import("node:crypto")).createHash("sha256").update(verifier).digest("base64url");
  const pkce = gp.issueGitlabCode({ user: { id: 77, username: "gl-user" }, code_challenge: challenge });
  const noVerifier = await gitlabToken({ grant_type: "authorization_code", code: pkce, client_id: CLIENT_ID, client_secret: CLIENT_SECRET }, "json");
  assert.equal(noVerifier.status, 400);
  const withVerifier = await gitlabToken({ grant_type: "authorization_code", code: pkce, code_verifier: verifier, client_id: CLIENT_ID, client_secret: CLIENT_SECRET }, "json");
  assert.equal(withVerifier.status, 200);

  const me = await call("GET", "/api/v4/user", { auth: `Bearer ${ok.body.access_token}` });
  assert.equal(me.status, 200);
  assert.equal(me.body.id, 77);
  assert.equal(me.body.username, "gl-user");
  assert.equal(typeof me.body.name, "string");
  const anon = await call("GET", "/api/v4/user", { auth: "Bearer nope" });
  assert.equal(anon.status, 401);
  assert.deepEqual(anon.body, { message: "401 Unauthorized" });
});

test("GitLab: refresh tokens rotate; a used refresh token is invalid_grant", async () => {
  const code = gp.issueGitlabCode({ user: { id: 88, username: "rot" }, projects: [] });
  const first = await gitlabToken({ grant_type: "authorization_code", code, client_id: CLIENT_ID, client_secret: CLIENT_SECRET });
  assert.equal(first.status, 200);
  const refresh = { grant_type: "refresh_token", refresh_token: first.body.refresh_token, client_id: CLIENT_ID, client_secret: CLIENT_SECRET };

  const badClient = await gitlabToken({ ...refresh, client_id: "other" });
  assert.equal(badClient.status, 401);
  assert.equal(badClient.body.error, "invalid_client");

  const second = await gitlabToken(refresh, "json");
  assert.equal(second.status, 200);
  assert.notEqual(second.body.access_token, first.body.access_token);
  assert.notEqual(second.body.refresh_token, first.body.refresh_token);

  const reuse = await gitlabToken(refresh);
  assert.equal(reuse.status, 400);
  assert.equal(reuse.body.error, "invalid_grant");
  assert.equal(typeof reuse.body.error_description, "string");

  assert.equal((await call("GET", "/api/v4/user", { auth: `Bearer ${first.body.access_token}` })).status, 401, "the old access token is revoked");
  assert.equal((await call("GET", "/api/v4/user", { auth: `Bearer ${second.body.access_token}` })).status, 200);
  const third = await gitlabToken({ ...refresh, refresh_token: second.body.refresh_token });
  assert.equal(third.status, 200);

  const mine = gp.tokens().gitlab.filter((g) => g.user_id === 88);
  assert.deepEqual(mine.map((g) => [g.via, g.refresh_state, g.access_state]), [
    ["authorization_code", "used", "revoked"],
    ["refresh_token", "used", "revoked"],
    ["refresh_token", "active", "active"],
  ]);
  assert.equal(mine[1].parent_refresh_token, first.body.refresh_token);

  gp.setTokenTtl({ gitlab: 0 });
  const expiring = await gitlabToken({ ...refresh, refresh_token: third.body.refresh_token });
  assert.equal(expiring.body.expires_in, 0);
  const expired = await call("GET", "/api/v4/user", { auth: `Bearer ${expiring.body.access_token}` });
  assert.equal(expired.status, 401);
  assert.equal(gp.tokens().gitlab.at(-1).access_state, "expired");
});

test("GitLab projects: membership list, search, simple, pagination headers", async () => {
  const projects = Array.from({ length: 5 }, (_, i) => ({ path_with_namespace: `team/proj-${i + 1}`, default_branch: i === 0 ? "develop" : "main", visibility: i % 2 ? "internal" : "private" }));
  const code = gp.issueGitlabCode({ user: { id: 99, username: "pager" }, projects });
  const { body: tok } = await gitlabToken({ grant_type: "authorization_code", code, client_id: CLIENT_ID, client_secret: CLIENT_SECRET });
  const list = (q) => call("GET", `/api/v4/projects?${q}`, { auth: `Bearer ${tok.access_token}` });

  const p1 = await list("membership=true&per_page=2&page=1");
  assert.equal(p1.status, 200);
  assert.equal(p1.body.length, 2);
  assert.equal(p1.headers.get("x-page"), "1");
  assert.equal(p1.headers.get("x-per-page"), "2");
  assert.equal(p1.headers.get("x-next-page"), "2");
  assert.equal(p1.headers.get("x-prev-page"), "");
  assert.equal(p1.headers.get("x-total"), "5");
  assert.equal(p1.headers.get("x-total-pages"), "3");
  assert.match(p1.headers.get("link"), /rel="next"/);
  const full = p1.body[0];
  for (const k of ["id", "name", "path_with_namespace", "http_url_to_repo", "web_url", "default_branch", "visibility"]) assert.ok(k in full, `full project has ${k}`);
  assert.equal(full.path_with_namespace, "team/proj-5", "default order: created_at desc");
  assert.equal(full.http_url_to_repo, `${gp.url}/team/proj-5.git`);

  const p3 = await list("membership=true&per_page=2&page=3");
  assert.equal(p3.body.length, 1);
  assert.equal(p3.headers.get("x-next-page"), "");
  assert.equal(p3.headers.get("x-prev-page"), "2");

  const simple = await list("membership=true&simple=true&per_page=100");
  assert.equal(simple.body.length, 5);
  for (const k of ["id", "name", "path_with_namespace", "http_url_to_repo", "web_url", "default_branch"]) assert.ok(k in simple.body[0], `simple project has ${k}`);
  assert.equal("visibility" in simple.body[0], false, "GitLab's simple representation has no visibility");
  assert.equal(simple.body.find((p) => p.name === "proj-1").default_branch, "develop");

  const found = await list("membership=true&search=proj-3&simple=true");
  assert.deepEqual(found.body.map((p) => p.path_with_namespace), ["team/proj-3"]);
  assert.equal(found.headers.get("x-total"), "1");

  assert.equal((await call("GET", "/api/v4/projects?membership=true", { auth: "Bearer nope" })).status, 401);
});

// ------------------------------------------------------------------ bookkeeping

test("calls(), resetCalls(), log() and setLatency()", async () => {
  gp.resetCalls();
  assert.deepEqual(gp.calls(), {});
  gp.addInstallation({ id: 5001, login: "count", repos: [] });
  await call("GET", "/app/installations/5001", { auth: app() });
  await call("GET", "/app/installations/5001", { auth: app() });
  await call("GET", "/api/v4/user", { auth: "Bearer x" });
  await gitlabToken({ grant_type: "refresh_token", refresh_token: "x", client_id: CLIENT_ID, client_secret: CLIENT_SECRET });
  await call("GET", "/nowhere");
  assert.equal(gp.calls("github.installation"), 2);
  assert.equal(gp.calls("gitlab.user"), 1);
  assert.equal(gp.calls("gitlab.token.refresh_token"), 1);
  assert.equal(gp.calls("github.access_tokens"), 0);
  assert.equal(gp.calls().unknown, 1);
  const tail = gp.log().slice(-5);
  assert.deepEqual(tail.map((e) => [e.method, e.path, e.key, e.status]), [
    ["GET", "/app/installations/5001", "github.installation", 200],
    ["GET", "/app/installations/5001", "github.installation", 200],
    ["GET", "/api/v4/user", "gitlab.user", 401],
    ["POST", "/oauth/token", "gitlab.token.refresh_token", 400],
    ["GET", "/nowhere", "unknown", 404],
  ]);
  assert.ok(!JSON.stringify(gp.log()).includes(CLIENT_SECRET), "no secrets in the log");

  gp.setLatency(150);
  const t0 = Date.now();
  await call("GET", "/app/installations/5001", { auth: app() });
  assert.ok(Date.now() - t0 >= 140, "latency applied");
  gp.setLatency(0);
});

// ------------------------------------------------------------------ webhooks

test("webhook example payloads load, and signWebhook is GitHub's X-Hub-Signature-256", () => {
  for (const action of ["deleted", "suspend", "unsuspend", "created"]) {
    const p = webhookPayload("installation", action);
    assert.equal(p.action, action);
    assert.equal(typeof p.installation.id, "number");
    assert.equal(typeof p.installation.account.login, "string");
    assert.equal(typeof p.sender.login, "string");
  }
  const revoked = webhookPayload("github_app_authorization", "revoked");
  assert.equal(revoked.action, "revoked");
  assert.equal(typeof revoked.sender.id, "number");
  const a = webhookPayload("installation", "deleted");
  a.installation.id = 1;
  assert.notEqual(webhookPayload("installation", "deleted").installation.id, 1, "each call is a fresh copy");
  assert.throws(() => webhookPayload("installation", "no-such-action"));
  assert.throws(() => webhookPayload("no_such_event"));

  // GitHub's documented test vector, and RFC 4231 test case 2.
  assert.equal(signWebhook("It's a Secret to Everybody", "Hello, World!"), "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
  assert.equal(signWebhook("Jefe", "what do ya want for nothing?"), "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  const body = JSON.stringify(webhookPayload("installation", "suspend"));
  assert.equal(signWebhook("s3cret", body), `sha256=${createHmac("sha256", "s3cret").update(body).digest("hex")}`);
});

// ------------------------------------------------------------------ GitHub App user-to-server OAuth

const GHU = /^ghu_[A-Za-z0-9]{36}$/;
const GHR = /^ghr_[A-Za-z0-9]{76}$/;
/** POST /login/oauth/access_token as the worker sends it (Accept: application/json). */
const ghToken = (params, as = "form") =>
  call("POST", "/login/oauth/access_token", { ...(as === "json" ? { json: params } : { form: params }), headers: { accept: "application/json" } });
const ghCode = (code, extra = {}) => ghToken({ client_id: GH_CLIENT_ID, client_secret: GH_CLIENT_SECRET, code, ...extra });
const ghRefresh = (refresh_token, extra = {}, as = "form") =>
  ghToken({ grant_type: "refresh_token", refresh_token, client_id: GH_CLIENT_ID, client_secret: GH_CLIENT_SECRET, ...extra }, as);
const basicAuth = (id, secret) => `Basic ${Buffer.from(`${id}:${secret}`).toString("base64")}`;
const deleteGrant = (access_token, { id = GH_CLIENT_ID, secret = GH_CLIENT_SECRET, clientId = GH_CLIENT_ID } = {}) =>
  call("DELETE", `/applications/${clientId}/grant`, { auth: basicAuth(id, secret), json: { access_token } });
/** GitHub's OAuth error: HTTP 200 with error, error_description and error_uri. */
function assertOAuthError(r, error, what) {
  assert.equal(r.status, 200, `${what}: GitHub answers OAuth errors with 200`);
  assert.equal(r.body.error, error, `${what}: ${JSON.stringify(r.body)}`);
  assert.equal(typeof r.body.error_description, "string", what);
  assert.match(r.body.error_uri, /^https:\/\/docs\.github\.com\//, what);
  assert.equal(r.body.access_token, undefined, what);
}
function assertUserTokens(r, what, { refreshTtl = 15897600 } = {}) {
  assert.equal(r.status, 200, what);
  assert.equal(r.body.error, undefined, `${what}: ${JSON.stringify(r.body)}`);
  assert.match(r.body.access_token, GHU, what);
  assert.match(r.body.refresh_token, GHR, what);
  assert.equal(r.body.token_type, "bearer", what);
  assert.equal(r.body.scope, "", what);
  assert.equal(r.body.refresh_token_expires_in, refreshTtl, what);
  assert.equal(typeof r.body.expires_in, "number", what);
}

test("GitHub user OAuth: code exchange, single-use codes, client credentials, GET /user", async () => {
  gp.resetCalls();
  const added = gp.addGithubUser({ id: 5550001, login: "octo-dev", name: "Octo Dev", email: "octo@example.com", repos: { "octo-dev/own": { admin: true, private: false } } });
  assertValid(v.user, added, "addGithubUser's return");
  const code = gp.issueGithubUserCode({ code: "c0de0001", user_id: 5550001, redirect_uri: "https://gastown.example/cb/github" });
  assert.equal(code, "c0de0001");
  const redirect_uri = "https://gastown.example/cb/github";

  assertOAuthError(await ghCode(code, { redirect_uri, client_secret: "wrong" }), "incorrect_client_credentials", "wrong client secret");
  assertOAuthError(await ghCode(code, { redirect_uri, client_id: "Iv23liSomeoneElse" }), "incorrect_client_credentials", "wrong client id");
  assertOAuthError(await ghCode(code, { redirect_uri: "https://evil.example/cb" }), "redirect_uri_mismatch", "wrong redirect_uri");

  const ok = await ghCode(code, { redirect_uri });
  assertUserTokens(ok, "code exchange");
  assert.equal(ok.body.expires_in, 28800);
  assert.deepEqual(Object.keys(ok.body).sort(), ["access_token", "expires_in", "refresh_token", "refresh_token_expires_in", "scope", "token_type"]);
  assert.match(ok.headers.get("content-type"), /^application\/json/);

  const replay = await ghCode(code, { redirect_uri });
  assertOAuthError(replay, "bad_verification_code", "replayed code");
  assert.equal(replay.body.error_description, "The code passed is incorrect or expired.");
  assertOAuthError(await ghCode("never-issued"), "bad_verification_code", "unknown code");
  assertOAuthError(await ghToken({ client_id: GH_CLIENT_ID, client_secret: GH_CLIENT_SECRET }), "bad_verification_code", "no code");
  const stale = gp.issueGithubUserCode({ user_id: 5550001, expires_in: 0 });
  assertOAuthError(await ghCode(stale), "bad_verification_code", "expired code");
  assertOAuthError(await ghToken({ grant_type: "password", client_id: GH_CLIENT_ID, client_secret: GH_CLIENT_SECRET }), "unsupported_grant_type", "other grant");
  assert.throws(() => gp.issueGithubUserCode({ user_id: 1234 }), /addGithubUser/);

  // JSON bodies work, and without Accept: application/json GitHub answers form-encoded.
  const viaJson = await ghCode(gp.issueGithubUserCode({ user_id: 5550001 }), "json");
  assert.equal(viaJson.status, 200);
  assertUserTokens(await ghToken({ client_id: GH_CLIENT_ID, client_secret: GH_CLIENT_SECRET, code: gp.issueGithubUserCode({ user_id: 5550001 }) }, "json"), "JSON body");
  const formRes = await fetch(`${gp.url}/login/oauth/access_token`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ client_id: GH_CLIENT_ID, client_secret: GH_CLIENT_SECRET, code: gp.issueGithubUserCode({ user_id: 5550001 }) }),
  });
  assert.match(formRes.headers.get("content-type"), /^application\/x-www-form-urlencoded/);
  const form = new URLSearchParams(await formRes.text());
  assert.match(form.get("access_token"), GHU);
  assert.equal(form.get("token_type"), "bearer");

  for (const auth of [`Bearer ${ok.body.access_token}`, `token ${ok.body.access_token}`]) {
    const me = await call("GET", "/user", { auth });
    assert.equal(me.status, 200);
    assertValid(v.user, me.body, "GET /user");
    assert.equal(me.body.login, "octo-dev");
    assert.equal(me.body.id, 5550001);
    assert.equal(me.body.type, "User");
    assert.equal(me.body.name, "Octo Dev");
    assert.equal(me.body.email, "octo@example.com");
    assert.equal(me.body.public_repos, 1);
  }
  gp.addGithubUser({ id: 5550002, login: "no-mail", repos: {} });
  const { body: noMail } = await ghCode(gp.issueGithubUserCode({ user_id: 5550002 }));
  const quiet = await call("GET", "/user", { auth: `Bearer ${noMail.access_token}` });
  assertValid(v.user, quiet.body, "GET /user (no public email)");
  assert.equal(quiet.body.email, null);
  assert.equal(quiet.body.name, null);

  const unknown = await call("GET", "/user", { auth: "Bearer ghu_000000000000000000000000000000000000" });
  assert.equal(unknown.status, 401);
  assert.equal(unknown.body.message, "Bad credentials");
  assertValid(v.user401, unknown.body, "401 body");
  assert.equal((await call("GET", "/user")).status, 401, "no Authorization");

  assert.equal(gp.calls("github.oauth.code"), 5, "successful code exchanges");
  assert.equal(gp.calls("github.oauth.invalid"), 8, "OAuth errors are counted, under github.oauth.invalid");
  assert.equal(gp.calls("github.user"), 5);
  const errs = gp.log().filter((e) => e.key === "github.oauth.invalid");
  assert.ok(errs.every((e) => e.status === 200 && /^(authorization_code|password): \w+/.test(e.reason)), JSON.stringify(errs));
  const logText = JSON.stringify(gp.log());
  assert.ok(!logText.includes(GH_CLIENT_SECRET) && !logText.includes(ok.body.access_token), "no secrets in the log");
});

test("git over HTTPS: installation tokens that see the repository fetch and push; others are refused", async () => {
  const { execFile } = await import("node:child_process");
  const { mkdtempSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  gp.addInstallation({ id: 4001, login: "githost", repos: [{ name: "code", default_branch: "trunk" }, { name: "other" }], permissions: { contents: "write", metadata: "read" } });
  gp.addInstallation({ id: 4002, login: "reader", repos: [{ name: "ro" }], permissions: { contents: "read", metadata: "read" } });
  const mint = async (id, body) => (await call("POST", `/app/installations/${id}/access_tokens`, { auth: app(), json: body })).body.token;
  const dir = mkdtempSync(join(tmpdir(), "git-host-test-"));
  // Asynchronous: the stand-in answers from this process.
  const git = (args, password) => new Promise((resolve) => {
    const env = { ...process.env, GIT_CONFIG_GLOBAL: "/dev/null", GIT_CONFIG_NOSYSTEM: "1", GIT_TERMINAL_PROMPT: "0", GIT_SSL_CAINFO: gp.gitCaFile,
      GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@example.com", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@example.com" };
    const auth = password ? ["-c", `http.extraHeader=Authorization: Basic ${Buffer.from(`x-access-token:${password}`).toString("base64")}`] : [];
    execFile("git", [...auth, ...args], { cwd: dir, env }, (error, stdout, stderr) => resolve({ code: error ? error.code ?? 1 : 0, out: stdout + stderr }));
  });
  try {
    const scoped = await mint(4001, { repositories: ["code"] });
    const url = `${gp.gitUrl}/githost/code.git`;
    const clone = await git(["clone", url, "code"], scoped);
    assert.equal(clone.code, 0, clone.out);
    assert.equal((await git(["-C", "code", "rev-parse", "--abbrev-ref", "HEAD"])).out.trim(), "trunk", "the repository's default branch");
    assert.equal((await git(["-C", "code", "commit", "--allow-empty", "-m", "x"])).code, 0);
    const push = await git(["-C", "code", "push", "origin", "HEAD:refs/heads/feature"], scoped);
    assert.equal(push.code, 0, push.out);
    assert.notEqual((await git(["clone", url, "anon"])).code, 0, "no token: refused");
    assert.notEqual((await git(["clone", `${gp.gitUrl}/githost/other.git`, "o"], scoped)).code, 0, "a token scoped to another repository");
    assert.notEqual((await git(["clone", url, "bad"], "ghs_not-a-token")).code, 0, "an unknown token");
    const readOnly = await mint(4002);
    assert.equal((await git(["clone", `${gp.gitUrl}/reader/ro.git`, "ro"], readOnly)).code, 0);
    assert.equal((await git(["-C", "ro", "commit", "--allow-empty", "-m", "x"])).code, 0);
    assert.notEqual((await git(["-C", "ro", "push", "origin", "HEAD:refs/heads/x"], readOnly)).code, 0, "contents: read cannot push");
    gp.suspendInstallation(4001);
    assert.notEqual((await git(["clone", url, "suspended"], scoped)).code, 0, "a suspended installation");
    gp.unsuspendInstallation(4001);
    const statuses = gp.gitLog().filter((e) => e.owner === "githost").map((e) => e.status);
    assert.ok(statuses.includes(401) && statuses.includes(403) && statuses.includes("ok"), JSON.stringify(statuses));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("GitHub user OAuth: GET /user/installations lists only the installations the user may access", async () => {
  gp.addGithubUser({ id: 5550201, login: "inst-owner" });
  gp.addGithubUser({ id: 5550202, login: "org-admin" });
  gp.addInstallation({ id: 3001, login: "inst-owner", type: "User" });
  gp.addInstallation({ id: 3002, login: "inst-org", type: "Organization", users: [5550202] });
  gp.addInstallation({ id: 3003, login: "someone-else", type: "User" });
  const token = async (user_id) => (await ghCode(gp.issueGithubUserCode({ user_id }))).body.access_token;
  const list = async (auth) => call("GET", "/user/installations?per_page=100", { auth });
  const owner = await list(`Bearer ${await token(5550201)}`);
  assert.equal(owner.status, 200);
  assertValid(v.userInstallations, owner.body, "GET /user/installations");
  assert.deepEqual(owner.body.installations.map((i) => i.id), [3001], "the user's own installation only");
  const admin = await list(`token ${await token(5550202)}`);
  assert.deepEqual(admin.body.installations.map((i) => i.id), [3002]);
  gp.grantInstallationAccess(3003, 5550202);
  assert.deepEqual((await list(`Bearer ${await token(5550202)}`)).body.installations.map((i) => i.id), [3002, 3003]);
  const anonymous = await call("GET", "/user/installations");
  assertGithub401(anonymous, "no token");
  assertValid(v.userInstallations401, anonymous.body, "401");
  const installationToken = (await call("POST", "/app/installations/3001/access_tokens", { auth: app() })).body.token;
  const wrongKind = await list(`Bearer ${installationToken}`);
  assert.equal(wrongKind.status, 403);
  assertValid(v.userInstallations403, wrongKind.body, "403");
  assert.ok(gp.calls("github.user_installations") >= 5);
});

test("GitHub user OAuth: refresh tokens rotate; old refresh is bad_refresh_token, old access is 401", async () => {
  gp.addGithubUser({ id: 5550101, login: "rotator", repos: {} });
  const first = await ghCode(gp.issueGithubUserCode({ user_id: 5550101 }));
  assertUserTokens(first, "first");

  assertOAuthError(await ghRefresh(first.body.refresh_token, { client_secret: "nope" }), "incorrect_client_credentials", "refresh with a wrong secret");
  const second = await ghRefresh(first.body.refresh_token);
  assertUserTokens(second, "refresh");
  assert.notEqual(second.body.access_token, first.body.access_token);
  assert.notEqual(second.body.refresh_token, first.body.refresh_token);

  const reuse = await ghRefresh(first.body.refresh_token);
  assertOAuthError(reuse, "bad_refresh_token", "used refresh token");
  assertOAuthError(await ghRefresh("ghr_nope"), "bad_refresh_token", "unknown refresh token");
  const old = await call("GET", "/user", { auth: `Bearer ${first.body.access_token}` });
  assert.equal(old.status, 401, "the access token issued with the used refresh token is dead");
  assertValid(v.user401, old.body, "401 body");
  assert.equal((await call("GET", "/user", { auth: `Bearer ${second.body.access_token}` })).status, 200);

  // An expired access token: 401, but its refresh token still works.
  gp.setUserTokenTtl(0);
  const short = await ghRefresh(second.body.refresh_token, {}, "json");
  assertUserTokens(short, "short-lived");
  assert.equal(short.body.expires_in, 0);
  assert.equal((await call("GET", "/user", { auth: `token ${short.body.access_token}` })).status, 401);
  gp.setUserTokenTtl(28800);
  const fresh = await ghRefresh(short.body.refresh_token);
  assertUserTokens(fresh, "refresh after expiry");
  assert.equal((await call("GET", "/user", { auth: `token ${fresh.body.access_token}` })).status, 200);

  // An expired refresh token is bad_refresh_token.
  gp.setUserTokenTtl(28800, 0);
  const dying = await ghRefresh(fresh.body.refresh_token);
  assertUserTokens(dying, "refresh with zero refresh lifetime", { refreshTtl: 0 });
  assertOAuthError(await ghRefresh(dying.body.refresh_token), "bad_refresh_token", "expired refresh token");

  const mine = gp.githubUserTokens().filter((t) => t.user_id === 5550101);
  assert.deepEqual(mine.map((t) => [t.via, t.access_state, t.refresh_state]), [
    ["authorization_code", "revoked", "used"],
    ["refresh_token", "revoked", "used"],
    ["refresh_token", "revoked", "used"], // expired first, then revoked by its refresh
    ["refresh_token", "revoked", "used"],
    ["refresh_token", "active", "expired"],
  ]);
  assert.equal(mine[1].parent_refresh_token, first.body.refresh_token);
  assert.equal(mine[0].replaced_by, second.body.refresh_token);
  assert.ok(gp.calls("github.oauth.refresh") >= 4);
});

test("GitHub user OAuth: GET /repos/{owner}/{repo} permissions per user, installation tokens", async () => {
  gp.addInstallation({ id: 6001, login: "perm-org", type: "Organization", repos: [{ name: "rig", default_branch: "trunk" }, { name: "other" }] });
  gp.addGithubUser({ id: 5550201, login: "writer", repos: { "perm-org/rig": { push: true }, "perm-org/docs": {}, "writer/solo": { admin: true, private: false } } });
  gp.addGithubUser({ id: 5550202, login: "reader", repos: { "perm-org/rig": { push: false } } });
  gp.addGithubUser({ id: 5550203, login: "boss", repos: { "Perm-Org/Rig": { admin: true } } });
  const tokenOf = async (user_id) => (await ghCode(gp.issueGithubUserCode({ user_id }))).body.access_token;
  const [writer, reader, boss] = [await tokenOf(5550201), await tokenOf(5550202), await tokenOf(5550203)];
  const repo = (path, auth) => call("GET", `/repos/${path}`, { auth: auth && `Bearer ${auth}` });

  const w = await repo("perm-org/rig", writer);
  assert.equal(w.status, 200);
  assertValid(v.repo, w.body, "GET /repos (writer)");
  assert.equal(w.body.full_name, "perm-org/rig");
  assert.equal(w.body.default_branch, "trunk", "the installation's repository");
  assert.equal(w.body.owner.type, "Organization");
  assert.equal(w.body.organization.login, "perm-org");
  assert.deepEqual(w.body.permissions, { admin: false, maintain: false, push: true, triage: true, pull: true });

  const r = await repo("perm-org/rig", reader);
  assertValid(v.repo, r.body, "GET /repos (reader)");
  assert.equal(r.body.id, w.body.id, "same repository");
  assert.equal(r.body.permissions.push, false);
  assert.equal(r.body.permissions.pull, true);

  const b = await repo("PERM-ORG/rig", boss);
  assert.equal(b.status, 200, "owner and name are case-insensitive");
  assert.deepEqual(b.body.permissions, { admin: true, maintain: true, push: true, triage: true, pull: true });

  const none = await repo("perm-org/docs", reader);
  assert.equal(none.status, 404, "no access: 404, not 403");
  assert.equal(none.body.message, "Not Found");
  assertValid(v.repo404, none.body, "404 body");
  assert.equal((await repo("perm-org/other", writer)).status, 404, "in the installation but not the user's");

  const docs = await repo("perm-org/docs", writer);
  assertValid(v.repo, docs.body, "a repository known only from a user's access list");
  assert.equal(docs.body.private, true);
  assert.deepEqual(docs.body.permissions, { admin: false, maintain: false, push: false, triage: false, pull: true });
  const solo = await repo("writer/solo", writer);
  assertValid(v.repo, solo.body, "a user-owned repository");
  assert.equal(solo.body.owner.type, "User");
  assert.equal(solo.body.owner.id, 5550201);
  assert.equal("organization" in solo.body, false);

  // Installation tokens: the installation's repositories, no permissions block.
  const { body: inst } = await call("POST", "/app/installations/6001/access_tokens", { auth: app() });
  const viaInst = await call("GET", "/repos/perm-org/rig", { auth: `token ${inst.token}` });
  assert.equal(viaInst.status, 200);
  assertValid(v.repo, viaInst.body, "GET /repos (installation token)");
  assert.equal(viaInst.body.permissions, undefined);
  assert.equal((await call("GET", "/repos/perm-org/docs", { auth: `token ${inst.token}` })).status, 404, "not in the installation");
  const { body: scoped } = await call("POST", "/app/installations/6001/access_tokens", { auth: app(), json: { repositories: ["other"] } });
  assert.equal((await call("GET", "/repos/perm-org/rig", { auth: `token ${scoped.token}` })).status, 404, "outside the token's repositories");
  const instOnUser = await call("GET", "/user", { auth: `token ${inst.token}` });
  assert.equal(instOnUser.status, 403);
  assert.equal(instOnUser.body.message, "Resource not accessible by integration");
  assertValid(v.user403, instOnUser.body, "403 body");

  assert.equal((await call("GET", "/repos/perm-org/rig", { auth: "token ghu_bad" })).status, 401);
  assert.equal((await repo("perm-org/rig")).status, 404, "anonymous: private repositories are 404");
  assert.equal((await repo("writer/solo")).status, 200, "anonymous: public repositories are visible");

  // Access changes take effect for existing tokens.
  gp.addGithubUser({ id: 5550202, login: "reader", repos: { "perm-org/rig": { push: true } } });
  assert.equal((await repo("perm-org/rig", reader)).body.permissions.push, true);
  gp.addGithubUser({ id: 5550202, login: "reader", repos: {} });
  assert.equal((await repo("perm-org/rig", reader)).status, 404);
});

test("GitHub user OAuth: DELETE /applications/{client_id}/grant revokes every token of the grant", async () => {
  gp.resetCalls();
  assert.equal(spec.paths["/applications/{client_id}/grant"].delete.responses["204"].content, undefined, "the spec's 204 has no body");
  gp.addGithubUser({ id: 5550301, login: "leaver", repos: {} });
  gp.addGithubUser({ id: 5550302, login: "stayer", repos: {} });
  const first = (await ghCode(gp.issueGithubUserCode({ user_id: 5550301 }))).body;
  const second = (await ghCode(gp.issueGithubUserCode({ user_id: 5550301 }))).body; // a second pair in the same grant
  const other = (await ghCode(gp.issueGithubUserCode({ user_id: 5550302 }))).body;

  const badSecret = await deleteGrant(first.access_token, { secret: "nope" });
  assert.equal(badSecret.status, 401);
  assertGithub401(badSecret, "bad Basic secret");
  assert.equal((await deleteGrant(first.access_token, { id: "Iv23liOther" })).status, 401, "bad Basic id");
  const noBasic = await call("DELETE", `/applications/${GH_CLIENT_ID}/grant`, { auth: `Bearer ${first.access_token}`, json: { access_token: first.access_token } });
  assert.equal(noBasic.status, 401, "no Basic auth");
  assert.equal((await deleteGrant(first.access_token, { clientId: "Iv23liOther" })).status, 404, "path client_id is not the caller");
  const missing = await call("DELETE", `/applications/${GH_CLIENT_ID}/grant`, { auth: basicAuth(GH_CLIENT_ID, GH_CLIENT_SECRET), json: {} });
  assert.equal(missing.status, 422);
  assert.equal((await call("GET", "/user", { auth: `Bearer ${first.access_token}` })).status, 200, "failed deletes change nothing");

  const res = await fetch(`${gp.url}/applications/${GH_CLIENT_ID}/grant`, {
    method: "DELETE",
    headers: { accept: "application/vnd.github+json", authorization: basicAuth(GH_CLIENT_ID, GH_CLIENT_SECRET), "content-type": "application/json" },
    body: JSON.stringify({ access_token: first.access_token }),
  });
  assert.equal(res.status, 204);
  assert.equal(await res.text(), "", "204: no body");

  for (const t of [first, second]) {
    assert.equal((await call("GET", "/user", { auth: `Bearer ${t.access_token}` })).status, 401, "access tokens of the grant are dead");
    assertOAuthError(await ghRefresh(t.refresh_token), "bad_refresh_token", "refresh tokens of the grant are dead");
  }
  assert.equal((await call("GET", "/user", { auth: `Bearer ${other.access_token}` })).status, 200, "other users keep theirs");

  const again = await deleteGrant(first.access_token);
  assert.equal(again.status, 404, "second delete");
  assert.equal(again.body.message, "Not Found");
  assert.equal((await deleteGrant("ghu_unknown")).status, 404, "unknown token");

  const states = gp.githubUserTokens().filter((t) => t.user_id === 5550301);
  assert.deepEqual(states.map((t) => [t.access_state, t.refresh_state, t.revoked_by]), [
    ["revoked", "revoked", "grant_delete"],
    ["revoked", "revoked", "grant_delete"],
  ]);
  assert.equal(gp.calls("github.grant_delete"), 8);

  // The user can authorize the App again: a new grant.
  const back = await ghCode(gp.issueGithubUserCode({ user_id: 5550301 }));
  assertUserTokens(back, "re-authorization");
  assert.equal((await call("GET", "/user", { auth: `Bearer ${back.body.access_token}` })).status, 200);
});

test("GitHub user OAuth: revokeUserGrant kills the user's tokens; github_app_authorization.revoked payload", async () => {
  gp.addGithubUser({ id: 5550401, login: "revoker", repos: { "revoker/r": { admin: true } } });
  gp.addGithubUser({ id: 5550402, login: "bystander", repos: {} });
  const t = (await ghCode(gp.issueGithubUserCode({ user_id: 5550401 }))).body;
  const rotated = (await ghRefresh(t.refresh_token)).body;
  const pending = gp.issueGithubUserCode({ user_id: 5550401 });
  const by = (await ghCode(gp.issueGithubUserCode({ user_id: 5550402 }))).body;

  assert.equal(gp.revokeUserGrant(5550401), 1, "one live pair");
  assert.equal(gp.revokeUserGrant(5550401), 0, "nothing left");
  assertGithub401(await call("GET", "/user", { auth: `Bearer ${rotated.access_token}` }), "revoked access token");
  assert.equal((await call("GET", "/repos/revoker/r", { auth: `Bearer ${rotated.access_token}` })).status, 401);
  assertOAuthError(await ghRefresh(rotated.refresh_token), "bad_refresh_token", "revoked refresh token");
  assertOAuthError(await ghCode(pending), "bad_verification_code", "a code issued before the revocation");
  assert.equal((await deleteGrant(rotated.access_token)).status, 404, "already revoked");
  assert.equal((await call("GET", "/user", { auth: `Bearer ${by.access_token}` })).status, 200);
  const last = gp.githubUserTokens().filter((x) => x.user_id === 5550401).at(-1);
  assert.deepEqual([last.access_state, last.refresh_state, last.revoked_by], ["revoked", "revoked", "user"]);

  // The webhook GitHub sends when a user revokes the App; sender.id is the user's numeric id.
  const hook = webhookPayload("github_app_authorization", "revoked");
  assert.equal(hook.action, "revoked");
  assert.equal(typeof hook.sender.id, "number");
  assert.equal(typeof hook.sender.login, "string");
  hook.sender.id = 5550401;
  hook.sender.login = "revoker";
  const body = JSON.stringify(hook);
  assert.match(signWebhook("s3cret", body), /^sha256=[0-9a-f]{64}$/);
});

// ------------------------------------------------------------------ pull requests

/** git in `cwd` against the stand-in's git host, authenticated as x-access-token:`token` (asynchronous: the stand-in answers from this process). */
function gitCmd(cwd, args, token) {
  const env = { ...process.env, GIT_CONFIG_GLOBAL: "/dev/null", GIT_CONFIG_NOSYSTEM: "1", GIT_TERMINAL_PROMPT: "0", GIT_SSL_CAINFO: gp.gitCaFile,
    GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@example.com", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@example.com" };
  const auth = token ? ["-c", `http.extraHeader=Authorization: Basic ${Buffer.from(`x-access-token:${token}`).toString("base64")}`] : [];
  return new Promise((resolve) => {
    execFile("git", [...auth, ...args], { cwd, env }, (error, stdout, stderr) => resolve({ code: error ? error.code ?? 1 : 0, out: (stdout + stderr).trim() }));
  });
}
/** git against a bare repository of the git host (read-only inspection). */
const bareGit = (owner, name, args) => execFileSync("git", ["--git-dir", gp.gitRepoPath(owner, name), ...args], { encoding: "utf8" }).trim();

/**
 * An installation with one repository, and a clone of it through the git host. `push(branch,
 * files)` commits `files` ({ path: content }; none: no commit) on `branch` (made from main) and
 * pushes it with the installation's token; it returns the branch's new sha. `pushAll({ branch:
 * files })` does that for several branches in one push and returns their shas.
 */
async function prRepo({ id, login, type = "Organization", name = "app", permissions }) {
  gp.addInstallation({ id, login, type, repos: [{ name }], ...(permissions ? { permissions } : {}) });
  const token = (await call("POST", `/app/installations/${id}/access_tokens`, { auth: app() })).body.token;
  const dir = mkdtempSync(join(tmpdir(), "pr-test-"));
  const clone = await gitCmd(dir, ["clone", "--quiet", `${gp.gitUrl}/${login}/${name}.git`, "w"], token);
  assert.equal(clone.code, 0, clone.out);
  const work = join(dir, "w");
  const git = (args) => gitCmd(work, args, token);
  const commit = async (branch, files) => {
    const local = (await git(["rev-parse", "--verify", "--quiet", `refs/heads/${branch}`])).code === 0;
    assert.equal((await git(["checkout", "--quiet", ...(local ? [branch] : ["-B", branch, "origin/main"])])).code, 0);
    for (const [path, content] of Object.entries(files)) writeFileSync(join(work, path), content);
    if (Object.keys(files).length) {
      assert.equal((await git(["add", "-A"])).code, 0);
      const made = await git(["commit", "--quiet", "-m", `change ${Object.keys(files).join(", ")}`]);
      assert.equal(made.code, 0, made.out);
    }
    return (await git(["rev-parse", "HEAD"])).out;
  };
  const pushAll = async (branches) => {
    const shas = {};
    for (const [branch, files] of Object.entries(branches)) shas[branch] = await commit(branch, files);
    const pushed = await git(["push", "--quiet", "--force", "origin", ...Object.keys(branches).map((b) => `${b}:${b}`)]);
    assert.equal(pushed.code, 0, pushed.out);
    return shas;
  };
  const push = async (branch, files = {}) => (await pushAll({ [branch]: files }))[branch];
  return { token, push, pushAll, git, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
const asToken = (token) => ({ auth: `token ${token}` });
/** GitHub's 422 "Validation Failed" of POST /pulls, with exactly `errors`. */
function assertValidationFailed(r, errors, what) {
  assert.equal(r.status, 422, `${what}: ${JSON.stringify(r.body)}`);
  assertValid(v.createPull422, r.body, what);
  assert.deepEqual(r.body, { message: "Validation Failed", errors, documentation_url: "https://docs.github.com/rest/pulls/pulls#create-a-pull-request", status: "422" }, what);
}

test("GitHub pull requests: create (bot and user authors), list, get, reviews, comments, check runs, errors", async () => {
  gp.resetCalls();
  const repo = await prRepo({ id: 8001, login: "pr-org" });
  try {
    const { "feature-a": aSha, "feature-b": bSha } = await repo.pushAll({ "feature-a": { "a.txt": "alpha\nbeta\n" }, "feature-b": { "b.txt": "bravo\n" }, empty: {} }); // empty: no commit over main
    gp.addGithubUser({ id: 5558001, login: "pr-dev", repos: { "pr-org/app": { push: true } } });
    gp.addGithubUser({ id: 5558002, login: "pr-reader", repos: { "pr-org/app": {} } });
    const userToken = async (user_id) => (await ghCode(gp.issueGithubUserCode({ user_id }))).body.access_token;
    const [dev, reader] = [await userToken(5558001), await userToken(5558002)];

    // An installation token: the App's bot is the author.
    const byBot = await call("POST", "/repos/pr-org/app/pulls", { ...asToken(repo.token), json: { title: "Feature A", head: "feature-a", base: "main", body: "Adds a.txt" } });
    assert.equal(byBot.status, 201, JSON.stringify(byBot.body));
    assertValid(v.createPull, byBot.body, "POST /pulls (installation token)");
    assert.equal(byBot.body.number, 1);
    assert.equal(byBot.body.state, "open");
    assert.equal(byBot.body.merged, false);
    assert.equal(byBot.body.draft, false);
    assert.equal(byBot.body.body, "Adds a.txt");
    assert.equal(byBot.body.user.login, "gastown-dev[bot]");
    assert.equal(byBot.body.user.type, "Bot");
    assert.equal(byBot.body.user.html_url, `${gp.url}/apps/gastown-dev`);
    assert.equal(byBot.body.html_url, `${gp.url}/pr-org/app/pull/1`);
    assert.equal(byBot.headers.get("location"), `${gp.url}/repos/pr-org/app/pulls/1`);
    assert.deepEqual([byBot.body.head.label, byBot.body.head.ref, byBot.body.head.sha], ["pr-org:feature-a", "feature-a", aSha]);
    assert.deepEqual([byBot.body.base.label, byBot.body.base.ref], ["pr-org:main", "main"]);
    assert.equal(byBot.body.base.sha, bareGit("pr-org", "app", ["rev-parse", "main"]));
    assert.equal(byBot.body.base.repo.full_name, "pr-org/app");
    assert.deepEqual(byBot.body.requested_reviewers, []);
    assert.equal(byBot.body.commits, 1);
    assert.equal(byBot.body.additions, 2);
    assert.equal(byBot.body.changed_files, 1);

    // A user token with push access: the user is the author; head may be owner:branch.
    const byUser = await call("POST", "/repos/pr-org/app/pulls", { auth: `Bearer ${dev}`, json: { title: "Feature B", head: "pr-org:feature-b", base: "main", draft: true } });
    assert.equal(byUser.status, 201, JSON.stringify(byUser.body));
    assertValid(v.createPull, byUser.body, "POST /pulls (user token)");
    assert.equal(byUser.body.number, 2);
    assert.deepEqual([byUser.body.user.login, byUser.body.user.id, byUser.body.user.type], ["pr-dev", 5558001, "User"]);
    assert.equal(byUser.body.author_association, "COLLABORATOR");
    assert.equal(byUser.body.draft, true);
    assert.equal(byUser.body.body, null, "no body given");
    assert.equal(byUser.body.head.sha, bSha);

    // Lists: pull-request-simple, newest first, filters.
    const list = await call("GET", "/repos/pr-org/app/pulls", asToken(repo.token));
    assert.equal(list.status, 200);
    assertValid(v.pulls, list.body, "GET /pulls");
    assert.deepEqual(list.body.map((p) => p.number), [2, 1]);
    assert.equal("merged" in list.body[0], false, "the simple shape has no merged");
    const byHead = await call("GET", "/repos/pr-org/app/pulls?head=pr-org:feature-a&state=open", asToken(repo.token));
    assert.deepEqual(byHead.body.map((p) => p.number), [1]);
    assert.deepEqual((await call("GET", "/repos/pr-org/app/pulls?head=feature-a", asToken(repo.token))).body.map((p) => p.number), [2, 1], "a bare branch name is ignored, as GitHub does");
    assert.deepEqual((await call("GET", "/repos/pr-org/app/pulls?state=closed", asToken(repo.token))).body, []);
    assert.deepEqual((await call("GET", "/repos/pr-org/app/pulls?state=all&direction=asc", { auth: `Bearer ${reader}` })).body.map((p) => p.number), [1, 2], "read access lists");
    const paged = await call("GET", "/repos/pr-org/app/pulls?per_page=1", asToken(repo.token));
    assert.deepEqual(paged.body.map((p) => p.number), [2]);
    assert.match(paged.headers.get("link"), /[?&]page=2[^>]*>; rel="next"/);
    const badState = await call("GET", "/repos/pr-org/app/pulls?state=merged", asToken(repo.token));
    assert.equal(badState.status, 422);
    assertValid(v.pulls422, badState.body, "422 body");

    // One pull request: the full shape.
    const one = await call("GET", "/repos/pr-org/app/pulls/1", { auth: `Bearer ${dev}` });
    assert.equal(one.status, 200);
    assertValid(v.pull, one.body, "GET /pulls/1");
    assert.deepEqual([one.body.mergeable, one.body.mergeable_state, one.body.merged_by], [true, "clean", null]);
    assert.equal((await call("GET", "/repos/pr-org/app/pulls/2", asToken(repo.token))).body.mergeable_state, "draft");
    const none = await call("GET", "/repos/pr-org/app/pulls/99", asToken(repo.token));
    assert.equal(none.status, 404);
    assertValid(v.pull404, none.body, "404 body");

    // GitHub's 422s.
    assertValidationFailed(await call("POST", "/repos/pr-org/app/pulls", { ...asToken(repo.token), json: { title: "Again", head: "feature-a", base: "main" } }),
      [{ resource: "PullRequest", code: "custom", message: "A pull request already exists for pr-org:feature-a." }], "an open pull request for the head");
    assertValidationFailed(await call("POST", "/repos/pr-org/app/pulls", { ...asToken(repo.token), json: { title: "Ghost", head: "no-such-branch", base: "main" } }),
      [{ resource: "PullRequest", field: "head", code: "invalid" }], "no head branch");
    assertValidationFailed(await call("POST", "/repos/pr-org/app/pulls", { ...asToken(repo.token), json: { title: "Ghost", head: "feature-a", base: "no-such-base" } }),
      [{ resource: "PullRequest", field: "base", code: "invalid" }], "no base branch");
    assertValidationFailed(await call("POST", "/repos/pr-org/app/pulls", { ...asToken(repo.token), json: { title: "Empty", head: "empty", base: "main" } }),
      [{ resource: "PullRequest", code: "custom", message: "No commits between main and empty" }], "no commits");
    assertValidationFailed(await call("POST", "/repos/pr-org/app/pulls", { ...asToken(repo.token), json: { head: "feature-b", base: "main" } }),
      [{ resource: "Issue", code: "missing_field", field: "title" }], "no title");
    const noHead = await call("POST", "/repos/pr-org/app/pulls", { ...asToken(repo.token), json: { title: "x", base: "main" } });
    assert.equal(noHead.status, 422);
    assert.equal(noHead.body.message, "Invalid request.\n\n\"head\" wasn't supplied.");

    // Who may: another installation's token sees nothing (404); pull_requests: read cannot create (403).
    gp.addInstallation({ id: 8002, login: "pr-elsewhere", repos: [{ name: "x" }] });
    const other = (await call("POST", "/app/installations/8002/access_tokens", { auth: app() })).body.token;
    for (const [method, path] of [["GET", "/repos/pr-org/app/pulls"], ["GET", "/repos/pr-org/app/pulls/1"], ["GET", "/repos/pr-org/app/pulls/1/reviews"], ["GET", "/repos/pr-org/app/commits/main/check-runs"]]) {
      const r = await call(method, path, asToken(other));
      assert.equal(r.status, 404, `${method} ${path} with another installation's token`);
      assert.equal(r.body.message, "Not Found");
    }
    const otherCreate = await call("POST", "/repos/pr-org/app/pulls", { ...asToken(other), json: { title: "x", head: "feature-b", base: "main" } });
    assert.equal(otherCreate.status, 404);
    const readOnly = (await call("POST", "/app/installations/8001/access_tokens", { auth: app(), json: { permissions: { contents: "write", pull_requests: "read" } } })).body.token;
    const denied = await call("POST", "/repos/pr-org/app/pulls", { ...asToken(readOnly), json: { title: "x", head: "feature-b", base: "main" } });
    assert.equal(denied.status, 403);
    assert.equal(denied.body.message, "Resource not accessible by integration");
    assertValid(v.createPull403, denied.body, "403 body");
    assert.equal((await call("GET", "/repos/pr-org/app/pulls", asToken(readOnly))).status, 200, "reading needs no write");
    const readerCreate = await call("POST", "/repos/pr-org/app/pulls", { auth: `Bearer ${reader}`, json: { title: "x", head: "feature-b", base: "main" } });
    assert.equal(readerCreate.status, 403, "a user without push access");
    assertGithub401(await call("GET", "/repos/pr-org/app/pulls", { auth: "token ghs_not-a-token" }), "unknown token");
    assertGithub401(await call("POST", "/repos/pr-org/app/pulls", { auth: "token ghs_not-a-token", json: {} }), "unknown token (create)");
    assert.equal((await call("GET", "/repos/pr-org/app/pulls")).status, 404, "anonymous: a private repository");

    // Reviews and review comments (controls), as the REST API lists them.
    const reviewHook = gp.addReview("pr-org", "app", 1, { login: "pr-reviewer", state: "CHANGES_REQUESTED", body: "Please fix", comments: [{ path: "a.txt", line: 2, body: "beta? gamma." }] });
    gp.addReview("pr-org", "app", 1, { login: "pr-dev", state: "COMMENTED", body: "Looking" });
    const reviews = await call("GET", "/repos/pr-org/app/pulls/1/reviews", asToken(repo.token));
    assert.equal(reviews.status, 200);
    assertValid(v.reviews, reviews.body, "GET /pulls/1/reviews");
    assert.deepEqual(reviews.body.map((r) => [r.user.login, r.state, r.body, r.commit_id]), [["pr-reviewer", "CHANGES_REQUESTED", "Please fix", aSha], ["pr-dev", "COMMENTED", "Looking", aSha]]);
    assert.equal(reviews.body[0].id, reviewHook.review.id);
    assert.equal(reviews.body[0].html_url, `${gp.url}/pr-org/app/pull/1#pullrequestreview-${reviews.body[0].id}`);
    const comments = await call("GET", "/repos/pr-org/app/pulls/1/comments", { auth: `Bearer ${dev}` });
    assert.equal(comments.status, 200);
    assertValid(v.reviewComments, comments.body, "GET /pulls/1/comments");
    assert.equal(comments.body.length, 1);
    const [c] = comments.body;
    assert.deepEqual([c.pull_request_review_id, c.path, c.line, c.body, c.commit_id, c.user.login], [reviews.body[0].id, "a.txt", 2, "beta? gamma.", aSha, "pr-reviewer"]);
    assert.match(c.diff_hunk, /\n\+beta$/, "the commented line");
    assert.deepEqual((await call("GET", "/repos/pr-org/app/pulls/2/reviews", asToken(repo.token))).body, []);

    // Check runs on the head commit, by branch or sha.
    gp.setCheckRun("pr-org", "app", 1, { name: "ci / test" });
    gp.setCheckRun("pr-org", "app", 1, { name: "ci / lint", status: "in_progress" });
    for (const ref of ["feature-a", aSha]) {
      const runs = await call("GET", `/repos/pr-org/app/commits/${ref}/check-runs`, asToken(repo.token));
      assert.equal(runs.status, 200);
      assertValid(v.checkRuns, runs.body, `GET /commits/${ref}/check-runs`);
      assert.equal(runs.body.total_count, 2);
      const test_ = runs.body.check_runs.find((r) => r.name === "ci / test");
      assert.deepEqual([test_.head_sha, test_.status, test_.conclusion, test_.app.slug], [aSha, "completed", "failure", "github-actions"]);
      assert.deepEqual(test_.pull_requests.map((p) => [p.number, p.head.sha, p.base.ref]), [[1, aSha, "main"]]);
      assert.equal(runs.body.check_runs.find((r) => r.name === "ci / lint").conclusion, null);
    }
    gp.setCheckRun("pr-org", "app", 1, { name: "ci / test", conclusion: "success" }); // replaces by name
    const replaced = await call("GET", "/repos/pr-org/app/commits/feature-a/check-runs?check_name=ci%20%2F%20test", asToken(repo.token));
    assert.deepEqual(replaced.body.check_runs.map((r) => r.conclusion), ["success"]);
    assert.equal((await call("GET", "/repos/pr-org/app/commits/main/check-runs", asToken(repo.token))).body.total_count, 0);
    assert.equal((await call("GET", "/repos/pr-org/app/commits/no-such-ref/check-runs", asToken(repo.token))).status, 422);
    gp.setCheckRun("pr-org", "app", 1, { name: "ci / test", conclusion: "failure" });
    assert.equal((await call("GET", "/repos/pr-org/app/pulls/1", asToken(repo.token))).body.mergeable_state, "unstable", "a failing check");

    assert.deepEqual(gp.pulls("pr-org", "app"), [
      { number: 1, state: "open", merged: false, title: "Feature A", body: "Adds a.txt", head: "feature-a", base: "main", head_sha: aSha, author: { login: "gastown-dev[bot]", type: "Bot" }, html_url: `${gp.url}/pr-org/app/pull/1` },
      { number: 2, state: "open", merged: false, title: "Feature B", body: null, head: "feature-b", base: "main", head_sha: bSha, author: { login: "pr-dev", type: "User" }, html_url: `${gp.url}/pr-org/app/pull/2` },
    ]);

    // Every route counts under its own key.
    const counts = gp.calls();
    for (const key of ["github.pulls.list", "github.pulls.create", "github.pulls.get", "github.pulls.reviews", "github.pulls.comments", "github.check_runs"]) {
      assert.ok(counts[key] > 0, `${key} counted: ${JSON.stringify(counts)}`);
    }
    assert.equal(gp.calls("github.pulls.create"), 12);
    assert.equal(gp.calls("github.pulls.reviews"), 3);
    assert.equal(gp.calls("github.pulls.comments"), 1);
    assert.equal(gp.calls("github.check_runs"), 6);
    assert.equal(gp.calls("unknown"), 0);
  } finally {
    repo.cleanup();
  }
});

test("GitHub pull requests: head.sha follows pushes while open, freezes when closed, follows again when reopened", async () => {
  const repo = await prRepo({ id: 8101, login: "pr-follow", type: "User" });
  try {
    const first = await repo.push("topic", { "t.txt": "1\n" });
    const created = await call("POST", "/repos/pr-follow/app/pulls", { ...asToken(repo.token), json: { title: "Topic", head: "topic", base: "main" } });
    assert.equal(created.body.head.sha, first);
    const second = await repo.push("topic", { "t.txt": "2\n" });
    assert.notEqual(second, first);
    const read = await call("GET", "/repos/pr-follow/app/pulls/1", asToken(repo.token));
    assert.equal(read.body.head.sha, second, "a new push shows up");
    assert.equal(read.body.statuses_url, `${gp.url}/repos/pr-follow/app/statuses/${second}`);
    assert.equal((await call("GET", "/repos/pr-follow/app/pulls", asToken(repo.token))).body[0].head.sha, second);
    assert.equal(gp.pulls("pr-follow", "app")[0].head_sha, second);

    const closed = gp.closePull("pr-follow", "app", 1);
    assert.equal(closed.action, "closed");
    assert.equal(closed.pull_request.merged, false);
    assert.equal(closed.pull_request.head.sha, second);
    const third = await repo.push("topic", { "t.txt": "3\n" });
    const frozen = await call("GET", "/repos/pr-follow/app/pulls/1", asToken(repo.token));
    assert.deepEqual([frozen.body.state, frozen.body.head.sha, frozen.body.mergeable], ["closed", second, null]);
    assert.ok(frozen.body.closed_at);
    assert.deepEqual((await call("GET", "/repos/pr-follow/app/pulls", asToken(repo.token))).body, [], "closed: not in the default list");

    const reopened = gp.reopenPull("pr-follow", "app", 1);
    assert.equal(reopened.action, "reopened");
    assert.equal(reopened.pull_request.state, "open");
    assert.equal(reopened.pull_request.head.sha, third);
    assert.equal((await call("GET", "/repos/pr-follow/app/pulls/1", asToken(repo.token))).body.closed_at, null);
    assert.throws(() => gp.reopenPull("pr-follow", "app", 1), /open/);
  } finally {
    repo.cleanup();
  }
});

test("GitHub pull requests: merging lands a merge commit on base; a conflicting branch is not mergeable (405)", async () => {
  gp.resetCalls();
  const repo = await prRepo({ id: 8201, login: "pr-merge" });
  try {
    const base0 = bareGit("pr-merge", "app", ["rev-parse", "main"]);
    const { "conf-1": one } = await repo.pushAll({ "conf-1": { "README.md": "# one\n" }, "conf-2": { "README.md": "# two\n" }, clean: { "c.txt": "c\n" }, draft: { "d.txt": "d\n" } });
    for (const [title, head, draft] of [["One", "conf-1"], ["Two", "conf-2"], ["Clean", "clean"], ["Draft", "draft", true]]) {
      assert.equal((await call("POST", "/repos/pr-merge/app/pulls", { ...asToken(repo.token), json: { title, head, base: "main", draft } })).status, 201);
    }
    assert.equal((await call("GET", "/repos/pr-merge/app/pulls/2", asToken(repo.token))).body.mergeable, true, "mergeable before #1 lands");

    const hook = gp.mergePull("pr-merge", "app", 1, { by: "pr-merger" });
    assert.equal(hook.action, "closed");
    assert.equal(hook.pull_request.merged, true);
    assert.equal(hook.pull_request.merged_by.login, "pr-merger");
    assert.equal(hook.sender.login, "pr-merger");
    const tip = bareGit("pr-merge", "app", ["rev-parse", "main"]);
    assert.equal(hook.pull_request.merge_commit_sha, tip);
    const [parents, subject, author, committer] = bareGit("pr-merge", "app", ["log", "-1", "--format=%P%n%s%n%an <%ae>%n%cn <%ce>", "main"]).split("\n");
    assert.deepEqual(parents.split(" "), [base0, one], "a merge with two parents: the old base and the head");
    assert.equal(subject, "Merge pull request #1 from pr-merge/conf-1");
    assert.equal(author, "GitHub <noreply@github.com>");
    assert.equal(committer, "GitHub <noreply@github.com>");
    assert.equal(bareGit("pr-merge", "app", ["show", "main:README.md"]), "# one");
    const merged = await call("GET", "/repos/pr-merge/app/pulls/1", asToken(repo.token));
    assertValid(v.pull, merged.body, "a merged pull request");
    assert.deepEqual([merged.body.state, merged.body.merged, merged.body.merge_commit_sha, merged.body.merged_by.login, merged.body.head.sha, merged.body.base.sha], ["closed", true, tip, "pr-merger", one, base0]);
    assert.ok(merged.body.merged_at);
    assert.deepEqual(gp.pulls("pr-merge", "app")[0].merged, true);

    // #2 now conflicts with main.
    const conflicted = await call("GET", "/repos/pr-merge/app/pulls/2", asToken(repo.token));
    assert.deepEqual([conflicted.body.mergeable, conflicted.body.mergeable_state], [false, "dirty"]);
    const refused = await call("PUT", "/repos/pr-merge/app/pulls/2/merge", { ...asToken(repo.token), json: {} });
    assert.equal(refused.status, 405);
    assert.equal(refused.body.message, "Pull Request is not mergeable");
    assertValid(v.merge405, refused.body, "405 body");
    assert.throws(() => gp.mergePull("pr-merge", "app", 2), /not mergeable/);
    assert.equal(bareGit("pr-merge", "app", ["rev-parse", "main"]), tip, "nothing landed");
    assert.equal((await call("PUT", "/repos/pr-merge/app/pulls/1/merge", { ...asToken(repo.token), json: {} })).status, 405, "already merged");
    assert.equal((await call("PUT", "/repos/pr-merge/app/pulls/4/merge", { ...asToken(repo.token), json: {} })).body.message, "Pull Request is still a draft");
    const moved = await call("PUT", "/repos/pr-merge/app/pulls/3/merge", { ...asToken(repo.token), json: { sha: "0".repeat(40) } });
    assert.equal(moved.status, 409);
    assertValid(v.merge409, moved.body, "409 body");

    // The REST merge, with a user token: the user merges.
    gp.addGithubUser({ id: 5558201, login: "pr-maintainer", repos: { "pr-merge/app": { maintain: true } } });
    const maintainer = (await ghCode(gp.issueGithubUserCode({ user_id: 5558201 }))).body.access_token;
    const ok = await call("PUT", "/repos/pr-merge/app/pulls/3/merge", { auth: `Bearer ${maintainer}`, json: { commit_title: "Land clean", merge_method: "merge" } });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assertValid(v.merge, ok.body, "PUT /merge");
    assert.deepEqual(ok.body, { sha: bareGit("pr-merge", "app", ["rev-parse", "main"]), merged: true, message: "Pull Request successfully merged" });
    assert.equal(bareGit("pr-merge", "app", ["log", "-1", "--format=%s%n%b", "main"]), "Land clean\nClean");
    assert.equal(bareGit("pr-merge", "app", ["rev-list", "--parents", "-n1", "main"]).split(" ").length, 3);
    assert.equal((await call("GET", "/repos/pr-merge/app/pulls/3", asToken(repo.token))).body.merged_by.login, "pr-maintainer");
    const withoutContents = (await call("POST", "/app/installations/8201/access_tokens", { auth: app(), json: { permissions: { contents: "read", pull_requests: "write" } } })).body.token;
    assert.equal((await call("PUT", "/repos/pr-merge/app/pulls/4/merge", { ...asToken(withoutContents), json: {} })).status, 403, "merging needs contents: write");
    assert.equal(gp.calls("github.pulls.merge"), 6);
  } finally {
    repo.cleanup();
  }
});

test("GitHub pull requests: the controls' webhook payloads have the shape of GitHub's examples (and the spec's webhook schemas)", async () => {
  const org = await prRepo({ id: 8301, login: "pr-hooks" });
  const user = await prRepo({ id: 8302, login: "pr-hooks-user", type: "User" });
  /** The example's key set: the organization's or the user's variant, as the stand-in picks it. */
  const exampleOf = (name, action, organization) => {
    const all = [0, 1, 2, 3].flatMap((index) => { try { return [webhookPayload(name, action, { index })]; } catch { return []; } });
    const fit = all.filter((e) => ("organization" in e) === organization);
    return fit.find((e) => "installation" in e) ?? fit[0];
  };
  const keys = (o) => Object.keys(o).sort();
  /** The spec's own schema of the delivery, e.g. webhook-pull-request-closed. */
  const webhookValidator = (event, action) => ajv.compile(toJsonSchema({ $ref: `#/components/schemas/webhook-${event.replaceAll("_", "-")}-${action}` }));
  try {
    for (const [r, owner] of [[org, "pr-hooks"], [user, "pr-hooks-user"]]) {
      await r.pushAll({ one: { "1.txt": "1\n" }, two: { "2.txt": "2\n" }, three: { "3.txt": "3\n" } });
      for (const head of ["one", "two", "three"]) {
        assert.equal((await call("POST", `/repos/${owner}/app/pulls`, { ...asToken(r.token), json: { title: head, head, base: "main" } })).status, 201);
      }
      const organization = owner === "pr-hooks";
      const inst = organization ? 8301 : 8302;
      const payloads = {
        merged: ["pull_request", "closed", gp.mergePull(owner, "app", 1)],
        closed: ["pull_request", "closed", gp.closePull(owner, "app", 2)],
        reopened: ["pull_request", "reopened", gp.reopenPull(owner, "app", 2)],
        review: ["pull_request_review", "submitted", gp.addReview(owner, "app", 3, { state: "APPROVED", comments: [{ path: "3.txt", line: 1, body: "ok" }] })],
        check: ["check_run", "completed", gp.setCheckRun(owner, "app", 3, { name: "build", conclusion: "success" })],
      };
      for (const [what, [event, action, payload]] of Object.entries(payloads)) {
        const example = exampleOf(event, action, organization);
        // check_run examples are repository-webhook deliveries; an App's always carry installation.
        const expected = keys(example).concat("installation" in example ? [] : ["installation"]).sort();
        assert.deepEqual(keys(payload), expected, `${owner} ${what}: top-level keys`);
        assert.equal(payload.action, action);
        assert.deepEqual(payload.installation, { id: inst, node_id: Buffer.from(`023:IntegrationInstallation${inst}`).toString("base64") }, `${what}: installation`);
        assert.equal(payload.repository.full_name, `${owner}/app`);
        assert.deepEqual(keys(payload.repository), keys(example.repository), `${what}: repository keys`);
        if (example.pull_request) assert.deepEqual(keys(payload.pull_request), keys(example.pull_request), `${owner} ${what}: pull_request keys`);
        if (example.review) assert.deepEqual(keys(payload.review), keys(example.review), `${what}: review keys`);
        if (example.check_run) assert.deepEqual(keys(payload.check_run), keys(example.check_run), `${what}: check_run keys`);
        if (organization) assert.equal(payload.organization.login, "pr-hooks");
        const validate = webhookValidator(event, action);
        assertValid(validate, payload, `${owner} ${what} (${event}.${action})`);
        const broken = structuredClone(payload);
        delete (broken.pull_request ?? broken.check_run).id;
        assert.equal(validate(broken), false, `${what}: the webhook schema is not vacuous`);
      }
      const { merged, closed, reopened, review, check } = Object.fromEntries(Object.entries(payloads).map(([k, [, , p]]) => [k, p]));
      assert.deepEqual([merged.number, merged.pull_request.merged, merged.pull_request.state, merged.sender.login], [1, true, "closed", "octocat"]);
      assert.deepEqual([closed.number, closed.pull_request.merged, closed.pull_request.merged_at], [2, false, null]);
      assert.deepEqual([reopened.pull_request.state, reopened.pull_request.closed_at], ["open", null]);
      assert.deepEqual([review.review.state, review.review.user.login, review.review.body, review.pull_request.number], ["approved", "reviewer", null, 3], "webhook review states are lowercase");
      assert.equal(review.review.commit_id, bareGit(owner, "app", ["rev-parse", "three"]));
      assert.deepEqual([check.check_run.name, check.check_run.status, check.check_run.conclusion], ["build", "completed", "success"]);
      assert.deepEqual(check.check_run.pull_requests.map((p) => [p.number, p.head.ref, p.base.ref]), [[3, "three", "main"]]);
      assert.equal(check.check_run.head_sha, bareGit(owner, "app", ["rev-parse", "three"]));
      assert.equal(merged.pull_request.user.login, "gastown-dev[bot]");
      // What the worker reads from GitHub after such a delivery agrees with it.
      const read = await call("GET", `/repos/${owner}/app/pulls/1`, asToken(r.token));
      assert.equal(read.body.merge_commit_sha, merged.pull_request.merge_commit_sha);
    }
  } finally {
    org.cleanup();
    user.cleanup();
  }
});

// ------------------------------------------------------------------ GitLab merge requests

test("GitLab merge requests: create, 409 duplicate, list, get, reviewers, notes, pipelines, merge and close hooks", async () => {
  gp.resetCalls();
  const token = async (user, projects) => (await gitlabToken({ grant_type: "authorization_code", code: gp.issueGitlabCode({ user, projects }), client_id: CLIENT_ID, client_secret: CLIENT_SECRET })).body.access_token;
  const dev = await token({ id: 9101, username: "mr-dev", name: "MR Dev" }, [{ id: 610001, path_with_namespace: "mr-team/app", default_branch: "main" }]);
  const outsider = await token({ id: 9102, username: "mr-outsider" }, [{ id: 610002, path_with_namespace: "mr-outsider/own" }]);
  const as = (t) => ({ auth: `Bearer ${t}` });
  const mrs = "/api/v4/projects/610001/merge_requests";

  const sha1 = gp.pushGitlabBranch(610001, "feature");
  assert.match(sha1, /^[0-9a-f]{40}$/);
  const created = await call("POST", mrs, { ...as(dev), json: { source_branch: "feature", target_branch: "main", title: "Add feature", description: "Does things" } });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const mr = created.body;
  assert.deepEqual([mr.iid, mr.project_id, mr.state, mr.title, mr.description, mr.source_branch, mr.target_branch, mr.sha], [1, 610001, "opened", "Add feature", "Does things", "feature", "main", sha1]);
  assert.deepEqual([mr.author.id, mr.author.username, mr.author.name], [9101, "mr-dev", "MR Dev"]);
  assert.equal(mr.web_url, `${gp.url}/mr-team/app/-/merge_requests/1`);
  assert.deepEqual(mr.references, { short: "!1", relative: "!1", full: "mr-team/app!1" });
  assert.deepEqual([mr.merge_status, mr.detailed_merge_status, mr.draft, mr.head_pipeline, mr.merged_at, mr.merge_user, mr.closed_by], ["can_be_merged", "mergeable", false, null, null, null, null]);
  assert.deepEqual([mr.source_project_id, mr.target_project_id, mr.user_notes_count], [610001, 610001, 0]);
  assert.deepEqual(mr.reviewers, []);
  assert.equal(mr.diff_refs.head_sha, sha1);
  for (const k of ["id", "created_at", "updated_at", "merged_by", "closed_at", "merge_commit_sha", "labels", "assignees", "has_conflicts", "blocking_discussions_resolved"]) assert.ok(k in mr, `MR has ${k}`);

  const dup = await call("POST", mrs, { ...as(dev), json: { source_branch: "feature", target_branch: "main", title: "Again" } });
  assert.equal(dup.status, 409);
  assert.deepEqual(dup.body, { message: ["Another open merge request already exists for this source branch: !1"] });
  const noTitle = await call("POST", "/api/v4/projects/mr-team%2Fapp/merge_requests", { ...as(dev), form: { source_branch: "feature", target_branch: "main" } });
  assert.equal(noTitle.status, 400);
  assert.deepEqual(noTitle.body, { error: "title is missing" });
  const noBranches = await call("POST", mrs, { ...as(dev), json: { title: "x" } });
  assert.deepEqual(noBranches.body, { error: "source_branch is missing, target_branch is missing" });
  const ghost = await call("POST", mrs, { ...as(dev), json: { source_branch: "ghost", target_branch: "main", title: "Ghost" } });
  assert.equal(ghost.status, 422);
  assert.deepEqual(ghost.body, { message: ['Source branch "ghost" does not exist'] });
  gp.pushGitlabBranch(610001, "other");
  const viaForm = await call("POST", "/api/v4/projects/mr-team%2Fapp/merge_requests", { ...as(dev), form: { source_branch: "other", target_branch: "main", title: "Draft: Other" } });
  assert.equal(viaForm.status, 201, "form bodies and the encoded path work");
  assert.deepEqual([viaForm.body.iid, viaForm.body.draft, viaForm.body.detailed_merge_status, viaForm.body.description], [2, true, "draft_status", null]);

  const list = await call("GET", `${mrs}?source_branch=feature`, as(dev));
  assert.equal(list.status, 200);
  assert.deepEqual(list.body.map((m) => m.iid), [1]);
  assert.equal(list.headers.get("x-total"), "1");
  assert.deepEqual((await call("GET", `${mrs}?state=opened`, as(dev))).body.map((m) => m.iid), [2, 1], "newest first");
  assert.deepEqual((await call("GET", `${mrs}?state=merged`, as(dev))).body, []);
  const one = await call("GET", "/api/v4/projects/mr-team%2Fapp/merge_requests/1", as(dev));
  assert.equal(one.status, 200);
  assert.equal(one.body.id, mr.id);
  assert.equal((await call("GET", `${mrs}/99`, as(dev))).status, 404);

  // A reviewer asks for changes, with a note.
  const reviewHook = gp.reviewGitlabMergeRequest(610001, 1, { username: "mr-reviewer", note: "Please rename it" });
  assert.deepEqual([reviewHook.object_kind, reviewHook.event_type, reviewHook.user.username], ["merge_request", "merge_request", "mr-reviewer"]);
  assert.deepEqual(reviewHook.reviewers.map((r) => r.username), ["mr-reviewer"]);
  assert.equal(reviewHook.object_attributes.action, "update");
  assert.equal(reviewHook.object_attributes.detailed_merge_status, "requested_changes");
  assert.deepEqual(reviewHook.changes.reviewers.current.map((r) => r.username), ["mr-reviewer"]);
  const reviewers = await call("GET", `${mrs}/1/reviewers`, as(dev));
  assert.equal(reviewers.status, 200);
  assert.deepEqual(reviewers.body.map((r) => [r.user.username, r.state]), [["mr-reviewer", "requested_changes"]]);
  assert.equal(typeof reviewers.body[0].created_at, "string");
  const notes = await call("GET", `${mrs}/1/notes`, as(dev));
  assert.equal(notes.status, 200);
  assert.deepEqual(notes.body.map((n) => [n.body, n.author.username, n.system, n.noteable_type, n.noteable_iid, n.noteable_id]), [["Please rename it", "mr-reviewer", false, "MergeRequest", 1, mr.id]]);
  const afterReview = (await call("GET", `${mrs}/1`, as(dev))).body;
  assert.deepEqual([afterReview.user_notes_count, afterReview.reviewers.map((r) => r.username)], [1, ["mr-reviewer"]]);
  assert.equal(gp.reviewGitlabMergeRequest(610001, 1, { username: "mr-reviewer", state: "approved" }).object_attributes.action, "approved");

  // Pipelines belong to the commit: a new push leaves the merge request without a head pipeline.
  const pipelineHook = gp.setGitlabPipeline(610001, 1, "failed");
  const pid = pipelineHook.object_attributes.head_pipeline_id;
  assert.equal(typeof pid, "number");
  assert.deepEqual(pipelineHook.changes.head_pipeline_id, { previous: null, current: pid });
  let got = (await call("GET", `${mrs}/1`, as(dev))).body;
  assert.deepEqual([got.head_pipeline.id, got.head_pipeline.status, got.head_pipeline.sha, got.detailed_merge_status], [pid, "failed", sha1, "ci_must_pass"]);
  assert.equal(got.head_pipeline.web_url, `${gp.url}/mr-team/app/-/pipelines/${pid}`);
  assert.equal(gp.setGitlabPipeline(610001, 1, "running").object_attributes.head_pipeline_id, pid, "same commit, same pipeline");
  const sha2 = gp.pushGitlabBranch(610001, "feature");
  got = (await call("GET", `${mrs}/1`, as(dev))).body;
  assert.deepEqual([got.sha, got.head_pipeline], [sha2, null]);
  gp.setGitlabPipeline(610001, 1, "success");
  assert.deepEqual(gitlabSummary(gp, 610001, 1), { iid: 1, state: "opened", sha: sha2 });

  // Merge and close: the hook payloads, then the API agrees.
  const mergeHook = gp.mergeGitlabMergeRequest(610001, 1);
  const oa = mergeHook.object_attributes;
  assert.deepEqual([mergeHook.object_kind, oa.action, oa.state, oa.iid, oa.id, oa.source_branch, oa.target_branch, oa.title], ["merge_request", "merge", "merged", 1, mr.id, "feature", "main", "Add feature"]);
  assert.deepEqual([oa.last_commit.id, oa.url, oa.merge_user_id, oa.detailed_merge_status], [sha2, `${gp.url}/mr-team/app/-/merge_requests/1`, 9101, "not_open"]);
  assert.ok(oa.merge_commit_sha);
  assert.deepEqual(mergeHook.changes.state_id, { previous: 1, current: 3 });
  assert.deepEqual([mergeHook.project.id, mergeHook.project.path_with_namespace, mergeHook.project.default_branch, mergeHook.project.web_url], [610001, "mr-team/app", "main", `${gp.url}/mr-team/app`]);
  assert.deepEqual(Object.keys(mergeHook).sort(), ["changes", "event_type", "labels", "object_attributes", "object_kind", "project", "repository", "reviewers", "user"]);
  gp.pushGitlabBranch(610001, "feature");
  got = (await call("GET", `${mrs}/1`, as(dev))).body;
  assert.deepEqual([got.state, got.sha, got.merge_user.username, got.merged_by.username, got.merge_commit_sha], ["merged", sha2, "mr-dev", "mr-dev", oa.merge_commit_sha]);
  assert.ok(got.merged_at);
  assert.deepEqual((await call("GET", `${mrs}?state=merged`, as(dev))).body.map((m) => m.iid), [1]);
  assert.throws(() => gp.mergeGitlabMergeRequest(610001, 1), /merged/);

  const closeHook = gp.closeGitlabMergeRequest(610001, 2, { username: "mr-reviewer" });
  assert.deepEqual([closeHook.object_attributes.action, closeHook.object_attributes.state, closeHook.user.username], ["close", "closed", "mr-reviewer"]);
  assert.equal("reviewers" in closeHook, false, "no reviewers: no reviewers key, as GitLab sends it");
  got = (await call("GET", `${mrs}/2`, as(dev))).body;
  assert.deepEqual([got.state, got.closed_by.username, got.detailed_merge_status], ["closed", "mr-reviewer", "not_open"]);
  assert.ok(got.closed_at);
  const again = await call("POST", mrs, { ...as(dev), json: { source_branch: "feature", target_branch: "main", title: "Follow-up" } });
  assert.equal(again.status, 201, "no open merge request for the branch any more");
  assert.equal(again.body.iid, 3);

  assert.deepEqual(gp.gitlabMergeRequests(610001).map((m) => [m.iid, m.state, m.author.username, m.source_branch]), [[1, "merged", "mr-dev", "feature"], [2, "closed", "mr-dev", "other"], [3, "opened", "mr-dev", "feature"]]);
  assert.equal(gp.gitlabMergeRequests(610001)[0].web_url, `${gp.url}/mr-team/app/-/merge_requests/1`);

  // Who may: no token 401, a user without the project 404.
  for (const [method, path] of [["GET", mrs], ["POST", mrs], ["GET", `${mrs}/1`], ["GET", `${mrs}/1/reviewers`], ["GET", `${mrs}/1/notes`]]) {
    const anon = await call(method, path, method === "POST" ? { json: {} } : {});
    assert.equal(anon.status, 401, `${method} ${path} anonymous`);
    assert.deepEqual(anon.body, { message: "401 Unauthorized" });
    const other = await call(method, path, { ...as(outsider), ...(method === "POST" ? { json: { source_branch: "feature", target_branch: "main", title: "x" } } : {}) });
    assert.equal(other.status, 404, `${method} ${path} by a user without the project`);
    assert.deepEqual(other.body, { message: "404 Project Not Found" });
  }
  assert.equal((await call("GET", "/api/v4/projects/mr-team%2Fapp/merge_requests", as(outsider))).status, 404);

  assert.deepEqual(["list", "create", "get", "reviewers", "notes"].map((k) => gp.calls(`gitlab.mrs.${k}`)), [7, 9, 9, 3, 3]);
  assert.equal(gp.calls("unknown"), 0);
});

/** The control's summary of merge request `iid`, reduced to iid, state and sha. */
function gitlabSummary(platforms, projectId, iid) {
  const { state, sha } = platforms.gitlabMergeRequests(projectId).find((m) => m.iid === iid);
  return { iid, state, sha };
}

// Self-test of the GitHub + GitLab stand-in: its GitHub answers against the response schemas of
// GitHub's published OpenAPI description (@octokit/openapi), App JWT verification, token
// lifecycles, pagination, and the webhook helpers.
// Run: node --test tests/e2e/standins/git_platforms.test.mjs
import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { createHmac, generateKeyPairSync, sign } from "node:crypto";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
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

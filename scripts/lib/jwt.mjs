// HS256 token minting for development and tests, written independently of the worker's Rust
// verifier so that one cannot hide the other's bugs. Node's crypto only; no dependencies.
import { createHmac } from "node:crypto";
import { readFileSync, existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

const b64url = (value) =>
  Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** Signs `claims` with HS256 (or writes any `header` given, for negative tests). */
export function sign(claims, secret, header = { alg: "HS256", typ: "JWT" }) {
  const input = `${b64url(header)}.${b64url(claims)}`;
  const sig = createHmac("sha256", secret).update(input).digest("base64url");
  return `${input}.${sig}`;
}

/** Reads KEY=VALUE lines from .dev.vars, else .dev.vars.example. */
export function devVars(root = ROOT) {
  const file = [".dev.vars", ".dev.vars.example"].map((f) => join(root, f)).find(existsSync);
  const vars = {};
  if (!file) return vars;
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const m = line.match(/^\s*([A-Z0-9_]+)\s*=\s*(.*)\s*$/);
    if (m) vars[m[1]] = m[2].replace(/^"(.*)"$/, "$1");
  }
  return vars;
}

const now = () => Math.floor(Date.now() / 1000);

/** Dashboard user token: memberships as [{orgId, role}]. */
export function userToken(secret, userId, { orgs = [], ttl = 3600, extra = {} } = {}) {
  const iat = now();
  return sign({ kiloUserId: userId, orgMemberships: orgs, iat, exp: iat + ttl, ...extra }, secret);
}

/** Per-town container token. */
export function containerToken(secret, townId, userId, { ttl = 8 * 3600, extra = {} } = {}) {
  const iat = now();
  return sign({ townId, userId, scope: "container", iat, exp: iat + ttl, ...extra }, secret);
}

/** Legacy per-agent token (no scope). */
export function agentToken(secret, { agentId, rigId, townId, userId, ttl = 3600 }) {
  const iat = now();
  return sign({ agentId, rigId, townId, userId, iat, exp: iat + ttl }, secret);
}

/** Sandbox (gateway) token. */
export function sandboxToken(secret, userId, townId, organizationId = null, { ttl = 24 * 3600 } = {}) {
  const iat = now();
  return sign({ sub: userId, type: "gastown_sandbox", town_id: townId, organization_id: organizationId, iat, exp: iat + ttl }, secret);
}

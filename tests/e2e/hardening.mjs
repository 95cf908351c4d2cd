// Issue 9 hardening, end to end: token lifetime measured from `iat` (which is required), the
// `typ` header, dangerous env var names and control characters in values, a secret bound to the
// host it is sent to, and git URLs whose host would be read as an ssh option.
import { describe, it, before } from "node:test";
import assert from "node:assert/strict";
import { sign, userToken, containerToken } from "../../scripts/lib/jwt.mjs";
import { secrets } from "./harness.mjs";
import { freshUser, tokenFor, createTown, createRig } from "./fixtures.mjs";

const now = () => Math.floor(Date.now() / 1000);
const HOUR = 3600;
const GL_TOKEN = "glpat-hardening-owner-0123456789";
const GL_URL = "https://gitlab.example.com";
const ATTACKER = "https://attacker.example";

export default function hardening(ctx) {
  describe("hardening (issue 9)", () => {
    const user = freshUser("hard");
    const token = () => tokenFor(user);
    const dash = (method, path, body) => ctx.call(method, path, { token: token(), body });
    let town;
    // The generation of the container tokens the town honours (its container is started).
    let gen;

    before(async () => {
      town = await createTown(ctx.call, user, "Hardened");
      await createRig(ctx.call, user, town.id, "app");
      const started = await dash("POST", `/api/towns/${town.id}/container/start`);
      assert.equal(started.status, 200, started.text);
      const held = (await ctx.control.town(town.id)).body.token;
      gen = JSON.parse(Buffer.from(held.split(".")[1], "base64url").toString()).gen;
      assert.ok(Number.isInteger(gen) && gen >= 1, "container tokens carry a generation");
    });

    describe("token lifetime and type", () => {
      const userPath = () => `/api/users/${user}/towns`;
      const containerPath = () => `/api/mayor/${town.id}/tools/rigs`;
      const userClaims = (extra = {}) => ({ kiloUserId: user, orgMemberships: [], iat: now(), exp: now() + 600, ...extra });
      const containerClaims = (extra = {}) => ({ townId: town.id, userId: user, scope: "container", gen, iat: now(), exp: now() + HOUR, ...extra });
      const asUser = (claims, header) => sign(claims, secrets.NEXTAUTH_SECRET, header);
      const asContainer = (claims, header) => sign(claims, secrets.GASTOWN_JWT_SECRET, header);
      const expect401 = async (path, t, label) => {
        const res = await ctx.call("GET", path, { token: t });
        assert.equal(res.status, 401, `${label}: ${res.text}`);
        assert.equal(res.body.error.code, "unauthorized", label);
        assert.ok(!res.text.includes(t), "the token is never echoed");
      };

      it("the well-formed tokens these cases are built from are accepted", async () => {
        assert.equal((await ctx.call("GET", userPath(), { token: userToken(secrets.NEXTAUTH_SECRET, user) })).status, 200);
        assert.equal((await ctx.call("GET", userPath(), { token: asUser(userClaims()) })).status, 200);
        // Accepted as the town's container token: refused only for want of the mayor's key.
        const accepted = async (t) => {
          const res = await ctx.call("GET", containerPath(), { token: t });
          assert.deepEqual([res.status, res.body.error.code, res.body.error.message], [403, "forbidden", "only the town's mayor may use its tools"]);
        };
        await accepted(containerToken(secrets.GASTOWN_JWT_SECRET, town.id, user, { extra: { gen } }));
        await accepted(asContainer(containerClaims()));
        // No `typ` header at all is still a JWT.
        assert.equal((await ctx.call("GET", userPath(), { token: asUser(userClaims(), { alg: "HS256" }) })).status, 200);
      });

      it("a user token issued 10 h ago that expires in 50 min → 401", async () => {
        await expect401(userPath(), asUser(userClaims({ iat: now() - 10 * HOUR, exp: now() + 50 * 60 })), "user 10 h old");
      });

      it("a container token issued 30 h ago → 401", async () => {
        await expect401(containerPath(), asContainer(containerClaims({ iat: now() - 30 * HOUR, exp: now() + HOUR })), "container 30 h old");
      });

      it("a token without iat → 401", async () => {
        const { iat: _u, ...noIatUser } = userClaims();
        await expect401(userPath(), asUser(noIatUser), "user without iat");
        const { iat: _c, ...noIatContainer } = containerClaims();
        await expect401(containerPath(), asContainer(noIatContainer), "container without iat");
      });

      it("a token with iat beyond the clock skew in the future → 401", async () => {
        await expect401(userPath(), asUser(userClaims({ iat: now() + 600, exp: now() + 1200 })), "user iat ahead");
      });

      it('a token whose typ is "at+jwt" → 401', async () => {
        await expect401(userPath(), asUser(userClaims(), { alg: "HS256", typ: "at+jwt" }), "user at+jwt");
        await expect401(containerPath(), asContainer(containerClaims(), { alg: "HS256", typ: "at+jwt" }), "container at+jwt");
      });
    });

    describe("env var names and values", () => {
      const KEEP = { KEEP_ME: "keep-value-0123456789" };
      const config = async () => (await dash("GET", `/api/towns/${town.id}/config`)).body;
      const names = async () => (await dash("GET", `/api/towns/${town.id}/container`)).body.env_var_names;

      before(async () => {
        const res = await dash("PATCH", `/api/towns/${town.id}/config`, { env_vars: KEEP });
        assert.equal(res.status, 200, res.text);
      });

      const dangerous = [
        "LD_PRELOAD",
        "NODE_OPTIONS",
        "BASH_ENV",
        "GIT_SSH_COMMAND",
        "GIT_ASKPASS",
        "GIT_CONFIG_COUNT",
        "HTTPS_PROXY",
        "GIT_SSL_NO_VERIFY",
        "NODE_TLS_REJECT_UNAUTHORIZED",
        "path",
      ];
      for (const key of dangerous) {
        it(`env_vars.${key} → 422 naming it, config unchanged`, async () => {
          const before = await config();
          const beforeNames = await names();
          const res = await dash("PATCH", `/api/towns/${town.id}/config`, { env_vars: { ...KEEP, [key]: "x" } });
          assert.equal(res.status, 422, res.text);
          assert.equal(res.body.error.code, "invalid_field");
          assert.equal(res.body.error.field, `env_vars.${key}`);
          assert.deepEqual(await config(), before);
          assert.deepEqual(await names(), beforeNames);
          assert.ok(!beforeNames.includes(key));
        });
      }

      it('a value with "\\n" → 422 naming its key, config unchanged', async () => {
        const before = await config();
        const res = await dash("PATCH", `/api/towns/${town.id}/config`, { env_vars: { ...KEEP, FEATURE: "a\nb" } });
        assert.equal(res.status, 422, res.text);
        assert.equal(res.body.error.field, "env_vars.FEATURE");
        assert.ok(!res.text.includes("a\nb") && !res.text.includes("a\\nb"), "the value is not echoed");
        assert.deepEqual(await config(), before);
      });

      it("an ordinary name and value are accepted", async () => {
        const res = await dash("PATCH", `/api/towns/${town.id}/config`, { env_vars: { ...KEEP, NODE_ENV: "production" } });
        assert.equal(res.status, 200, res.text);
        assert.ok((await names()).includes("NODE_ENV"));
      });
    });

    describe("a secret is bound to its destination", () => {
      const config = async () => (await dash("GET", `/api/towns/${town.id}/config`)).body;
      const names = async () => (await dash("GET", `/api/towns/${town.id}/container`)).body.env_var_names;
      const setGitlab = async () => {
        const res = await dash("PATCH", `/api/towns/${town.id}/config`, { git_auth: { gitlab_token: GL_TOKEN, gitlab_instance_url: GL_URL } });
        assert.equal(res.status, 200, res.text);
        assert.equal(res.body.git_auth.gitlab_token, `****${GL_TOKEN.slice(-4)}`);
        assert.ok((await names()).includes("GITLAB_TOKEN"));
      };

      it("changing only gitlab_instance_url drops gitlab_token from the config and the container env", async () => {
        await setGitlab();
        const res = await dash("PATCH", `/api/towns/${town.id}/config`, { git_auth: { gitlab_instance_url: ATTACKER } });
        assert.equal(res.status, 200, res.text);
        const after = await config();
        assert.equal(after.git_auth.gitlab_token, null);
        assert.equal(after.git_auth.gitlab_instance_url, ATTACKER);
        const envNames = await names();
        assert.ok(!envNames.includes("GITLAB_TOKEN"), envNames.join(","));
        assert.ok(!envNames.includes("GIT_TOKEN"), "no GIT_TOKEN derived from the old token");
      });

      it("sending the mask back with a new host does not keep the token", async () => {
        await setGitlab();
        const shown = (await config()).git_auth.gitlab_token;
        const res = await dash("PATCH", `/api/towns/${town.id}/config`, { git_auth: { gitlab_instance_url: ATTACKER, gitlab_token: shown } });
        assert.equal(res.status, 200, res.text);
        assert.equal((await config()).git_auth.gitlab_token, null);
      });

      it("clearing the host clears the token", async () => {
        await setGitlab();
        const res = await dash("PATCH", `/api/towns/${town.id}/config`, { git_auth: { gitlab_instance_url: null } });
        assert.equal(res.status, 200, res.text);
        assert.equal((await config()).git_auth.gitlab_token, null);
      });

      it("host and token sent together, or the host unchanged, keep the token", async () => {
        await setGitlab();
        const other = "glpat-hardening-second-9876543210";
        const both = await dash("PATCH", `/api/towns/${town.id}/config`, { git_auth: { gitlab_instance_url: "https://gitlab.other.example", gitlab_token: other } });
        assert.equal(both.status, 200, both.text);
        assert.equal((await config()).git_auth.gitlab_token, `****${other.slice(-4)}`);
        const same = await dash("PATCH", `/api/towns/${town.id}/config`, { git_auth: { gitlab_instance_url: "https://gitlab.other.example" } });
        assert.equal(same.status, 200, same.text);
        assert.equal((await config()).git_auth.gitlab_token, `****${other.slice(-4)}`);
      });

      it("a running container loses the token when the host moves", async () => {
        await setGitlab();
        assert.equal((await ctx.control.town(town.id)).body.env.GITLAB_TOKEN, GL_TOKEN);
        const res = await dash("PATCH", `/api/towns/${town.id}/config`, { git_auth: { gitlab_instance_url: ATTACKER } });
        assert.equal(res.status, 200, res.text);
        const env = (await ctx.control.town(town.id)).body.env;
        assert.ok(!("GITLAB_TOKEN" in env), "no stale token in the container");
        assert.notEqual(env.GIT_TOKEN, GL_TOKEN);
        assert.equal(env.GITLAB_INSTANCE_URL, ATTACKER);
      });
    });

    describe("git URLs whose host looks like an ssh option", () => {
      for (const gitUrl of ["ssh://-oProxyCommand=x/y", "git@-oProxyCommand=x:o/r", "https://-x/o/r"]) {
        it(`${gitUrl} → 422 on git_url, nothing written`, async () => {
          const rigs = `/api/users/${user}/towns/${town.id}/rigs`;
          const before = (await dash("GET", rigs)).body;
          const res = await dash("POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "evil", git_url: gitUrl });
          assert.equal(res.status, 422, res.text);
          assert.equal(res.body.error.code, "invalid_field");
          assert.equal(res.body.error.field, "git_url");
          assert.deepEqual((await dash("GET", rigs)).body, before);
        });
      }
    });
  });
}

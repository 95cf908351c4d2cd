// Credentials on a user route: every token that is not a valid, current dashboard user token
// gets 401, and nothing it sent is echoed back.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { sign } from "../../scripts/lib/jwt.mjs";
import { secrets } from "./harness.mjs";
import { freshUser, tokenFor, containerTokenFor, agentTokenFor, sandboxTokenFor, createTown, snapshot } from "./fixtures.mjs";

const now = () => Math.floor(Date.now() / 1000);

export default function auth(ctx) {
  describe("user-route authentication", () => {
    const user = freshUser("authz");
    const path = `/api/users/${user}/towns`;
    const claims = (extra = {}) => ({ kiloUserId: user, orgMemberships: [], iat: now(), exp: now() + 600, ...extra });
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");

    const cases = [
      ["no token", null],
      ["bad signature", sign(claims(), "not-the-secret")],
      ["alg none (unsigned)", `${b64({ alg: "none", typ: "JWT" })}.${b64(claims())}.`],
      ["alg none with a signature", sign(claims(), secrets.NEXTAUTH_SECRET, { alg: "none" })],
      ["alg HS512 header", sign(claims(), secrets.NEXTAUTH_SECRET, { alg: "HS512" })],
      ["alg RS256 header", sign(claims(), secrets.NEXTAUTH_SECRET, { alg: "RS256" })],
      ["expired", sign(claims({ iat: now() - 7200, exp: now() - 3600 }), secrets.NEXTAUTH_SECRET)],
      ["no exp", sign({ kiloUserId: user, iat: now() }, secrets.NEXTAUTH_SECRET)],
      ["not yet valid (nbf)", sign(claims({ nbf: now() + 600 }), secrets.NEXTAUTH_SECRET)],
      ["lifetime over an hour", sign(claims({ exp: now() + 6 * 3600 }), secrets.NEXTAUTH_SECRET)],
      ["wrong audience", sign(claims({ aud: "other-service" }), secrets.NEXTAUTH_SECRET)],
      ["sandbox token (same secret)", sandboxTokenFor(user, "town-x")],
      ["container token", containerTokenFor("town-x", user)],
      ["legacy agent token", agentTokenFor("town-x", user)],
      ["user claims signed with the container secret", sign(claims(), secrets.GASTOWN_JWT_SECRET)],
      ["garbage", "definitely-not-a-jwt"],
    ];

    for (const [name, token] of cases) {
      it(`${name} → 401`, async () => {
        for (const [method, body] of [["GET"], ["POST", { name: "nope" }]]) {
          const res = await ctx.call(method, path, { token: token ?? undefined, body });
          assert.equal(res.status, 401, `${method}: ${res.text}`);
          assert.equal(res.body.error.code, "unauthorized");
          assert.equal(res.headers.get("www-authenticate"), "Bearer");
          if (token) assert.ok(!res.text.includes(token), "the token is never echoed");
        }
      });
    }

    it("a non-Bearer scheme is no credential", async () => {
      const res = await ctx.call("GET", path, { headers: { authorization: `Basic ${tokenFor(user)}` } });
      assert.equal(res.status, 401);
    });

    it("refused requests write nothing", async () => {
      assert.deepEqual((await snapshot(ctx.call, user)).towns, []);
    });

    it("the valid token for the same user works", async () => {
      await createTown(ctx.call, user);
      assert.equal((await snapshot(ctx.call, user)).towns.length, 1);
    });
  });
}

// A short schemathesis run inside `npm test` (deterministic, a few examples per operation); the
// long one is `npm run fuzz`.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { seed, run } from "./schemathesis.mjs";

export default function fuzz(ctx) {
  describe("schemathesis against the OpenAPI document", () => {
    it("no 5xx and every response as documented, for every principal", { timeout: 180_000 }, async () => {
      const env = await seed(ctx.call);
      const { code, output } = await run(ctx.worker.url, env, { maxExamples: 5, seconds: 45, deterministic: true });
      const summary = output.split("\n").filter((l) => /SUMMARY|Failures|❌|passed|failed|Test cases|generated/.test(l));
      console.log(summary.map((l) => `# ${l}`).join("\n"));
      assert.equal(code, 0, output.slice(-6000));
    });
  });
}

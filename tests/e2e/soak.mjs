// The soak's short profile (scripts/soak.mjs, `npm run soak` for the long one): its own worker,
// control server, gateway and GitHub stand-in, tokens of a minute, simulated agents calling back
// every second, real beads worked by the demo agent, and every kind of restart the platform can
// do at least once, in about two and a half minutes. Every failure count must be 0, and the
// chaos and the refreshes must really have happened (so a soak that silently did nothing fails).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { soak, formatReport, SHORT } from "../../scripts/soak.mjs";

export default function soakSuite() {
  describe("soak: no expired credential, no lost work, across every restart (short profile)", () => {
    it("control-server and worker crashes, idle and dead containers, a forced rotation: every count 0", { timeout: 15 * 60_000 }, async () => {
      const report = await soak({ ...SHORT, log: (line) => console.log(line) });
      console.log(formatReport(report));
      assert.equal(report.aborted, null, `the soak did not run to its end: ${report.aborted}`);
      for (const [kind, f] of Object.entries(report.failures)) {
        assert.equal(f.count, 0, `${kind}: ${f.count}; the first: ${JSON.stringify(f.first)}`);
      }
      assert.equal(report.chaos_failed, 0, `chaos events that did not happen as planned: ${JSON.stringify(report.chaos.events.filter((e) => !e.ok))}`);
      for (const [kind, n] of Object.entries(report.chaos.done)) {
        assert.ok(n >= 1, `chaos ${kind} never happened: ${JSON.stringify(report.chaos.events.filter((e) => e.kind === kind))}`);
      }
      assert.ok(report.beads.acknowledged >= 6, `work was slung: ${JSON.stringify(report.beads)}`);
      assert.equal(report.beads.closed, report.beads.acknowledged);
      assert.equal(report.beads.revivals_closed, report.beads.revivals, "every container brought back by new work worked it");
      const r = report.requests;
      for (const kind of ["callback", "git_helper", "git_route", "git_check", "gateway"]) assert.ok(r[kind].ok > 0, `${kind} requests succeeded: ${JSON.stringify(r[kind])}`);
      assert.ok(r.callback.unreachable > 0, "the worker's restart was felt by the agents");
      const totals = report.refresh.totals;
      for (const kind of ["container_token_pushes", "control_self_refreshes", "git_tokens_minted"]) {
        assert.ok(totals[kind] > 0, `${kind} happened: ${JSON.stringify(totals)}`);
      }
      // Not the worker's gateway re-mints: in this profile the container's own refresh comes
      // first (see SHORT), and the worker re-mints only when that one falls behind.
    });
  });
}

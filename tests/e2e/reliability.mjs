// Issue 25, end to end: what the town does when its container goes away or goes deaf. An
// eviction reset spares agents heard from within the guard; an eviction drain (the control
// server's SIGTERM) saves work in progress to the bead's branch and the bead resumes there; a
// container that answers no health check is restarted with fresh tokens, up to a cap an hour,
// and then the town's breaker opens with a reason its owner can read. Its own worker and
// control server, with the guard, the health checks and the stall time compressed to seconds.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sleep, until, not, startOwnWorker, startControlServer } from "./harness.mjs";
import { freshUser, tokenFor, createTown, internalKey, bareRepo, git } from "./fixtures.mjs";

const GUARD_MS = 10_000;
const STALL_MS = 40_000;
const WEDGED_MS = 2_000;

export default function reliability(ctx) {
  describe("reliability: eviction resets, the drain, wedged containers", () => {
    let call, world, repos;
    const user = freshUser("reliable");
    const as = (method, path, body) => call(method, path, { token: tokenFor(user), body });
    const health = async (townId) =>
      (await call("GET", `/api/internal/towns/${townId}/health`, { headers: { "x-internal-api-key": internalKey() } })).body;
    const bead = async (townId, id) => (await as("GET", `/api/towns/${townId}/beads/${id}`)).body;
    const gen = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString()).gen;

    async function townWithRig(name) {
      const town = await createTown(call, user, name);
      const repo = bareRepo(repos);
      const res = await as("POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "demo", git_url: `file://${repo}` });
      assert.equal(res.status, 201, res.text);
      return { town, rig: res.body, repo };
    }

    const sling = async (townId, rigId, title, body = "") => {
      const res = await as("POST", `/api/towns/${townId}/sling`, { rig_id: rigId, title, body });
      assert.equal(res.status, 201, res.text);
      return res.body;
    };
    const inProgress = (townId, id) =>
      until(`bead ${id} in progress`, async () => {
        const b = await bead(townId, id);
        return b.status === "in_progress" ? b : not(b.status);
      });

    before(async () => {
      repos = mkdtempSync(join(tmpdir(), "gastown-repos-"));
      world = await startOwnWorker(ctx, {
        controlArgs: ["--drain-grace-ms", "1000"],
        // The drain pushes to the rigs' local repositories.
        controlEnv: { GASTOWN_ALLOW_LOCAL_GIT: "1" },
        vars: {
          GASTOWN_ALLOW_LOCAL_GIT: "1",
          AGENT_STALL_MS: String(STALL_MS),
          EVICTION_HEARTBEAT_GUARD_MS: String(GUARD_MS),
          CONTAINER_HEALTH_INTERVAL_MS: "500",
          CONTAINER_HEALTH_TIMEOUT_MS: "500",
          CONTAINER_WEDGED_MS: String(WEDGED_MS),
          CONTAINER_RESTARTS_PER_HOUR: "2",
          MAX_AGENTS_PER_TOWN: "20",
        },
      });
      ({ call } = world);
    });

    after(async () => {
      await world?.control.fail({}).catch(() => {});
      await world?.stop();
      if (repos) rmSync(repos, { recursive: true, force: true });
    });

    it("a container that lost everything it held resets the agents gone silent, and spares one heard from within 90 s (here 10 s)", async () => {
      const { town, rig } = await townWithRig("Evicted");
      // One agent works slowly and heartbeats (every STALL_MS / 4 = 10 s, so its last one is
      // always within the guard); the other hangs without a heartbeat.
      const working = await sling(town.id, rig.id, "Keep working", "[demo:slow]");
      const silent = await sling(town.id, rig.id, "Gone quiet", "[demo:hang]");
      const w = await inProgress(town.id, working.id);
      const s = await inProgress(town.id, silent.id);
      // The silent one past the guard (its last sign of life is its dispatch), the other
      // heard from since.
      await sleep(GUARD_MS + 1_000);
      const before = await health(town.id);
      // The container loses everything it held (as an eviction does: token, env), and the next
      // push finds it so: the owner's forced refresh.
      assert.equal((await world.control.stopTown(town.id)).status, 200);
      assert.equal((await as("POST", `/api/towns/${town.id}/container/refresh-token`)).status, 200);
      const reset = await until("the silent agent's bead to reopen", async () => {
        const b = await bead(town.id, silent.id);
        return b.events.some((e) => e.kind === "reopened" && /evicted or restarted/.test(e.message ?? "")) ? b : not(b.events.map((e) => e.kind));
      }, 15_000);
      assert.ok(!reset.events.some((e) => e.kind === "stalled"), "a reset is no stall");
      const spared = await bead(town.id, working.id);
      assert.equal(spared.status, "in_progress", "an agent heard from within the guard keeps its bead");
      assert.equal(spared.assignee_agent_id, w.assignee_agent_id);
      assert.ok(!spared.events.some((e) => e.kind === "reopened"));
      const after = await health(town.id);
      assert.equal(after.eviction_resets - before.eviction_resets, 1, "exactly the silent agent");
      assert.equal(after.stalls, before.stalls, "no stall counted");
      assert.ok(s.assignee_agent_id);
    });

    it("a container that answers no health check is restarted with fresh tokens, up to the cap an hour; then the breaker opens and the owner reads why; an answer closes it", async () => {
      const { town, rig } = await townWithRig("Wedged");
      assert.equal((await as("POST", `/api/towns/${town.id}/container/start`)).status, 200);
      const first = (await world.control.town(town.id)).body;
      // Deaf, as the worker's checks see it: /health answers 503.
      assert.equal((await world.control.fail({ health: true })).status, 200);
      const opened = await until("the breaker to open", async () => {
        const h = await health(town.id);
        return h.breaker_reason ? h : not({ restarts: h.wedge_restarts });
      }, 30_000);
      assert.equal(opened.wedge_restarts, 2, "restarted up to the cap, no more");
      assert.match(opened.breaker_reason, /no health check/);
      const seen = (await as("GET", `/api/towns/${town.id}/container`)).body;
      assert.match(seen.breaker.reason, /2 restarts within the hour/);
      assert.ok(Date.parse(seen.breaker.open_until) > Date.now() + 50 * 60_000, "until the hour ends");
      // Nothing is dispatched while it is open.
      const held = await sling(town.id, rig.id, "Held by the breaker");
      await sleep(2_000);
      assert.equal((await bead(town.id, held.id)).status, "open");
      assert.equal((await health(town.id)).wedge_restarts, 2);
      // It answers again: the breaker closes, and the work goes through on a fresh start.
      assert.equal((await world.control.fail({})).status, 200);
      await until("the held bead to close", async () => {
        const b = await bead(town.id, held.id);
        return b.status === "closed" ? b : not(b.status);
      }, 30_000);
      assert.equal((await health(town.id)).breaker_reason, null);
      const now = (await world.control.town(town.id)).body;
      assert.ok(gen(now.token) > gen(first.token), `fresh tokens: generation ${gen(first.token)} → ${gen(now.token)}`);
    });

    it("a deaf control server (stopped, answering nothing) is restarted once it has been silent for CONTAINER_WEDGED_MS", async () => {
      const { town } = await townWithRig("Deaf");
      assert.equal((await as("POST", `/api/towns/${town.id}/container/start`)).status, 200);
      const h0 = await health(town.id);
      const pid = world.control.pid;
      process.kill(pid, "SIGSTOP");
      try {
        await until("a restart", async () => {
          const h = await health(town.id);
          return h.wedge_restarts > h0.wedge_restarts ? h : not(h.wedge_restarts);
        }, 20_000);
      } finally {
        process.kill(pid, "SIGCONT");
      }
      // The restart's stop and start go through once it answers again.
      await until("the town's token back in the container", async () => {
        const t = await world.control.town(town.id);
        return t.status === 200 && t.body.token ? t.body : not(t.status);
      }, 90_000);
    });

    it("SIGTERM: the control server drains, the work in progress is pushed to the bead's branch, and the bead resumes there", async () => {
      const { town, rig, repo } = await townWithRig("Drained");
      const slow = await sling(town.id, rig.id, "Slow work", "[demo:slow]");
      const running = await inProgress(town.id, slow.id);
      await until("the agent's file written", async () => {
        const b = await bead(town.id, slow.id);
        return b.events.some((e) => /working on/.test(e.message ?? "")) ? b : not(b.events.map((e) => `${e.kind}:${e.message}`));
      });
      const old = world.control;
      const port = new URL(old.url).port;
      const exited = new Promise((resolve) => old.child.once("exit", (code) => resolve(code)));
      old.child.kill("SIGTERM");
      assert.equal(await exited, 0, "the server exits 0 after its drain");
      const reopened = await until("the bead to reopen from the drain", async () => {
        const b = await bead(town.id, slow.id);
        const e = b.events.find((x) => x.kind === "reopened");
        return e ? { b, e } : not(b.status);
      }, 15_000);
      assert.match(reopened.e.message, /evicted; its work was pushed to (\S+) at [0-9a-f]+; it resumes on that branch/);
      const branch = reopened.e.message.match(/pushed to (\S+) at/)[1];
      assert.match(git("--git-dir", repo, "log", "-1", "--format=%s", branch), /WIP/);
      assert.match(git("--git-dir", repo, "show", `${branch}:gastown/${slow.id}.md`), /Slow work/);
      assert.ok(!reopened.b.events.some((e) => e.kind === "stalled"), "a drain is no stall");
      assert.equal((await health(town.id)).drains, 1);
      // The container comes back (a new server on the same port and work dir); the bead is
      // dispatched again and the agent resumes the branch rather than starting over.
      const revived = await startControlServer({ workdir: old.workdir, port, args: ["--worker-url", world.worker.url, "--drain-grace-ms", "1000"], env: { GASTOWN_ALLOW_LOCAL_GIT: "1" } });
      world.control = revived;
      const closed = await until("the resumed bead to close", async () => {
        const b = await bead(town.id, slow.id);
        return b.status === "closed" ? b : not(b.status);
      }, 60_000);
      assert.ok(closed.events.filter((e) => e.kind === "dispatched").length >= 2, "dispatched again");
      assert.ok(running.assignee_agent_id);
      const log = git("--git-dir", repo, "log", "--format=%s", branch).split("\n");
      assert.match(log[1], /WIP/, `the new commit is on top of the drained one: ${log.join(" | ")}`);
      revived.stop();
    });
  });
}

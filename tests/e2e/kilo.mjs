// Issue 21, end to end: the real Kilo CLI (`@kilocode/cli`, from npm) as a polecat's runtime
// (`gastown-control kilo-agent`), offline, against the stand-in gateway's scripted model. A
// bead slung on a rig of the GitHub stand-in: the CLI writes a file, commits as the bead's
// identity, pushes through the town's credential helper and calls `gt done`; the bead closes
// with the branch. It runs on a worker and control server of its own (fast loop settings).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../../scripts/lib/jwt.mjs";
import { until as untilFor, not, startOwnWorker, workingIn } from "./harness.mjs";
import { freshUser, tokenFor, installedTownWithRig } from "./fixtures.mjs";

const until = (what, probe, ms = 120_000) => untilFor(what, probe, ms, 300);

export const KILO_BIN = join(ROOT, "node_modules", "@kilocode", "cli-linux-x64", "bin", "kilo");
const CONTROL_BIN = join(ROOT, "target", "release", "gastown-control-debug");

const git = (...args) => execFileSync("git", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();

export default function kilo(ctx) {
  describe("the Kilo CLI as a polecat's runtime (offline, scripted model)", () => {
    let call, control, gateway, world;
    const user = freshUser("kilo");
    const token = () => tokenFor(user);
    const as = (method, path, body, t = token()) => call(method, path, { token: t, body });
    const p = () => ctx.platforms;

    before(async () => {
      assert.ok(existsSync(KILO_BIN), `the Kilo CLI is installed from npm (${KILO_BIN})`);
      world = await startOwnWorker(ctx, {
        // The control server refreshes each town's gateway token every second, so tokens change
        // under running sessions; a rotation revokes the old container token at once.
        controlArgs: ["--git-ca-file", p().gitCaFile, "--agent-command", `${CONTROL_BIN} kilo-agent --kilo ${KILO_BIN}`, "--gateway-refresh-ms", "1000"],
        gateway: true,
        vars: { AGENT_STALL_MS: "120000", CONTAINER_TOKEN_GRACE_MS: "0", AGENT_EVENTS_CAP: "10000" },
      });
      ({ call, control, gateway } = world);
    });

    after(async () => {
      await world?.stop();
    });

    /** The tail of every agent log of the town (for a failure's message). */
    const agentLogs = (townId) => {
      const dir = join(control.workdir, townId, "agents");
      if (!existsSync(dir)) return "";
      return readdirSync(dir).filter((f) => f.endsWith(".log")).map((f) => readFileSync(join(dir, f), "utf8").slice(-3000)).join("\n");
    };

    let installations = 0;
    /** A personal town with a rig on a repository of a GitHub App installation of the stand-in. */
    // One installation per town, never the same twice in a run.
    const townWithRig = () =>
      installedTownWithRig({ call, workerUrl: world.worker.url, platforms: p(), user, label: "kilo", installation: 9_500_000 + (process.pid % 10_000) * 100 + ++installations * 2 });

    const bead = async (townId, id) => (await as("GET", `/api/towns/${townId}/beads/${id}`)).body;
    const usageOf = async (townId) => (await (await fetch(`${gateway.url}/debug/usage`)).json()).calls.filter((c) => c.town_id === townId);
    const requestsOf = async (townId) => (await (await fetch(`${gateway.url}/debug/requests`)).json()).requests.filter((r) => r.town_id === townId);
    const expOf = (jwt) => (jwt ? JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString()).exp : 0);
    /** The gateway token in the town's `.env.gateway` now. */
    const gatewayTokenIn = (townId) => readFileSync(join(control.workdir, townId, ".env.gateway"), "utf8").match(/^KILO_JWT=(.+)$/m)?.[1] ?? "";

    it("sling → the real CLI writes, commits, pushes through the credential helper and calls gt done → the bead closes; a second message reaches the session", async () => {
      const { town, rig, login, installation } = await townWithRig();
      const model = await as("PATCH", `/api/towns/${town.id}/config`, { default_model: "kilo/default-model", role_models: { polecat: "kilo/polecat-model" } });
      assert.equal(model.status, 200, model.text);
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Add a greeting", body: "[script:agent]\nSay hello." });
      assert.equal(slung.status, 201, slung.text);
      const done = await until("the bead to close", async () => {
        const b = (await as("GET", `/api/towns/${town.id}/beads/${slung.body.id}`)).body;
        if (b.status === "failed") assert.fail(JSON.stringify(b));
        return b.status === "closed" ? b : not([b.status, b.events.map((e) => `${e.kind}:${e.message ?? ""}`), agentLogs(town.id)]);
      });
      const branch = done.metadata.branch;
      assert.match(branch, /^gastown\//);
      const bare = p().gitRepoPath(login, "app");
      assert.match(git("--git-dir", bare, "show", `${branch}:gastown/${done.id}.md`), /Add a greeting/, "the CLI wrote the file the script asked for");
      assert.equal(git("--git-dir", bare, "log", "-1", "--format=%an <%ae>", branch), "Town Author <author@example.com>", "committed as the session's identity");
      const pushers = [...new Set(p().gitAuth().filter((e) => e.service === "git-receive-pack" && e.owner === login && e.verdict === true).map((e) => e.as))];
      assert.deepEqual(pushers, [`installation:${installation}`], "pushed with the integration's token, through the credential helper");
      // No token in the clone's remote or the CLI's files.
      const agentDir = join(control.workdir, town.id, "agents", done.assignee_agent_id);
      if (existsSync(join(agentDir, "repo", ".git", "config"))) {
        assert.ok(!/ghs_|x-access-token|eyJ/.test(readFileSync(join(agentDir, "repo", ".git", "config"), "utf8")));
      }
      // The gateway billed the town's user, with the town's gateway token.
      const usage = (await (await fetch(`${gateway.url}/debug/usage`)).json()).calls.filter((c) => c.town_id === town.id);
      assert.ok(usage.length >= 3, JSON.stringify(usage));
      assert.ok(usage.every((c) => c.user_id === user));
      assert.deepEqual([...new Set(usage.map((c) => c.model))], ["kilo/polecat-model"], "the polecat's effective model (the town's role_models.polecat)");
      const kinds = done.events.map((e) => e.kind);
      assert.ok(kinds.includes("done"), kinds.join(","));
      // The session's events reached the town: the runtime's lines and the CLI's tool calls,
      // with no token in any of them.
      const seen = await until("the agent's events", async () => {
        const page = (await as("GET", `/api/towns/${town.id}/agents/${done.assignee_agent_id}/events?limit=500`)).body;
        const tools = page.events.filter((e) => e.kind === "tool").map((e) => e.text);
        return ["write: completed", "bash: completed"].every((t) => tools.includes(t)) ? page : not([tools, page.events.length]);
      }, 30_000);
      assert.ok(seen.events.some((e) => e.kind === "output" && /gastown-kilo: mark prompt-sent/.test(e.text)), "the runtime's own lines");
      const shown = JSON.stringify(seen.events);
      for (const secret of [(await control.town(town.id)).body.token, gatewayTokenIn(town.id)]) {
        assert.ok(secret && !shown.includes(secret), "no token in an event");
      }
      assert.ok(!/ghs_|eyJhbGci/.test(shown), "nothing shaped like a token");
      // A second message reaches the same session, and the model.
      const sent = await control.message(town.id, done.assignee_agent_id, "[script:reply] are you there?");
      assert.equal(sent.status, 202, JSON.stringify(sent.body));
      const requests = async () => (await (await fetch(`${gateway.url}/debug/requests`)).json()).requests;
      await until("the reply", async () => (await requests()).find((r) => r.answer?.text === "reply: are you there?") ?? not((await requests()).map((r) => r.answer)), 30_000);
      // The session ends once it has stayed idle; then a message has nowhere to go.
      await until("the session's end", async () => {
        const a = (await control.town(town.id)).body.agents.find((x) => x.agent_id === done.assignee_agent_id);
        return a?.state === "exited" ? a : not(a);
      }, 60_000);
      assert.equal((await control.message(town.id, done.assignee_agent_id, "hello?")).status, 409);
      const after = (await as("GET", `/api/towns/${town.id}/beads/${done.id}`)).body;
      assert.equal(after.status, "closed", "a session that ends after its work is done changes nothing");
    });

    it("a token refresh while the session runs reaches gt and the CLI's next model call", async () => {
      const { town, rig } = await townWithRig();
      // The script pauses 8 s in its commit step: the window in which both tokens change.
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Refresh under me", body: "[script:agent]\nPause: 8\nTake your time." });
      assert.equal(slung.status, 201, slung.text);
      await until("the commit step to be under way", async () => {
        const r = await requestsOf(town.id);
        return r.some((x) => x.answer?.call?.name === "bash" && /^sleep 8 && /.test(x.answer.call.arguments.command)) ? r : not([r.map((x) => x.answer), agentLogs(town.id), p().gitAuth().slice(-4), control.output().slice(-3000)]);
      });
      const before = await usageOf(town.id);
      const lastExp = before.at(-1).token_expires_at;
      // The owner rotates the container token: the old one is refused from now on (no grace here).
      const oldToken = (await control.town(town.id)).body.token;
      assert.equal((await as("POST", `/api/towns/${town.id}/container/refresh-token`)).status, 200);
      await until("the rotated token in the container", async () => ((await control.town(town.id)).body.token !== oldToken ? true : not("the old token")), 5_000);
      // The control server's self-refresh writes a newer gateway token.
      await until("a newer gateway token in .env.gateway", () => (expOf(gatewayTokenIn(town.id)) > lastExp ? true : not(lastExp)), 5_000);
      const stillWorking = await bead(town.id, slung.body.id);
      assert.equal(stillWorking.status, "in_progress", "both changed while the CLI was still at work");
      const done = await until("the bead to close", async () => {
        const b = await bead(town.id, slung.body.id);
        if (b.status === "failed") assert.fail(JSON.stringify(b));
        return b.status === "closed" ? b : not([b.status, b.events.map((e) => `${e.kind}:${e.message ?? ""}`), agentLogs(town.id)]);
      });
      // gt read the rotated token from the town's token file: `gt done` was accepted, and the
      // old token is refused.
      assert.ok(done.events.some((e) => e.kind === "done"));
      const withOld = await call("POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${done.assignee_agent_id}/heartbeat`, { token: oldToken, body: {} });
      assert.equal(withOld.status, 401, withOld.text);
      // Every model call after the refresh carried a newer gateway token than the calls before.
      // (the call that ran `gt done` and the closing text)
      const after = await until("the calls after the refresh", async () => {
        const later = (await usageOf(town.id)).slice(before.length);
        return later.length >= 2 ? later : not(later);
      }, 20_000);
      assert.ok(after.every((c) => c.token_expires_at > lastExp), JSON.stringify({ lastExp, after }));
      // No token (no JWT at all) in any file of the agent: the clone, the CLI's config, data
      // and logs.
      const agentDir = join(control.workdir, town.id, "agents", done.assignee_agent_id);
      const files = readdirSync(agentDir, { recursive: true }).map((f) => join(agentDir, f)).filter((f) => !f.includes("/.git/objects/") && statSync(f).isFile());
      assert.ok(files.length > 5, files.join(","));
      for (const f of files) assert.ok(!readFileSync(f).includes("eyJhbGciOi"), `${f} holds a token`);
    });

    it("a Kilo agent killed mid-run is reported at once, and its CLI goes with it", async () => {
      const { town, rig } = await townWithRig();
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Killed", body: "[script:agent]\nPause: 60" });
      assert.equal(slung.status, 201, slung.text);
      await until("the commit step to be under way", async () => {
        const r = await requestsOf(town.id);
        return r.some((x) => /^sleep 60 && /.test(x.answer?.call?.arguments?.command ?? "")) ? r : not([agentLogs(town.id), p().gitAuth().slice(-4)]);
      });
      const working = await bead(town.id, slung.body.id);
      const running = (await control.town(town.id)).body.agents.find((x) => x.agent_id === working.assignee_agent_id && x.state === "running");
      assert.ok(running, "the agent runs");
      const workDir = join(control.workdir, town.id, "agents", working.assignee_agent_id);
      const cmd = (pid) => { try { return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim(); } catch { return "?"; } };
      const pids = await until("the runtime, the CLI and its shell tool", () => {
        const now = workingIn(workDir);
        return now.some((p) => /^sleep 60/.test(cmd(p)) || /sleep 60 && /.test(cmd(p))) && now.length >= 3 ? now : not(now.map(cmd));
      }, 15_000);
      // No token in any of their environments: the relay and gt read the files.
      for (const pid of pids) {
        const environ = readFileSync(`/proc/${pid}/environ`, "utf8");
        assert.ok(!/eyJ[\w-]+\.[\w-]+\./.test(environ), `process ${pid} holds a token in its env`);
      }
      process.kill(running.pid, "SIGKILL");
      const reopened = await until("the exit report", async () => {
        const b = await bead(town.id, slung.body.id);
        const stall = b.events.find((e) => e.kind === "stalled");
        return stall ? b : not(b.events.map((e) => e.kind));
      }, 10_000);
      assert.match(reopened.events.find((e) => e.kind === "stalled").message, /^its agent was killed by a signal/);
      // Nothing the agent started outlives it: the CLI's server and the shell tool's `sleep`.
      // (A re-dispatch may start new ones in the same place; these must be gone.)
      const left = () => workingIn(workDir).filter((p) => pids.includes(p));
      await until("the agent's processes to be gone", () => (left().length === 0 ? true : not(left())), 5_000);
      assert.equal((await as("PATCH", `/api/towns/${town.id}/beads/${slung.body.id}`, { status: "closed" })).status, 200);
    });
  });
}

// Issue 21, end to end: the real Kilo CLI (`@kilocode/cli`, from npm) as a polecat's runtime
// (`gastown-control kilo-agent`), offline, against the stand-in gateway's scripted model. A
// bead slung on a rig of the GitHub stand-in: the CLI writes a file, commits as the bead's
// identity, pushes through the town's credential helper and calls `gt done`; the bead closes
// with the branch. It runs on a worker and control server of its own (fast loop settings).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../../scripts/lib/jwt.mjs";
import { secrets, until as untilFor, not, startOwnWorker } from "./harness.mjs";
import { freshUser, tokenFor, createTown } from "./fixtures.mjs";

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
        controlArgs: ["--git-ca-file", p().gitCaFile, "--agent-command", `${CONTROL_BIN} kilo-agent --kilo ${KILO_BIN}`],
        gateway: true,
        vars: { AGENT_STALL_MS: "120000" },
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

    /** A personal town with a rig on a repository of a GitHub App installation of the stand-in. */
    async function townWithRig() {
      const installation = 9_500_000 + (process.pid % 1000) * 10 + Math.floor(Math.random() * 9);
      const login = `kilo-acct-${installation}`;
      p().addGithubUser({ id: installation + 1, login });
      p().addInstallation({ id: installation, login, repos: [{ name: "app" }] });
      const start = await as("POST", "/api/integrations/github/install", {});
      const state = new URL(start.body.install_url).searchParams.get("state");
      const code = p().issueGithubUserCode({ user_id: installation + 1, redirect_uri: `${secrets.PUBLIC_URL}/api/integrations/github/installed` });
      const back = await fetch(`${world.worker.url}/api/integrations/github/installed?installation_id=${installation}&setup_action=install&code=${code}&state=${encodeURIComponent(state)}`, { redirect: "manual" });
      assert.equal(new URL(back.headers.get("location")).searchParams.get("result"), "success");
      const integration = (await as("GET", `/api/users/${user}/integrations`)).body.find((i) => i.account_login === login);
      const town = await createTown(call, user, "Kilo");
      assert.equal((await as("PATCH", `/api/towns/${town.id}/config`, { git_author_name: "Town Author", git_author_email: "author@example.com" })).status, 200);
      const rig = (await as("POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "app", platform_integration_id: integration.id, repo: `${login}/app` })).body;
      return { town, rig, login, installation };
    }

    it("sling → the real CLI writes, commits, pushes through the credential helper and calls gt done → the bead closes; a second message reaches the session", async () => {
      const { town, rig, login, installation } = await townWithRig();
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
      const kinds = done.events.map((e) => e.kind);
      assert.ok(kinds.includes("done"), kinds.join(","));
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
  });
}

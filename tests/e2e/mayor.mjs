// Issue 22, end to end: a user talks to the town's mayor. The mayor is the real Kilo CLI
// (`gastown-control kilo-agent`, mayor mode) against the stand-in gateway's scripted model
// (`[script:mayor] …` in a message says what it does), on a worker and control server of this
// suite's own, with a short idle stop so the container goes away between messages.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../../scripts/lib/jwt.mjs";
import { until as untilFor, not, startOwnWorker } from "./harness.mjs";
import { freshUser, tokenFor, installedTownWithRig } from "./fixtures.mjs";
import { KILO_BIN } from "./kilo.mjs";
import { openSocket } from "./streams.mjs";

const until = (what, probe, ms = 120_000) => untilFor(what, probe, ms, 300);
const CONTROL_BIN = join(ROOT, "target", "release", "gastown-control-debug");
const IDLE_STOP_MS = 8_000;
/** A working agent silent this long is stalled (the runtime heartbeats every quarter of it). */
const STALL_MS = 20_000;
/** The transcript's cap in this suite (per town: no other test's town reaches it). */
const CAP = 30;

export default function mayor(ctx) {
  describe("the mayor (real CLI, scripted model)", () => {
    let call, control, gateway, world;
    const user = freshUser("mayor");
    const as = (method, path, body, t = tokenFor(user)) => call(method, path, { token: t, body });
    let installations = 0;
    const townWithRig = () =>
      installedTownWithRig({ call, workerUrl: world.worker.url, platforms: ctx.platforms, user, label: "mayor", installation: 9_700_000 + (process.pid % 10_000) * 100 + ++installations * 2 });

    before(async () => {
      assert.ok(existsSync(KILO_BIN), `the Kilo CLI is installed from npm (${KILO_BIN})`);
      world = await startOwnWorker(ctx, {
        controlArgs: ["--git-ca-file", ctx.platforms.gitCaFile, "--agent-command", `${CONTROL_BIN} kilo-agent --kilo ${KILO_BIN}`],
        gateway: true,
        vars: { AGENT_STALL_MS: String(STALL_MS), CONTAINER_IDLE_STOP_MS: String(IDLE_STOP_MS), TOWN_ALARM_INTERVAL_MS: "500", CONTAINER_TOKEN_GRACE_MS: "0", MAYOR_TRANSCRIPT_CAP: String(CAP), AGENT_EVENTS_CAP: "10000" },
      });
      ({ call, control, gateway } = world);
    });

    after(async () => {
      // GASTOWN_E2E_WORKER_LOG=1 prints this suite's worker log (for working on it).
      if (process.env.GASTOWN_E2E_WORKER_LOG) console.log(world?.worker.output());
      await world?.stop();
    });

    const agentLogs = (townId) => {
      const dir = join(control.workdir, townId, "agents");
      if (!existsSync(dir)) return "";
      return readdirSync(dir).filter((f) => f.endsWith(".log")).map((f) => `${f}:\n${readFileSync(join(dir, f), "utf8").slice(-2500)}`).join("\n");
    };
    const say = (townId, text, t) => as("POST", `/api/towns/${townId}/mayor/messages`, { text }, t);
    const transcript = async (townId, after = 0) => (await as("GET", `/api/towns/${townId}/mayor/messages?after=${after}`)).body;
    const status = async (townId) => (await as("GET", `/api/towns/${townId}/mayor`)).body;
    const requestsOf = async (townId) => (await (await fetch(`${gateway.url}/debug/requests`)).json()).requests.filter((r) => r.town_id === townId);
    /** The mayor's replies so far. */
    const replies = async (townId) => (await transcript(townId)).messages.filter((m) => m.role === "mayor");
    const replyMatching = (townId, re) =>
      until(`a reply matching ${re}`, async () => {
        const r = await replies(townId);
        return r.find((m) => re.test(m.text)) ?? not([r.map((m) => m.text), await status(townId), agentLogs(townId)]);
      });
    const bead = async (townId, id) => (await as("GET", `/api/towns/${townId}/beads/${id}`)).body;
    /** The running mayor session's key and container token, as its process holds them. */
    const mayorSession = (townId) => {
      for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
        let env;
        try {
          env = Object.fromEntries(readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
        } catch {
          continue;
        }
        if (env.GASTOWN_TOWN_ID === townId && env.GASTOWN_MAYOR_KEY) {
          return { key: env.GASTOWN_MAYOR_KEY, token: readFileSync(env.GASTOWN_CONTAINER_TOKEN_FILE, "utf8").trim() };
        }
      }
      return null;
    };
    /** The pid of the mayor's runtime (`gastown-control kilo-agent`) of `townId`. */
    const mayorRuntime = (townId) =>
      Number(
        readdirSync("/proc").filter((d) => /^\d+$/.test(d)).find((pid) => {
          try {
            const env = readFileSync(`/proc/${pid}/environ`, "utf8");
            return env.includes(`GASTOWN_TOWN_ID=${townId}\0`) && env.includes("GASTOWN_MAYOR_KEY=") && readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("kilo-agent");
          } catch {
            return false;
          }
        }),
      );
    const tool = (townId, session, method, path, body) =>
      call(method, `/api/mayor/${townId}/tools/${path}`, { token: session.token, headers: { "x-gastown-mayor-key": session.key }, body });

    it("a message → the mayor slings a convoy (the second bead after the first) → the convoy closes → the reply is in the transcript; after an idle stop the next message resumes the conversation", async () => {
      const { town, rig } = await townWithRig();
      assert.equal((await as("PATCH", `/api/towns/${town.id}/config`, { role_models: { mayor: "kilo/mayor-model" } })).status, 200);
      assert.equal((await status(town.id)).status, "idle");
      // The dashboard watches the town live meanwhile.
      const ticket = await as("POST", `/api/towns/${town.id}/stream-tickets`, { scope: "town" });
      assert.equal(ticket.status, 201, ticket.text);
      const live = openSocket(world.worker.url, ticket.body.url);
      await live.next((f) => f.type === "ready");
      const ask = "Please add two greetings, the second after the first.";
      const sent = await say(town.id, `[script:mayor] convoy ${rig.id}\n${ask}`);
      assert.equal(sent.status, 202, sent.text);
      assert.deepEqual([sent.body.role, sent.body.user_id, sent.body.delivered], ["user", user, false]);

      const planned = await replyMatching(town.id, /^Slung a convoy of 2 beads/);
      assert.ok(planned.seq > sent.body.seq);

      // The mayor's tools, with its session's own key (read from its process, as `gt` reads it).
      const session = mayorSession(town.id);
      assert.ok(session, "a mayor process holds a key");
      const rigs = await tool(town.id, session, "GET", "rigs");
      assert.deepEqual([rigs.status, rigs.body.map((r) => r.id)], [200, [rig.id]]);
      const listed = await tool(town.id, session, "GET", "beads?type=convoy");
      assert.deepEqual([listed.status, listed.body.length], [200, 1]);
      const agents = (await tool(town.id, session, "GET", "agents")).body;
      const mayorAgent = agents.find((a) => a.role === "mayor");
      assert.ok(mayorAgent, JSON.stringify(agents));
      const note = await tool(town.id, session, "POST", "beads", { title: "A note", type: "message" });
      assert.deepEqual([note.status, note.body.created_by], [201, user], note.text);
      const renamed = await tool(town.id, session, "PATCH", `beads/${note.body.id}`, { title: "A better note" });
      assert.deepEqual([renamed.status, renamed.body.title], [200, "A better note"]);
      assert.equal((await tool(town.id, session, "GET", `beads/${note.body.id}`)).body.events.length, 2);
      assert.equal((await tool(town.id, session, "POST", `agents/${mayorAgent.id}/reset`)).status, 404, "the mayor does not reset itself");
      assert.equal((await tool(town.id, session, "POST", `escalations/${note.body.id}/ack`)).status, 404, "a note is no escalation");
      assert.equal((await tool(town.id, session, "POST", "sling", {})).status, 422);
      assert.equal((await tool(town.id, session, "POST", "state", { status: "asleep" })).status, 422);
      assert.equal((await tool(town.id, session, "POST", "reply", { text: "" })).status, 422);
      // The mayor's own events reach the town, as any agent's, its key masked in them.
      const mayorEvents = await until("the mayor's events", async () => {
        const page = (await as("GET", `/api/towns/${town.id}/agents/${mayorAgent.id}/events?limit=500`)).body;
        const has = (kind, text) => page.events.some((e) => e.kind === kind && e.text === text);
        // Its shell tool ran `gt sling-batch` and `gt reply`, then the session went idle.
        return has("tool", "bash: completed") && has("session", "idle") ? page : not(page.events.map((e) => `${e.kind}:${e.text}`).slice(-10));
      }, 30_000);
      assert.ok(!JSON.stringify(mayorEvents.events).includes(session.key), "the session's key is masked");
      const convoys = (await as("GET", `/api/towns/${town.id}/convoys`)).body;
      assert.equal(convoys.length, 1, JSON.stringify(convoys));
      const detail = (await as("GET", `/api/towns/${town.id}/convoys/${convoys[0].id}`)).body;
      const [first, second] = detail.beads;
      assert.deepEqual([first.title, second.title], ["First greeting", "Second greeting"]);
      // The work the mayor made for the user's message runs as that user.
      assert.ok(detail.beads.every((b) => b.created_by === user), JSON.stringify(detail.beads));

      const closed = await until("the convoy to close", async () => {
        const c = (await as("GET", `/api/towns/${town.id}/convoys/${convoys[0].id}`)).body;
        if (c.status === "failed") assert.fail(JSON.stringify([c, agentLogs(town.id)]));
        return c.status === "closed" ? c : not([c.status, c.progress, c.beads.map((b) => b.status), agentLogs(town.id)]);
      }, 240_000);
      assert.deepEqual(closed.progress, { closed: 2, total: 2 });
      // The socket saw it all happen: the user's message and the mayor's reply, the mayor at
      // work, the beads going through their states, the convoy's progress to 2 of 2.
      const seen = await live.next((f) => f.type === "town_events" && f.events.some((e) => e.kind === "convoy" && e.data.closed === 2), 10_000)
        .then(() => live.frames.filter((f) => f.type === "town_events").flatMap((f) => f.events));
      const of = (kind) => seen.filter((e) => e.kind === kind);
      assert.deepEqual(of("mayor_message").slice(0, 2).map((e) => e.data.role), ["user", "mayor"]);
      assert.ok(of("mayor_message").some((e) => e.data.role === "mayor" && /^Slung a convoy of 2 beads/.test(e.data.text)));
      assert.ok(of("mayor_status").some((e) => e.data.status === "working"), JSON.stringify(of("mayor_status")));
      assert.deepEqual(of("convoy").map((e) => e.data.closed).filter((n, i, all) => all.indexOf(n) === i), [0, 1, 2]);
      for (const b of [first, second]) {
        const states = of("bead").filter((e) => e.data.id === b.id).map((e) => e.data.status);
        assert.ok(states.includes("in_progress") && states.at(-1) === "closed", `${b.title}: ${states}`);
      }
      live.close();
      // The second waited: it was dispatched only after the first closed.
      const [b1, b2] = [await bead(town.id, first.id), await bead(town.id, second.id)];
      const at = (b, kind) => b.events.find((e) => e.kind === kind)?.created_at;
      assert.ok(at(b1, "done") && at(b2, "dispatched"), JSON.stringify([b1.events, b2.events]));
      assert.ok(at(b2, "dispatched") >= at(b1, "done"), `${at(b2, "dispatched")} < ${at(b1, "done")}`);

      // Having answered, the mayor waits; a waiting mayor keeps nothing awake, so the container
      // idles out, and the session with it.
      const view = await status(town.id);
      assert.ok(["waiting", "idle"].includes(view.status), JSON.stringify(view));
      assert.equal(view.model, "kilo/mayor-model");
      const mayorCalls = (await requestsOf(town.id)).filter((r) => r.model === "kilo/mayor-model");
      assert.ok(mayorCalls.length >= 2, "the mayor's calls use its role's model");
      await until("the idle stop", async () => {
        const v = await status(town.id);
        const c = (await as("GET", `/api/towns/${town.id}/container`)).body;
        return v.status === "idle" && c.state === "stopped" ? true : not([v, c.state]);
      }, 60_000);
      // The session's key died with it (and its container token was rotated away).
      const dead = await tool(town.id, session, "GET", "rigs");
      assert.ok([401, 403].includes(dead.status), dead.text);

      // The next message wakes the container and resumes the same conversation.
      const again = await say(town.id, "[script:mayor] remember");
      assert.equal(again.status, 202, again.text);
      const remembered = await replyMatching(town.id, /^I remember:/);
      assert.match(remembered.text, /Please add two greetings/, "the new session was given the conversation so far");
      assert.match(remembered.text, /Slung a convoy of 2 beads/, "its own replies too");

      const all = await transcript(town.id);
      assert.deepEqual(all.messages.map((m) => m.role), ["user", "mayor", "user", "mayor"]);
      assert.ok(all.messages.every((m) => m.delivered));
      assert.deepEqual(all.messages.map((m) => m.seq), [...all.messages.map((m) => m.seq)].sort((a, b) => a - b));
      // Pages: one message at a time, the cursor is the last seq.
      const page = await as("GET", `/api/towns/${town.id}/mayor/messages?limit=1&after=${all.messages[0].seq}`);
      assert.deepEqual([page.body.messages.length, page.body.messages[0].seq, page.body.next_after], [1, all.messages[1].seq, all.messages[1].seq]);
    });

    it("who may talk to the mayor, and who may use its tools: other orgs and polecats may not; bad messages write nothing", async () => {
      const { town } = await townWithRig();
      const stranger = tokenFor(freshUser("stranger"), { orgs: [{ orgId: `org-${process.pid}`, role: "owner" }] });
      for (const [method, path, body] of [
        ["POST", `/api/towns/${town.id}/mayor/messages`, { text: "hi" }],
        ["GET", `/api/towns/${town.id}/mayor`],
        ["GET", `/api/towns/${town.id}/mayor/messages`],
      ]) {
        assert.equal((await as(method, path, body, stranger)).status, 403, `${method} ${path}`);
      }
      for (const bad of [{}, { text: "" }, { text: "  " }, { text: 7 }, { text: "x".repeat(8001) }, { text: "a", extra: 1 }, { text: "bell \u0007" }]) {
        const res = await as("POST", `/api/towns/${town.id}/mayor/messages`, bad);
        assert.equal(res.status, 422, `${JSON.stringify(bad).slice(0, 40)} → ${res.text}`);
      }
      assert.equal((await as("POST", `/api/towns/${town.id}/mayor/messages`, [1])).status, 400);
      for (const q of ["after=x", "after=-1", "limit=0", "limit=501"]) {
        assert.equal((await as("GET", `/api/towns/${town.id}/mayor/messages?${q}`)).status, 422, q);
      }
      // Nothing was written, and no mayor was started for it.
      const empty = await transcript(town.id);
      assert.deepEqual([empty.messages, empty.next_after, empty.dropped], [[], null, 0]);
      assert.deepEqual([(await status(town.id)).status, (await status(town.id)).pending_messages], ["idle", 0]);

      // A polecat holds the town's container token, but not the mayor session's key.
      assert.equal((await as("POST", `/api/towns/${town.id}/container/start`)).status, 200);
      const containerToken = (await control.town(town.id)).body.token;
      assert.ok(containerToken, "the container runs");
      const tool = (path, headers = {}, method = "GET", body) =>
        fetch(`${world.worker.url}/api/mayor/${town.id}/tools/${path}`, {
          method,
          headers: { authorization: `Bearer ${containerToken}`, "content-type": "application/json", ...headers },
          body: body && JSON.stringify(body),
        });
      for (const [path, method, body] of [["rigs"], ["beads"], ["agents"], ["reply", "POST", { text: "not the mayor" }], ["sling-batch", "POST", { title: "x", beads: [] }]]) {
        const res = await tool(path, {}, method, body);
        assert.equal(res.status, 403, path);
        assert.equal((await res.json()).error.code, "forbidden");
        assert.equal((await tool(path, { "x-gastown-mayor-key": "f".repeat(64) }, method, body)).status, 403, `${path} with a made-up key`);
      }
      assert.equal((await replies(town.id)).length === 0 || (await replies(town.id)).every((m) => m.text !== "not the mayor"), true);
      // A user token is no container token.
      assert.equal((await call("GET", `/api/mayor/${town.id}/tools/rigs`, { token: tokenFor(user), headers: { "x-gastown-mayor-key": "k" } })).status, 401);
    });

    it("10 messages sent at once are all delivered once, in order", async () => {
      const { town } = await townWithRig();
      const texts = Array.from({ length: 10 }, (_, i) => `[script:mayor] reply got m${i}\nmessage number m${i}.`);
      const sent = await Promise.all(texts.map((t) => say(town.id, t)));
      assert.ok(sent.every((r) => r.status === 202), JSON.stringify(sent.map((r) => r.status)));
      const seqs = sent.map((r) => r.body.seq);
      assert.equal(new Set(seqs).size, 10, "ten messages, ten rows");
      await until("every message delivered and answered", async () => {
        const t = await transcript(town.id);
        const users = t.messages.filter((m) => m.role === "user");
        const v = await status(town.id);
        return users.length === 10 && users.every((m) => m.delivered) && v.status === "waiting" ? t : not([users.map((m) => m.delivered), v]);
      });
      // One session heard them all: those that came while it started waited for its first
      // prompt (they did not start another, which would have heard the first as its past).
      const mayorId = (await status(town.id)).agent_id;
      const log = readFileSync(join(control.workdir, town.id, "agents", `${mayorId}.log`), "utf8");
      assert.equal(log.split("--- gastown-control: start ").length - 1, 1, log.slice(-3000));
      // What the model was told, in the last call of the session: each message once, in the
      // order the town stored them.
      const stored = (await transcript(town.id)).messages.filter((m) => m.role === "user").sort((a, b) => a.seq - b.seq);
      const calls = (await requestsOf(town.id)).sort((a, b) => a.at_ms - b.at_ms);
      const told = calls.at(-1).user_texts.join("\n");
      let from = -1;
      for (const m of stored) {
        const marker = m.text.split("\n")[1];
        const at = told.indexOf(marker);
        assert.ok(at > from, `${marker} in order (${at} after ${from}):\n${told}`);
        assert.equal(told.indexOf(marker, at + 1), -1, `${marker} told once`);
        from = at;
      }
    });

    it("an escalation reaches a waiting mayor once, and the mayor acknowledges it", async () => {
      const { town, rig } = await townWithRig();
      const hello = await say(town.id, "[script:mayor] reply ready");
      assert.equal(hello.status, 202);
      await replyMatching(town.id, /^ready$/);
      // A bead its agent never finishes (the scripted model only talks): it stalls three
      // times and fails into an escalation, for the mayor.
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Never done", body: "Just talk about it." });
      assert.equal(slung.status, 201);
      const escalation = await until("the escalation", async () => {
        const list = (await as("GET", `/api/towns/${town.id}/beads?type=escalation`)).body;
        return list.length ? list[0] : not([(await bead(town.id, slung.body.id)).events.map((e) => e.kind)]);
      }, 240_000);
      const told = await until("the escalation in the transcript", async () => {
        const town_ = (await transcript(town.id)).messages.filter((m) => m.role === "town");
        return town_.length && town_.every((m) => m.delivered) ? town_ : not(town_);
      }, 60_000);
      assert.equal(told.length, 1, "once");
      assert.match(told[0].text, new RegExp(`Escalation ${escalation.id}`));
      const ack = await say(town.id, `[script:mayor] ack ${escalation.id}`);
      assert.equal(ack.status, 202);
      await replyMatching(town.id, new RegExp(`^Acknowledged ${escalation.id}$`));
      const acked = await bead(town.id, escalation.id);
      assert.equal(acked.status, "closed");
      assert.ok(acked.events.some((e) => e.message === "acknowledged by the mayor"), JSON.stringify(acked.events));
      // Still once, after everything since.
      assert.equal((await transcript(town.id)).messages.filter((m) => m.role === "town").length, 1);
    });

    it("a mayor whose process dies is idle at once, and the next message starts another", async () => {
      const { town } = await townWithRig();
      assert.equal((await say(town.id, "[script:mayor] reply here")).status, 202);
      await replyMatching(town.id, /^here$/);
      await until("the mayor waiting", async () => ((await status(town.id)).status === "waiting" ? true : not(await status(town.id))), 30_000);
      // SIGKILL the mayor's runtime (as an OOM kill would): no goodbye from it.
      const runtime = mayorRuntime(town.id);
      assert.ok(runtime, "the mayor's runtime runs");
      process.kill(runtime, "SIGKILL");
      // The control server saw it end and said so with the session's key: idle well before
      // the idle stop (8 s) or a stall (60 s) would say it.
      const t0 = Date.now();
      await until("the mayor idle", async () => ((await status(town.id)).status === "idle" ? true : not(await status(town.id))), 5_000);
      assert.ok(Date.now() - t0 < 5_000);
      assert.equal((await as("GET", `/api/towns/${town.id}/container`)).body.state, "running", "the container lives on");
      assert.equal((await say(town.id, "[script:mayor] reply back")).status, 202);
      await replyMatching(town.id, /^back$/);
    });

    it(`the transcript keeps the latest ${CAP} messages (MAYOR_TRANSCRIPT_CAP), counting what it dropped`, async () => {
      const { town } = await townWithRig();
      const sent = [];
      for (let i = 1; i <= CAP + 6; i++) {
        // Plain notes: the scripted model answers them in words, with no reply to store.
        const res = await say(town.id, `note ${i}`);
        assert.equal(res.status, 202, res.text);
        sent.push(res.body.seq);
        if (i === CAP + 5 || i === CAP + 6) {
          // Messages are dropped once heard: wait for these to be, then send the next.
          await until(`note ${i} delivered`, async () => ((await status(town.id)).pending_messages === 0 ? true : not(await status(town.id))), 60_000);
        }
      }
      const t = await transcript(town.id);
      assert.equal(t.messages.length, CAP, JSON.stringify(t.messages.map((m) => m.text)));
      assert.deepEqual([t.messages[0].text, t.messages.at(-1).text, t.dropped], ["note 7", `note ${CAP + 6}`, 6]);
      assert.equal(t.messages[0].seq, sent[6]);
    });

    it("a mayor working without a sign of life is stalled by patrol, like any agent", async () => {
      const { town } = await townWithRig();
      assert.equal((await say(town.id, "[script:mayor] reply up")).status, 202);
      await replyMatching(town.id, /^up$/);
      await until("the mayor waiting", async () => ((await status(town.id)).status === "waiting" ? true : not(await status(town.id))), 30_000);
      // Its runtime freezes (SIGSTOP: alive, silent) just as it says it works again.
      const session = mayorSession(town.id);
      const runtime = mayorRuntime(town.id);
      process.kill(runtime, "SIGSTOP");
      try {
        assert.equal((await tool(town.id, session, "POST", "state", { status: "working" })).status, 200);
        assert.equal((await status(town.id)).status, "working");
        const t0 = Date.now();
        await until("the stall", async () => ((await status(town.id)).status === "idle" ? true : not(await status(town.id))), STALL_MS + 20_000);
        assert.ok(Date.now() - t0 >= STALL_MS - 2_000, "not before the stall time");
        const mayorAgent = (await as("GET", `/api/towns/${town.id}/agents`)).body.find((a) => a.role === "mayor");
        assert.equal(mayorAgent.status, "stalled");
        assert.equal((await tool(town.id, session, "GET", "rigs")).status, 403, "the stalled session's key is refused");
      } finally {
        try {
          process.kill(runtime, "SIGCONT");
        } catch {
          // patrol's stop took it already
        }
      }
      // The next message starts a new session.
      assert.equal((await say(town.id, "[script:mayor] reply again")).status, 202);
      await replyMatching(town.id, /^again$/);
    });
  });
}

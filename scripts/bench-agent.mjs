#!/usr/bin/env node
// The agent's time to work, for `npm run bench` (and alone: `node scripts/bench-agent.mjs`,
// with node_modules/.bin on PATH, after scripts/build.sh). One worker under `wrangler dev
// --local` with the development settings of .dev.vars (as `npm run dev` runs it), the container
// control server with the Kilo runtime (the real CLI from npm), and the stand-in gateway's
// scripted model. BENCH_AGENT_RUNS (default 5) beads are slung one after another on a rig of a
// local bare repository; each is followed from the sling to the agent's first model call and
// to `gt done`, and the time is split by where it goes:
//
//   worker          sling → `dispatched` (the town's alarm picks the bead and asks for an agent)
//   control server  `dispatched` → the runtime's process runs (start call, identity, spawn)
//   runtime: clone  the runtime clones the rig and checks out the branch
//   CLI start-up    `kilo serve` listening, the session made and the prompt sent, then the
//                   CLI's first model request
//   work            first model call → `done` (the script's three tool calls and four model
//                   round trips: write, commit and push, `gt done`)
//
// The points come from the bead's events (the worker's clock), the runtime's marks in the
// agent's log (`gastown-kilo: mark <name> <ms>`) and the gateway's record of each call
// (`at_ms`); all run on this machine's clock. Figures are medians over the runs.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT, userToken } from "./lib/jwt.mjs";
import {
  client, freePort, makePersistDir, migrateD1, removePersistDir, secrets, startControlServer, startGateway, startWorker, until,
} from "../tests/e2e/harness.mjs";

export const KILO_BIN = join(ROOT, "node_modules", "@kilocode", "cli-linux-x64", "bin", "kilo");
const CONTROL_BIN = join(ROOT, "target", "release", "gastown-control");

const git = (...args) => execFileSync("git", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
export const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** A bare repository with one commit on `main`. */
function bareRepo(dir) {
  const bare = join(dir, "bench.git");
  git("init", "--quiet", "--bare", "--initial-branch=main", bare);
  const seed = join(dir, "seed");
  git("clone", "--quiet", bare, seed);
  writeFileSync(join(seed, "README.md"), "bench\n");
  git("-C", seed, "add", "README.md");
  git("-C", seed, "-c", "user.name=Seed", "-c", "user.email=seed@example.com", "commit", "--quiet", "-m", "seed");
  git("-C", seed, "push", "--quiet", "origin", "HEAD:main");
  return bare;
}

/** The runtime's marks of the agent's last start, from its log. */
export function marks(logFile) {
  const text = existsSync(logFile) ? readFileSync(logFile, "utf8") : "";
  const last = text.slice(text.lastIndexOf("--- gastown-control: start"));
  return Object.fromEntries([...last.matchAll(/^gastown-kilo: mark (\S+) (\d+)$/gm)].map((m) => [m[1], Number(m[2])]));
}

/**
 * Runs `measure` against one worker (the development settings), the control server with the
 * Kilo runtime and the stand-in gateway, with a user, and a rig on a local bare repository in
 * `newTown()`'s towns; everything is stopped and removed afterwards.
 */
export async function withBenchWorld(label, measure) {
  if (!existsSync(KILO_BIN)) throw new Error(`the Kilo CLI is not installed (${KILO_BIN}): run npm ci`);
  const dir = mkdtempSync(join(tmpdir(), `gastown-bench-${label}-`));
  const persistDir = makePersistDir();
  migrateD1(persistDir);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let control, gateway, worker;
  try {
    control = await startControlServer({ args: ["--worker-url", url, "--agent-command", `${CONTROL_BIN} kilo-agent --kilo ${KILO_BIN}`] });
    gateway = await startGateway();
    worker = await startWorker({
      persistDir,
      port,
      vars: { CONTAINER_CONTROL_URL: control.url, AGENT_CALLBACK_URL: url, KILO_GATEWAY_URL: gateway.url, GASTOWN_ALLOW_LOCAL_GIT: "1" },
    });
    const call = client(() => worker.url);
    const user = `bench-${label}-${process.pid}`;
    const token = userToken(secrets.NEXTAUTH_SECRET, user);
    const as = async (method, path, body) => {
      const res = await call(method, path, { token, body });
      if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${res.text}`);
      return res.body;
    };
    const repo = bareRepo(dir);
    const newTown = async (name) => {
      const town = await as("POST", `/api/users/${user}/towns`, { name });
      const rig = await as("POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "bench", git_url: `file://${repo}` });
      return { town, rig };
    };
    const requests = async (townId) => (await (await fetch(`${gateway.url}/debug/requests`)).json()).requests.filter((r) => r.town_id === townId);
    return await measure({ as, control, newTown, requests });
  } finally {
    await worker?.stop();
    control?.stop();
    gateway?.stop();
    removePersistDir(persistDir);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs the measurement; its figures (per run and medians). */
export async function measureAgentRuns({ runs = Number(process.env.BENCH_AGENT_RUNS ?? 5) } = {}) {
  return withBenchWorld("agent", async ({ as, control, newTown, requests: requestsOf }) => {
    const { town, rig } = await newTown("Bench agent");
    const requests = () => requestsOf(town.id);
    const perRun = [];
    for (let i = 0; i < runs; i++) {
      const t0 = Date.now();
      const slung = await as("POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: `Bench ${i + 1}`, body: "[script:agent]\nWrite the file." });
      const answered = Date.now();
      const bead = await until(`bench bead ${i + 1} to close`, async () => {
        const b = await as("GET", `/api/towns/${town.id}/beads/${slung.id}`);
        if (b.status === "failed") throw new Error(`bench bead failed: ${JSON.stringify(b)}`);
        return b.status === "closed" ? b : null;
      }, 180_000, 100);
      const at = (kind) => Date.parse(bead.events.find((e) => e.kind === kind)?.created_at);
      const m = marks(join(control.workdir, town.id, "agents", `${bead.assignee_agent_id}.log`));
      const firstCall = Math.min(...(await requests()).filter((r) => r.at_ms >= t0).map((r) => r.at_ms));
      const run = {
        sling_answer_ms: answered - t0,
        worker_ms: at("dispatched") - t0,
        control_server_ms: m.started - at("dispatched"),
        clone_ms: m.cloned - m.started,
        cli_listening_ms: m["cli-listening"] - m.cloned,
        session_and_prompt_ms: m["prompt-sent"] - m["cli-listening"],
        prompt_to_first_call_ms: firstCall - m["prompt-sent"],
        work_ms: at("done") - firstCall,
        sling_to_first_call_ms: firstCall - t0,
        sling_to_done_ms: at("done") - t0,
        model_calls_until_closed: (await requests()).filter((r) => r.at_ms >= t0).length,
      };
      perRun.push(run);
      console.log(`agent run ${i + 1}/${runs}: ${JSON.stringify(run)}`);
      // The session lingers idle for 10 s; the next run starts on a quiet machine.
      await until("the session's end", async () => {
        const a = (await control.town(town.id)).body.agents?.find((x) => x.agent_id === bead.assignee_agent_id);
        return a?.state === "exited" ? a : null;
      }, 60_000, 200);
    }
    const keys = Object.keys(perRun[0] ?? {});
    const medians = Object.fromEntries(keys.map((k) => [k, median(perRun.map((r) => r[k]))]));
    return {
      runs: perRun.length,
      runtime: "kilo (the real CLI from npm, @kilocode/cli-linux-x64)",
      model: "the stand-in gateway's scripted model (no model time)",
      settings: "wrangler dev --local with .dev.vars (TOWN_ALARM_ACTIVE_MS 2000), GASTOWN_ALLOW_LOCAL_GIT=1, a file:// rig",
      medians,
      per_run: perRun,
    };
  });
}

/** Prints `title`, then one line per `[label, key]` of `rows` with the median `medians[key]`. */
export function printMedians(title, medians, rows) {
  const f = (x) => (x == null ? "n/a" : `${Math.round(x)} ms`);
  console.log(`\n== ${title}; medians ==`);
  for (const [label, key] of rows) console.log(`${label.padEnd(48)} ${f(medians[key]).padStart(9)}`);
}

/** The table `npm run bench` prints. */
export function printAgentRuns(agent) {
  printMedians(`the agent's time to work: ${agent.runs} beads, the Kilo CLI, scripted model`, agent.medians, [
    ["sling answered", "sling_answer_ms"],
    ["worker: sling → dispatched", "worker_ms"],
    ["control server: dispatched → runtime running", "control_server_ms"],
    ["runtime: clone and branch", "clone_ms"],
    ["CLI start-up: kilo serve listening", "cli_listening_ms"],
    ["CLI start-up: session and prompt", "session_and_prompt_ms"],
    ["CLI start-up: prompt → first model call", "prompt_to_first_call_ms"],
    ["work: first model call → gt done", "work_ms"],
    ["total: sling → first model call", "sling_to_first_call_ms"],
    ["total: sling → done", "sling_to_done_ms"],
  ]);
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const agent = await measureAgentRuns();
  printAgentRuns(agent);
  console.log(JSON.stringify(agent.medians));
}

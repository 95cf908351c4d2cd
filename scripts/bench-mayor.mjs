#!/usr/bin/env node
// The mayor's time to answer, for `npm run bench` (and alone: `node scripts/bench-mayor.mjs`,
// with node_modules/.bin on PATH, after scripts/build.sh). The same world as the agent's
// (scripts/bench-agent.mjs: the worker with the development settings, the control server with
// the real Kilo CLI, the stand-in gateway's scripted model). BENCH_MAYOR_RUNS (default 3) towns;
// in each, two messages (`[script:mayor] reply …`: the mayor answers with `gt reply`):
//
//   cold   the town's first message: no container, no session. Split into
//            worker and container   message → the mayor's runtime runs (the loop's delivery,
//                                   the container's start with fresh tokens, the agent start)
//            CLI start-up           `kilo serve` listening, the session made and the prompt
//                                   sent, then the CLI's first model request
//            answer                 first model call → the reply in the transcript (the
//                                   script's `gt reply` through the shell tool)
//   warm   the next message, to the session waiting for it: message → first model call (the
//          loop's delivery to the running session), then → the reply.
//
// The points come from the transcript (the worker's clock), the runtime's marks in the mayor's
// log and the gateway's record of each call; all on this machine's clock. Medians over runs.
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { until } from "../tests/e2e/harness.mjs";
import { marks, median, printMedians, withBenchWorld } from "./bench-agent.mjs";

/** Runs the measurement; its figures (per run and medians). */
export async function measureMayorRuns({ runs = Number(process.env.BENCH_MAYOR_RUNS ?? 3) } = {}) {
  return withBenchWorld("mayor", async ({ as, control, newTown, requests }) => {
    const perRun = [];
    for (let i = 0; i < runs; i++) {
      const { town } = await newTown(`Bench mayor ${i + 1}`);
      /** Sends `text`; when the reply `expect` is in the transcript: the times that matter. */
      const ask = async (text, expect) => {
        const t0 = Date.now();
        const sent = await as("POST", `/api/towns/${town.id}/mayor/messages`, { text });
        const answered = Date.now();
        const reply = await until(`the mayor's reply ${expect}`, async () => {
          const t = await as("GET", `/api/towns/${town.id}/mayor/messages?after=${sent.seq}`);
          return t.messages.find((m) => m.role === "mayor" && m.text === expect) ?? null;
        }, 120_000, 50);
        const firstCall = Math.min(...(await requests(town.id)).filter((r) => r.at_ms >= t0 && r.tools.length).map((r) => r.at_ms));
        return { t0, answered, firstCall, replied: Date.parse(reply.created_at) };
      };
      const cold = await ask(`[script:mayor] reply cold ${i + 1}`, `cold ${i + 1}`);
      const mayor = (await as("GET", `/api/towns/${town.id}/mayor`)).agent_id;
      const m = marks(join(control.workdir, town.id, "agents", `${mayor}.log`));
      await until("the mayor waiting", async () => ((await as("GET", `/api/towns/${town.id}/mayor`)).status === "waiting" ? true : null), 60_000, 50);
      const warm = await ask(`[script:mayor] reply warm ${i + 1}`, `warm ${i + 1}`);
      const run = {
        message_answer_ms: cold.answered - cold.t0,
        cold_worker_and_container_ms: m.started - cold.t0,
        cold_cli_listening_ms: m["cli-listening"] - m.started,
        cold_session_and_prompt_ms: m["prompt-sent"] - m["cli-listening"],
        cold_prompt_to_first_call_ms: cold.firstCall - m["prompt-sent"],
        cold_answer_ms: cold.replied - cold.firstCall,
        cold_total_ms: cold.replied - cold.t0,
        warm_delivery_to_first_call_ms: warm.firstCall - warm.t0,
        warm_answer_ms: warm.replied - warm.firstCall,
        warm_total_ms: warm.replied - warm.t0,
      };
      perRun.push(run);
      console.log(`mayor run ${i + 1}/${runs}: ${JSON.stringify(run)}`);
      await as("POST", `/api/towns/${town.id}/stop`);
    }
    const keys = Object.keys(perRun[0] ?? {});
    return {
      runs: perRun.length,
      runtime: "kilo (the real CLI from npm, @kilocode/cli-linux-x64), mayor mode",
      model: "the stand-in gateway's scripted model (no model time)",
      settings: "wrangler dev --local with .dev.vars (TOWN_ALARM_ACTIVE_MS 2000)",
      medians: Object.fromEntries(keys.map((k) => [k, median(perRun.map((r) => r[k]))])),
      per_run: perRun,
    };
  });
}

/** The table `npm run bench` prints. */
export function printMayorRuns(mayor) {
  printMedians(`the mayor's time to answer: ${mayor.runs} towns, the Kilo CLI, scripted model`, mayor.medians, [
    ["message answered (202)", "message_answer_ms"],
    ["cold: message → runtime running", "cold_worker_and_container_ms"],
    ["cold: kilo serve listening", "cold_cli_listening_ms"],
    ["cold: session and prompt", "cold_session_and_prompt_ms"],
    ["cold: prompt → first model call", "cold_prompt_to_first_call_ms"],
    ["cold: first model call → reply stored", "cold_answer_ms"],
    ["cold total: message → reply", "cold_total_ms"],
    ["warm: message → first model call", "warm_delivery_to_first_call_ms"],
    ["warm: first model call → reply stored", "warm_answer_ms"],
    ["warm total: message → reply", "warm_total_ms"],
  ]);
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const mayor = await measureMayorRuns();
  printMayorRuns(mayor);
  console.log(JSON.stringify(mayor.medians));
}

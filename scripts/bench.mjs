#!/usr/bin/env node
// `npm run bench`: our release worker against the TypeScript peer (bench/peer: the same routes
// written the way the TypeScript original writes them) and against the floors (bench/floor: one
// DO round trip + one SQLite read, or + one SQLite upsert), driven by wrk on loopback.
//
// Both sides get the same seed (same user, org, town names, tokens). Each target runs for
// BENCH_SECONDS (default 5) in BENCH_ROUNDS rounds (default 3) after one warm-up; our run and the
// peer's run of a route are adjacent, and every other round runs the whole list backwards, so
// neither side always goes first. Figures are medians over the rounds.
//
// BENCH_MODE picks how the workers are served: "wrangler" (wrangler dev --local, through its
// local proxy), "direct" (workerd alone, through Miniflare's Node API) or "both" (default).
// The page-of-50 list measurements run once, in BENCH_LIST_MODE (default: the last mode): rigs
// at BENCH_ROWS (one town per size) and beads at BENCH_BEAD_ROWS (one town, grown to each size
// in turn); an empty list skips one.
//
// Beads are ours only: the peer does not implement them. `sling` (an issue on a rig) is measured
// against the write floor in a town of its own; its dispatch runs in that town's alarm, not in
// the request, and the control server's agents exit at once (GASTOWN_AGENT_COMMAND), so no agent
// works beside the measurements.
// The agent's time to work (scripts/bench-agent.mjs): BENCH_AGENT_RUNS (default 5; 0 skips it)
// beads worked by the real Kilo CLI against the scripted model, after every HTTP row; then the
// mayor's time to answer (scripts/bench-mayor.mjs): BENCH_MAYOR_RUNS (default 3; 0 skips it).
// Prints the tables and writes <BENCH_OUT>/<time>.json and <BENCH_OUT>/latest.json (default
// bench/results; a smoke run can write elsewhere).
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync, readFileSync, existsSync, statSync, rmSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { cpus, totalmem, tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, userToken, containerToken } from "./lib/jwt.mjs";
import { startWorkers } from "./lib/bench-workers.mjs";
import { startControlServer, client, secrets } from "../tests/e2e/harness.mjs";
import { measureAgentRuns, printAgentRuns } from "./bench-agent.mjs";
import { measureMayorRuns, printMayorRuns } from "./bench-mayor.mjs";
import { measureFanout, printFanout } from "./bench-streams.mjs";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP ?? 2);
const sizes = (name) => (process.env[name] ?? "1000,10000").split(",").filter(Boolean).map(Number);
const ROWS = sizes("BENCH_ROWS");
const BEAD_ROWS = sizes("BENCH_BEAD_ROWS");
const OUT_DIR = process.env.BENCH_OUT ?? join(ROOT, "bench", "results");
const MODE = process.env.BENCH_MODE ?? "both";
const MODES = MODE === "both" ? ["wrangler", "direct"] : [MODE];
const LIST_MODE = process.env.BENCH_LIST_MODE ?? MODES.at(-1);
const CONNECTIONS = 4; // two cores: wrk and workerd (and wrangler's proxy) share them; 4 keeps workerd busy without queueing in wrk
const MODE_LABEL = { wrangler: "through wrangler dev (local proxy + workerd)", direct: "workerd direct (Miniflare)" };

if (!MODES.every((m) => m in MODE_LABEL)) throw new Error(`BENCH_MODE must be wrangler, direct or both (got ${MODE})`);
if (!MODES.includes(LIST_MODE)) throw new Error(`BENCH_LIST_MODE ${LIST_MODE} is not among the modes run`);
if (![...ROWS, ...BEAD_ROWS].every((n) => Number.isInteger(n) && n > 0)) throw new Error("BENCH_ROWS and BENCH_BEAD_ROWS are lists of positive whole numbers");
if (BEAD_ROWS.some((n, i) => i > 0 && n <= BEAD_ROWS[i - 1])) throw new Error("BENCH_BEAD_ROWS must grow: one town is filled to each size in turn");

const AGENT_RUNS = Number(process.env.BENCH_AGENT_RUNS ?? 5);
const MAYOR_RUNS = Number(process.env.BENCH_MAYOR_RUNS ?? 3);
const NO_PEER_BEADS = "the TypeScript peer does not implement beads: ours only";
const NO_PEER_WRITES = "the TypeScript peer has no write routes: compared with the write floor";
const EVENTS_PER_BATCH = 50;
const FANOUT_SUBSCRIBERS = Number(process.env.BENCH_FANOUT_SUBSCRIBERS ?? 200);

function sh(cmd) {
  return spawnSync("bash", ["-c", cmd], { cwd: ROOT, stdio: "inherit" }).status;
}

function ensureWrk() {
  if (spawnSync("bash", ["-c", "command -v wrk"]).status === 0) return;
  console.log("installing wrk (Debian package)");
  if (sh("(apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk)) >/dev/null") !== 0) {
    throw new Error("could not install wrk");
  }
}

function buildFloor() {
  const out = join(ROOT, "bench", "floor", "build", "index.js");
  const src = join(ROOT, "bench", "floor", "src", "lib.rs");
  if (existsSync(out) && statSync(out).mtimeMs > statSync(src).mtimeMs) return;
  console.log("building the floor worker");
  if (sh("source scripts/env.sh && cd bench/floor && worker-build --release >/dev/null") !== 0) throw new Error("floor build failed");
}

const toMs = (value, unit) => Number(value) * ({ us: 0.001, ms: 1, s: 1000 }[unit] ?? 1);

/** CPU time (user + system, ms) a process has used so far; null when it cannot be read. */
function cpuMs(pid) {
  if (!pid) return null;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(fields[11]) + Number(fields[12])) * (1000 / 100); // clock ticks of 10 ms
  } catch {
    return null;
  }
}

function wrk(url, { headers = [], script, seconds = SECONDS, pid } = {}) {
  const args = ["-t1", `-c${CONNECTIONS}`, `-d${seconds}s`, "--latency", "--timeout", "5s"];
  for (const h of headers) args.push("-H", h);
  if (script) args.push("-s", script);
  args.push(url);
  const cpuBefore = cpuMs(pid);
  const out = execFileSync("wrk", args, { encoding: "utf8" });
  const cpuAfter = cpuMs(pid);
  const pct = (p) => {
    const m = out.match(new RegExp(`\\s${p}%\\s+([\\d.]+)(us|ms|s)`));
    return m ? toMs(m[1], m[2]) : null;
  };
  const non2xx = Number(out.match(/Non-2xx or 3xx responses:\s+(\d+)/)?.[1] ?? 0);
  const errors = out.match(/Socket errors:.*$/m)?.[0] ?? null;
  const requests = Number(out.match(/(\d+) requests in/)?.[1] ?? 0);
  // The worker's workerd process's CPU per request (direct mode, where each worker has its
  // own): steadier than req/s when wrk and workerd share two cores.
  const cpu_us_per_req = cpuBefore != null && cpuAfter != null && requests ? ((cpuAfter - cpuBefore) * 1000) / requests : null;
  return { rps: Number(out.match(/Requests\/sec:\s+([\d.]+)/)[1]), p50_ms: pct(50), p99_ms: pct(99), requests, non2xx, errors, cpu_us_per_req };
}

const scripts = [];
function luaScript(name, method, body, headers) {
  const file = join(tmpdir(), `gastown-bench-${process.pid}-${name}.lua`);
  const lines = [`wrk.method = "${method}"`];
  if (body) lines.push(`wrk.body = [[${body}]]`);
  for (const [k, v] of Object.entries(headers)) lines.push(`wrk.headers["${k}"] = "${v}"`);
  writeFileSync(file, lines.join("\n") + "\n");
  scripts.push(file);
  return file;
}

/**
 * A wrk script posting agent events: each request a batch of EVENTS_PER_BATCH new events (a run
 * of its own per wrk invocation, numbered on), so every event is stored, none a duplicate.
 */
function eventsScript(name, headers) {
  const file = join(tmpdir(), `gastown-bench-${process.pid}-${name}.lua`);
  const lines = [`wrk.method = "POST"`];
  for (const [k, v] of Object.entries(headers)) lines.push(`wrk.headers["${k}"] = "${v}"`);
  lines.push(
    `local run = os.time()`,
    `local n = 0`,
    `request = function()`,
    `  local parts = {}`,
    `  for i = 1, ${EVENTS_PER_BATCH} do`,
    `    n = n + 1`,
    `    parts[i] = '{"seq":' .. n .. ',"at_ms":1700000000000,"kind":"output","text":"bench line ' .. n .. ' of an agent at work"}'`,
    `  end`,
    `  return wrk.format(nil, nil, nil, '{"run":' .. run .. ',"events":[' .. table.concat(parts, ",") .. ']}')`,
    `end`,
  );
  writeFileSync(file, lines.join("\n") + "\n");
  scripts.push(file);
  return file;
}

async function pool(items, concurrency, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

const median = (xs) => {
  const s = xs.filter((x) => x != null).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// wrangler's local proxy and workerd close idle keep-alive connections (for instance during a
// wrk run) and now and then drop one under load; a seed request that meets a dropped socket is
// retried (a retried create may have landed: callers accept the duplicate or the 409).
let seedRetries = 0;
const DROPPED = /^(UND_ERR|EPIPE$|ECONNRESET$)/;
function retrying(base) {
  const raw = client(base);
  return async (...args) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await raw(...args);
      } catch (e) {
        if (attempt >= 5 || !DROPPED.test(String(e.cause?.code ?? ""))) throw e;
        seedRetries++;
      }
    }
  };
}

async function expect2xx(promise, what) {
  const res = await promise;
  if (res.status < 200 || res.status > 299) throw new Error(`${what}: ${res.status} ${res.text}`);
  return res.body;
}

async function expect(status, promise, what) {
  const res = await promise;
  if (res.status !== status) throw new Error(`${what}: ${res.status} ${res.text}`);
  return res.body;
}

const range = (from, to) => Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);

// The same seed for both sides: one user who is a member of one org, a personal town, five org
// towns. Ours also gets a rig and a started container, for its write routes.
const USER = "bench-user";
const ORG = "bench-org";
const ORG_TOWNS = 5;
const auth = (t) => `authorization: Bearer ${t}`;

async function seed(workers) {
  const uTok = userToken(secrets.NEXTAUTH_SECRET, USER, { orgs: [{ orgId: ORG, role: "member" }] });
  const side = async (call) => {
    const town = await expect(201, call("POST", `/api/users/${USER}/towns`, { token: uTok, body: { name: "bench" } }), "seed town");
    for (let i = 0; i < ORG_TOWNS; i++) {
      await expect(201, call("POST", `/api/orgs/${ORG}/towns`, { token: uTok, body: { name: `org town ${i}` } }), "seed org town");
    }
    return town;
  };
  const ours = retrying(() => workers.ours.url);
  const oursTown = await side(ours);
  const peerTown = await side(retrying(() => workers.peer.url));
  const rig = await expect(201, ours("POST", `/api/users/${USER}/rigs`, { token: uTok, body: { town_id: oursTown.id, name: "app", git_url: "https://github.com/acme/app" } }), "seed rig");
  await expect(200, ours("POST", `/api/towns/${oursTown.id}/container/start`, { token: uTok }), "container start");
  // Generation 1: the town's first container start (container tokens carry their generation).
  const cTok = containerToken(secrets.GASTOWN_JWT_SECRET, oursTown.id, USER, { extra: { gen: 1 } });
  // Heartbeats are honoured only for agents the town registered: the mayor reports in.
  const mayor = await expect(200, ours("POST", `/api/towns/${oursTown.id}/mayor/ensure`, { token: uTok }), "mayor");

  // The sling load gets a town of its own: the issues it piles up, and their dispatch, touch no
  // other row's town. Dispatch runs in that town's alarm, not in the request; at most one of its
  // agents works at a time (max_polecats_per_rig 1), and the control server's agent command
  // exits at once. After the rounds the town is stopped, which ends its alarm work.
  const slingTown = await expect(201, ours("POST", `/api/users/${USER}/towns`, { token: uTok, body: { name: "bench sling" } }), "seed sling town");
  const slingRig = await expect(201, ours("POST", `/api/users/${USER}/rigs`, { token: uTok, body: { town_id: slingTown.id, name: "app", git_url: "https://github.com/acme/app" } }), "seed sling rig");
  await expect2xx(ours("PATCH", `/api/towns/${slingTown.id}/config`, { token: uTok, body: { max_polecats_per_rig: 1 } }), "sling town config");
  const sling = { rig_id: slingRig.id, title: "bench bead", body: "slung by npm run bench" };
  // One sling through the client first, so a build without the route fails here, loudly.
  await expect(201, ours("POST", `/api/towns/${slingTown.id}/sling`, { token: uTok, body: sling }), "sling");
  const finish = async () => {
    const health = await ours("GET", `/api/internal/towns/${slingTown.id}/health`, { headers: { "x-internal-api-key": secrets.INTERNAL_API_KEY } });
    await expect2xx(ours("POST", `/api/towns/${slingTown.id}/stop`, { token: uTok }), "stop the sling town");
    return { town_id: slingTown.id, health_status: health.status, health: health.body ?? health.text };
  };

  const paired = (key, name, kind, path, headers = []) => ({
    key, name, kind,
    ours: { url: workers.ours.url + path(oursTown), headers, pid: workers.ours.pid },
    peer: { url: workers.peer.url + path(peerTown), headers, pid: workers.peer.pid },
  });
  const targets = [
    paired("health", "GET /health", "public", () => "/health"),
    paired("town_read", "personal town read", "read", (t) => `/api/users/${USER}/towns/${t.id}`, [auth(uTok)]),
    paired("org_list", "org towns list (member)", "read", () => `/api/orgs/${ORG}/towns`, [auth(uTok)]),
    { key: "config_patch", name: "PATCH config + container sync", kind: "write", no_peer: NO_PEER_WRITES,
      ours: { url: `${workers.ours.url}/api/towns/${oursTown.id}/config`, pid: workers.ours.pid,
        script: luaScript("patch", "PATCH", '{"default_model":"bench-model"}', { authorization: `Bearer ${uTok}`, "content-type": "application/json" }) } },
    // The agent heartbeat callback, POST /api/towns/:townId/rigs/:rigId/agents/:agentId/heartbeat
    // with the town's container token, for the mayor.
    { key: "heartbeat", name: "agent heartbeat callback", kind: "write", no_peer: NO_PEER_WRITES,
      ours: { url: `${workers.ours.url}/api/towns/${oursTown.id}/rigs/${rig.id}/agents/${mayor.id}/heartbeat`, pid: workers.ours.pid,
        script: luaScript("heartbeat", "POST", null, { authorization: `Bearer ${cTok}` }) } },
    // An agent's events as the control server sends them, in batches of EVENTS_PER_BATCH: each
    // stored (none a duplicate), the agent's oldest beyond AGENT_EVENTS_CAP dropped.
    { key: "events_ingest", name: `POST agent events (${EVENTS_PER_BATCH} a batch)`, kind: "ingest", no_peer: NO_PEER_WRITES, events_per_request: EVENTS_PER_BATCH,
      ours: { url: `${workers.ours.url}/api/towns/${oursTown.id}/rigs/${rig.id}/agents/${mayor.id}/events`, pid: workers.ours.pid,
        script: eventsScript("events", { authorization: `Bearer ${cTok}`, "content-type": "application/json" }) } },
    { key: "sling", name: "POST sling (issue on a rig)", kind: "write", no_peer: NO_PEER_BEADS,
      ours: { url: `${workers.ours.url}/api/towns/${slingTown.id}/sling`, pid: workers.ours.pid,
        script: luaScript("sling", "POST", JSON.stringify(sling), { authorization: `Bearer ${uTok}`, "content-type": "application/json" }) } },
    { key: "read_floor", name: "read floor (1 DO round trip + 1 SQLite read)", kind: "floor",
      ours: { url: `${workers.floor.url}/`, pid: workers.floor.pid } },
    { key: "write_floor", name: "write floor (1 DO round trip + 1 SQLite upsert)", kind: "floor",
      ours: { url: `${workers.floor.url}/write`, script: luaScript("floor-write", "POST", null, {}), pid: workers.floor.pid } },
  ];
  const fanout = () => measureFanout({
    url: workers.ours.url, userToken: uTok, containerToken: cTok, townId: oursTown.id, rigId: rig.id, agentId: mayor.id, subscribers: FANOUT_SUBSCRIBERS,
  });
  return { targets, finish, fanout };
}

async function measure(mode, workers) {
  const { targets, finish, fanout } = await seed(workers);
  const runs = targets.flatMap((t) => ["ours", "peer"].filter((side) => t[side]).map((side) => ({ t, side })));
  console.log(`${MODE_LABEL[mode]}: warm-up ${WARMUP_SECONDS} s per target, then ${ROUNDS} rounds × ${SECONDS} s`);
  for (const { t, side } of runs) wrk(t[side].url, { ...t[side], seconds: WARMUP_SECONDS });
  const samples = new Map(runs.map((r) => [r, []]));
  for (let round = 0; round < ROUNDS; round++) {
    // Odd rounds run the list backwards: the peer goes before ours, and the order of routes flips.
    const order = round % 2 ? [...runs].reverse() : runs;
    for (const r of order) samples.get(r).push(wrk(r.t[r.side].url, r.t[r.side]));
    console.log(`  round ${round + 1}/${ROUNDS} done`);
  }
  const slingTown = await finish();
  // The streams' fan-out, after the wrk rounds so nothing else runs beside it.
  const streams = await fanout();
  const summary = (r) => {
    const s = samples.get(r);
    return {
      rps: median(s.map((x) => x.rps)), p50_ms: median(s.map((x) => x.p50_ms)), p99_ms: median(s.map((x) => x.p99_ms)),
      cpu_us_per_req: s.every((x) => x.cpu_us_per_req != null) ? median(s.map((x) => x.cpu_us_per_req)) : null,
      non2xx: s.reduce((n, x) => n + x.non2xx, 0), errors: s.map((x) => x.errors).filter(Boolean), runs: s,
    };
  };
  const rows = targets.map((t) => {
    const [ours, peer] = ["ours", "peer"].map((side) => runs.find((r) => r.t === t && r.side === side)).map((r) => r && summary(r));
    return { key: t.key, name: t.name, kind: t.kind, ours, peer: peer ?? null, ...(t.no_peer && { no_peer: t.no_peer }) };
  });
  const row = (key) => rows.find((r) => r.key === key);
  for (const r of rows) {
    if (r.peer) {
      r.vs_peer = { rps: r.ours.rps / r.peer.rps, p50: r.ours.p50_ms / r.peer.p50_ms, p99: r.ours.p99_ms / r.peer.p99_ms };
      if (r.ours.cpu_us_per_req && r.peer.cpu_us_per_req) r.vs_peer.cpu = r.ours.cpu_us_per_req / r.peer.cpu_us_per_req;
    }
    const floor = r.kind === "write" ? row("write_floor") : r.kind === "read" ? row("read_floor") : null;
    if (floor) r.vs_floor = { floor: floor.key, rps: r.ours.rps / floor.ours.rps, p50: r.ours.p50_ms / floor.ours.p50_ms, p99: r.ours.p99_ms / floor.ours.p99_ms };
  }
  const reads = rows.filter((r) => r.kind === "read");
  const writes = rows.filter((r) => r.kind === "write");
  const targets_met = {
    do_reads_rps_at_least_1_2_peer: reads.every((r) => r.vs_peer.rps >= 1.2),
    do_reads_p50_at_most_0_85_peer: reads.every((r) => r.vs_peer.p50 <= 0.85),
    health_rps_at_least_1_0_peer: row("health").vs_peer.rps >= 1.0,
    writes_rps_at_least_0_8_write_floor: writes.every((r) => r.vs_floor.rps >= 0.8),
    every_answer_2xx: rows.every((r) => r.ours.non2xx === 0 && (!r.peer || r.peer.non2xx === 0)),
  };
  // What the sling town's alarm did meanwhile (dispatches, failures, the breaker), as the
  // internal health route shows it, read before the town was stopped.
  const sling = row("sling");
  sling.note = "dispatch runs in the town's alarm, not in the request; the sling load has a town of its own, stopped after the rounds";
  sling.beads_slung = sling.ours.runs.reduce((n, x) => n + x.requests, 0);
  sling.town = slingTown;
  // Events stored per second against the floor's single-row writes per second.
  const ingest = row("events_ingest");
  const writeFloor = row("write_floor").ours;
  ingest.vs_floor = {
    floor: "write_floor",
    events_per_s: ingest.ours.rps * EVENTS_PER_BATCH,
    floor_writes_per_s: writeFloor.rps,
    events_per_s_vs_floor_writes: (ingest.ours.rps * EVENTS_PER_BATCH) / writeFloor.rps,
    rps: ingest.ours.rps / writeFloor.rps,
    p50: ingest.ours.p50_ms / writeFloor.p50_ms,
  };
  return { label: MODE_LABEL[mode], rows, targets_met, streams };
}

/**
 * The `&after=…` cursor of the page that starts `depth` rows into the list at `path` (oldest
 * first), found by paging through it 500 at a time.
 */
async function cursorAt(call, path, token, depth) {
  let after = "";
  let seen = 0;
  while (seen < depth) {
    const page = await call("GET", `${path}?limit=500${after}`, { token });
    if (page.status !== 200 || !Array.isArray(page.body) || !page.body.length) {
      throw new Error(`paging ${path} at ${seen}: ${page.status} ${page.text.slice(0, 500)}`);
    }
    const take = page.body.slice(0, Math.min(500, depth - seen));
    seen += take.length;
    after = `&after=${take.at(-1).id}`;
  }
  return after;
}

/**
 * Page of 50 at the start of the list at `url` and at the cursor `after`: three wrk runs each,
 * alternating first and deep page (one run swings by ±30 %), and the run with the median p50.
 */
function pageOf50(url, after, token) {
  const base = `${url}?limit=50`;
  const runs = { first: [], deep: [] };
  for (let i = 0; i < 3; i++) {
    runs.first.push(wrk(base, { headers: [auth(token)] }));
    runs.deep.push(wrk(base + after, { headers: [auth(token)] }));
  }
  const mid = (rs) => [...rs].sort((a, b) => a.p50_ms - b.p50_ms)[1];
  return { first_page: mid(runs.first), deep_page: mid(runs.deep) };
}

// Page of 50 at growing table sizes: one town per size, filled with rigs.
async function measureLists(workers) {
  const lists = [];
  const call = retrying(() => workers.ours.url);
  for (const rows of ROWS) {
    const owner = `bench-list-${rows}`;
    const tok = userToken(secrets.NEXTAUTH_SECRET, owner);
    const t = await expect(201, call("POST", `/api/users/${owner}/towns`, { token: tok, body: { name: `list ${rows}` } }), "list town");
    const started = Date.now();
    await pool(range(0, rows), 8, async (i) => {
      const res = await call("POST", `/api/users/${owner}/rigs`, { token: tok, body: { town_id: t.id, name: `r${i}`, git_url: "https://github.com/acme/r" } });
      // A retried create whose first attempt landed finds its name taken.
      if (res.status !== 201 && res.status !== 409) throw new Error(`seed rig ${i}: ${res.status} ${res.text}`);
    });
    const seedSeconds = (Date.now() - started) / 1000;
    const path = `/api/users/${owner}/towns/${t.id}/rigs`;
    // The cursor of a page 90 % of the way through the table.
    const after = await cursorAt(call, path, tok, Math.floor(rows * 0.9));
    const { first_page: first, deep_page: deep } = pageOf50(workers.ours.url + path, after, tok);
    lists.push({ rows, seed_seconds: seedSeconds, first_page: first, deep_page: deep });
    console.log(`  page of 50 at ${rows} rows: first p50 ${first.p50_ms} ms, deep p50 ${deep.p50_ms} ms (seeded in ${seedSeconds.toFixed(1)} s)`);
  }
  return lists;
}

// Page of 50 beads (GET /api/towns/:t/beads) at growing table sizes: one town, filled with
// message beads (no rig, so nothing to dispatch) up to each size in turn, the way the rig
// lists are measured. A retried create may have landed twice: a size may be a few rows over.
async function measureBeadLists(workers) {
  const lists = [];
  const call = retrying(() => workers.ours.url);
  const owner = "bench-beads";
  const tok = userToken(secrets.NEXTAUTH_SECRET, owner);
  const t = await expect(201, call("POST", `/api/users/${owner}/towns`, { token: tok, body: { name: "bead list" } }), "bead list town");
  const path = `/api/towns/${t.id}/beads`;
  let seeded = 0;
  for (const rows of BEAD_ROWS) {
    const started = Date.now();
    await pool(range(seeded, rows), 8, async (i) => {
      const res = await call("POST", path, { token: tok, body: { type: "message", title: `bench message ${i}` } });
      if (res.status !== 201) throw new Error(`seed bead ${i}: ${res.status} ${res.text}`);
    });
    const seedSeconds = (Date.now() - started) / 1000;
    const added = rows - seeded;
    seeded = rows;
    // The cursor of a page 90 % of the way through the table.
    const after = await cursorAt(call, path, tok, Math.floor(rows * 0.9));
    const { first_page: first, deep_page: deep } = pageOf50(workers.ours.url + path, after, tok);
    lists.push({ rows, added, seed_seconds: seedSeconds, first_page: first, deep_page: deep });
    console.log(`  page of 50 beads at ${rows} beads: first p50 ${first.p50_ms} ms, deep p50 ${deep.p50_ms} ms (${added} seeded in ${seedSeconds.toFixed(1)} s)`);
  }
  return lists;
}

ensureWrk();
buildFloor();
const began = Date.now();
const results = { modes: {}, lists: [], bead_lists: [] };
// Dispatch in the sling town starts agents through this control server; here they exit at once
// (an older control server, without agents, ignores the variable).
const agentCommand = spawnSync("bash", ["-c", "type -P false"], { encoding: "utf8" }).stdout.trim() || "/bin/false";
process.env.GASTOWN_AGENT_COMMAND = agentCommand;
const control = await startControlServer();
try {
  for (const mode of MODES) {
    console.log(`\nstarting ours, the peer and the floor ${MODE_LABEL[mode]}`);
    const modeBegan = Date.now();
    const workers = await startWorkers(mode, { controlUrl: control.url });
    try {
      results.modes[mode] = await measure(mode, workers);
      results.modes[mode].seconds = Math.round((Date.now() - modeBegan) / 1000);
      if (mode === LIST_MODE && ROWS.length) {
        results.lists_mode = mode;
        try {
          results.lists = await measureLists(workers);
        } catch (e) {
          // Keep the figures already measured; the run still fails.
          console.error(`page-of-50 measurement failed: ${e.stack ?? e}`);
          results.lists_error = String(e);
          process.exitCode = 1;
        }
      }
      if (mode === LIST_MODE && BEAD_ROWS.length) {
        results.bead_lists_mode = mode;
        results.bead_lists_note = NO_PEER_BEADS;
        try {
          results.bead_lists = await measureBeadLists(workers);
        } catch (e) {
          console.error(`page-of-50 beads measurement failed: ${e.stack ?? e}`);
          results.bead_lists_error = String(e);
          process.exitCode = 1;
        }
      }
    } finally {
      await workers.stop();
    }
  }
} finally {
  control.stop();
  for (const f of scripts) rmSync(f, { force: true });
}
if (seedRetries) console.log(`(retried ${seedRetries} dropped connections while seeding)`);

// The agent's time to work (the real Kilo CLI, the scripted model), after the HTTP rows so that
// no agent runs beside them.
if (AGENT_RUNS > 0) {
  try {
    results.agent = await measureAgentRuns({ runs: AGENT_RUNS });
  } catch (e) {
    console.error(`agent runs failed: ${e.stack ?? e}`);
    results.agent_error = String(e);
    process.exitCode = 1;
  }
}
if (MAYOR_RUNS > 0) {
  try {
    results.mayor = await measureMayorRuns({ runs: MAYOR_RUNS });
  } catch (e) {
    console.error(`mayor runs failed: ${e.stack ?? e}`);
    results.mayor_error = String(e);
    process.exitCode = 1;
  }
}

const wasm = readFileSync(join(ROOT, "build", "index_bg.wasm"));
results.wasm = { raw_bytes: wasm.length, gzip_bytes: gzipSync(wasm, { level: 9 }).length };
results.machine = { cpus: cpus().length, cpu: cpus()[0]?.model, memory_gib: Math.round(totalmem() / 2 ** 30), node: process.version };
const version = (pkg) => JSON.parse(readFileSync(join(ROOT, "node_modules", pkg, "package.json"), "utf8")).version;
results.settings = {
  seconds_per_run: SECONDS, rounds: ROUNDS, warmup_seconds: WARMUP_SECONDS, connections: CONNECTIONS, tool: "wrk -t1",
  list_rows: ROWS, bead_list_rows: BEAD_ROWS, agent_command: agentCommand, agent_runs: AGENT_RUNS,
  modes: Object.fromEntries(MODES.map((m) => [m, MODE_LABEL[m]])),
  wrangler: version("wrangler"), miniflare: version("miniflare"), workerd: version("workerd"),
  peer: { hono: version("hono"), jsonwebtoken: version("jsonwebtoken"), zod: version("zod") },
};
results.at = new Date().toISOString();
results.run_seconds = Math.round((Date.now() - began) / 1000);

const fmt = (n, d = 1) => (n == null || Number.isNaN(n) ? "n/a" : n.toFixed(d));
const cols = (x) => `${fmt(x.rps, 0).padStart(8)} ${fmt(x.p50_ms, 2).padStart(7)} ${fmt(x.p99_ms, 2).padStart(7)}`;
const ratios = (q) => `${fmt(q.rps, 2).padStart(6)} ${fmt(q.p50, 2).padStart(6)}`;
const bad = (...sides) => (sides.some((x) => x && x.non2xx > 0) ? "  NON-2xx ANSWERS!" : "");
const head = (title, other) =>
  `${title.padEnd(34)} ${"ours r/s".padStart(8)} ${"p50 ms".padStart(7)} ${"p99 ms".padStart(7)} | ${`${other} r/s`.padStart(9)} ${"p50 ms".padStart(7)} ${"p99 ms".padStart(7)} | ${"rps x".padStart(6)} ${"p50 x".padStart(6)}`;
for (const [mode, m] of Object.entries(results.modes)) {
  const byKey = (key) => m.rows.find((r) => r.key === key);
  console.log(`\n== ${m.label}: medians of ${ROUNDS} rounds × ${SECONDS} s, wrk 1 thread, ${CONNECTIONS} connections ==`);
  console.log(head("vs the TypeScript peer", "peer"));
  for (const r of m.rows.filter((r) => r.peer)) {
    console.log(`${r.name.padEnd(34)} ${cols(r.ours)} | ${" ".repeat(1)}${cols(r.peer)} | ${ratios(r.vs_peer)}${bad(r.ours, r.peer)}`);
  }
  const cpuRows = m.rows.filter((r) => r.ours.cpu_us_per_req != null);
  if (cpuRows.length) {
    console.log(`workerd CPU per request (µs, median; the worker's own workerd process): ` +
      cpuRows.map((r) => `${r.key} ${fmt(r.ours.cpu_us_per_req, 0)}${r.peer?.cpu_us_per_req ? ` vs peer ${fmt(r.peer.cpu_us_per_req, 0)} (${fmt(r.vs_peer.cpu, 2)}×)` : ""}`).join("; "));
  }
  for (const [kind, floorKey] of [["write", "write_floor"], ["read", "read_floor"]]) {
    const floor = byKey(floorKey);
    console.log(head(`vs the ${kind} floor`, "floor"));
    for (const r of m.rows.filter((r) => r.kind === kind)) {
      console.log(`${r.name.padEnd(34)} ${cols(r.ours)} | ${" ".repeat(1)}${cols(floor.ours)} | ${ratios(r.vs_floor)}${bad(r.ours, floor.ours)}`);
    }
  }
  console.log(`floors: ${m.rows.filter((r) => r.kind === "floor").map((r) => r.name).join("; ")}`);
  console.log(`not compared with the peer: ${m.rows.filter((r) => r.no_peer).map((r) => `${r.name} (${r.no_peer})`).join("; ")}`);
  const ingest = byKey("events_ingest");
  console.log(`events ingest: ${fmt(ingest.vs_floor.events_per_s, 0)} events/s in batches of ${EVENTS_PER_BATCH} (${fmt(ingest.ours.rps, 0)} batches/s, p50 ${fmt(ingest.ours.p50_ms, 2)} ms) = ${fmt(ingest.vs_floor.events_per_s_vs_floor_writes, 1)}× the write floor's ${fmt(ingest.vs_floor.floor_writes_per_s, 0)} single-row writes/s${bad(ingest.ours)}`);
  if (m.streams) printFanout(m.streams);
  const sling = byKey("sling");
  const h = sling.town.health;
  const dispatch = typeof h === "object" && h ? `; its alarm meanwhile: ${h.dispatches} dispatches, ${h.dispatch_failures} failed, ${h.stalls} stalls` : "";
  console.log(`sling: ${sling.beads_slung} issues slung in the measured runs${dispatch}; ${sling.note}`);
  console.log(`targets (${mode}): ${JSON.stringify(m.targets_met)}`);
}
const [small, large] = results.lists;
if (small && large) {
  results.list_ratio_first_page = large.first_page.p50_ms / small.first_page.p50_ms;
  results.list_ratio_deep_page = large.deep_page.p50_ms / small.deep_page.p50_ms;
  console.log(`\npage of 50 (${MODE_LABEL[results.lists_mode]}), p50 at ${large.rows} rows / at ${small.rows} rows: first page ${fmt(results.list_ratio_first_page, 2)}, deep page ${fmt(results.list_ratio_deep_page, 2)}`);
}
// Beads: the smallest size against the largest (by default 1 000 and 10 000).
const [fewBeads, manyBeads] = results.bead_lists.length >= 2 ? [results.bead_lists[0], results.bead_lists.at(-1)] : [];
if (fewBeads && manyBeads) {
  results.bead_list_ratio_first_page = manyBeads.first_page.p50_ms / fewBeads.first_page.p50_ms;
  results.bead_list_ratio_deep_page = manyBeads.deep_page.p50_ms / fewBeads.deep_page.p50_ms;
  console.log(`page of 50 beads (${MODE_LABEL[results.bead_lists_mode]}, ours only), p50 at ${manyBeads.rows} beads / at ${fewBeads.rows} beads: first page ${fmt(results.bead_list_ratio_first_page, 2)}, deep page ${fmt(results.bead_list_ratio_deep_page, 2)} (target ≤ 1.3)`);
}
console.log(`release wasm: ${results.wasm.raw_bytes} bytes raw, ${results.wasm.gzip_bytes} bytes gzip`);
if (results.agent) printAgentRuns(results.agent);
if (results.mayor) printMayorRuns(results.mayor);

results.targets_met = {
  ...Object.fromEntries(Object.entries(results.modes).map(([mode, m]) => [mode, m.targets_met])),
  wasm_gzip_at_most_1_mib: results.wasm.gzip_bytes <= 1024 * 1024,
  page_of_50_at_10k_at_most_1_3_of_1k: small && large ? results.list_ratio_first_page <= 1.3 && results.list_ratio_deep_page <= 1.3 : null,
  bead_page_of_50_at_10k_at_most_1_3_of_1k: fewBeads && manyBeads ? results.bead_list_ratio_first_page <= 1.3 && results.bead_list_ratio_deep_page <= 1.3 : null,
};
console.log("targets:", JSON.stringify(results.targets_met));
console.log(`run time ${results.run_seconds} s`);
mkdirSync(OUT_DIR, { recursive: true });
const json = JSON.stringify(results, null, 2) + "\n";
writeFileSync(join(OUT_DIR, `${results.at.replace(/[:.]/g, "-")}.json`), json);
writeFileSync(join(OUT_DIR, "latest.json"), json);

#!/usr/bin/env node
// `npm run soak -- --minutes N`: proves, on one machine, that no running agent ever sees an
// expired credential and that no acknowledged work is lost, across every restart the platform
// can do. The real worker (`wrangler dev --local`, its own persist dir and port), one control
// server (`gastown-control-debug --worker-url`), the stand-in gateway and the GitHub stand-in,
// with every token compressed to about a minute (container and gateway tokens, GitHub
// installation tokens; a git reuse margin of 15 s), so an hour of refreshes passes in minutes:
//
// * towns (3) on a GitHub App installation's repository, each with simulated agents (5) that
//   call back every second as a real agent does: each call reads the container token from
//   `<workdir>/<town>/.container-token` at that moment and posts the heartbeat; every few
//   seconds one asks a git token, alternately through git itself (`git credential fill` with
//   the town's gitconfig, so git runs the real credential helper with the agent's env) and
//   through the worker's git-token route with the file's token, and the token it got is tried
//   at the GitHub stand-in; every second one calls the stand-in gateway with the `KILO_JWT` of
//   `.env.gateway`;
// * real work: beads slung to each town at a steady pace, worked by the demo agent (clone and
//   push through the credential helper, a model call, `done`);
// * chaos, spread over the run: the control server SIGKILLed and started again on the same port
//   and workdir; the worker runtime SIGKILLed (its whole process group) and started again on the
//   same port and persist dir; a town left quiet until its container is stopped for idleness,
//   then brought back by new work; a town's container stopped through the control server's
//   `/stop` (as if it died), then given new work; a container-token rotation forced by the
//   owner (`POST /api/towns/:id/container/refresh-token`).
//
// The report counts (1) 401s any agent saw (worker callbacks, git tokens, the gateway, the
// git host), and credentials an agent held past their `exp` (the worker's verifiers allow 60 s
// of clock skew, which would hide a token that lapsed); (2) acknowledged beads lost or closed
// twice; (3) beads dispatched twice at once (from their events, and from the agent processes
// seen running); (4) requests refused wrongly (any other error to a request that should have
// succeeded; while a process is down its requests are "unreachable", not failures); (5) the
// refresh traffic per town-hour. A non-zero (1)-(4) exits 1; the report names the first
// offending request (time, method, path, status, body, and the token's exp/gen, never the
// token). Text on stdout, JSON in bench/results/soak-latest.json (or --out).
//
// tests/e2e/soak.mjs runs a short profile of the same `soak()` in `npm test`.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT } from "./lib/jwt.mjs";
import {
  freePort, makePersistDir, removePersistDir, migrateD1, startControlServer, startGateway, startWorker, client, sleep, killWorkingIn,
} from "../tests/e2e/harness.mjs";
import { freshUser, tokenFor, registerAgent, installedTownWithRig, internalKey, startDevPlatforms } from "../tests/e2e/fixtures.mjs";

/** The full run's settings; `--minutes`, `--towns`, `--agents` and `--out` change them. */
export const DEFAULTS = {
  minutes: 30,
  towns: 3,
  agentsPerTown: 5,
  /** Lifetime of container, gateway and GitHub installation tokens (seconds). */
  tokenTtlS: 60,
  /** GIT_TOKEN_REFRESH_MARGIN_S: the worker renews, and the helper stops reusing, below this. */
  gitMarginS: 15,
  /** CONTAINER_TOKEN_GRACE_MS: how long a rotated-away generation still calls back. */
  tokenGraceMs: 10_000,
  /** Each simulated agent's callback period. */
  callbackEveryMs: 1_000,
  /** Per town: one agent asks a git token this often. */
  gitEveryMs: 3_000,
  /** Per town: one agent calls the gateway this often. */
  gatewayEveryMs: 1_000,
  /** Per town: a bead is slung every [min, max] ms. */
  slingEveryMs: [20_000, 30_000],
  /** CONTAINER_IDLE_STOP_MS (above the sling period, so only a town left quiet idles). */
  idleStopMs: 45_000,
  /** AGENT_STALL_MS (above a worker restart plus a heartbeat period). */
  stallMs: 45_000,
  /** TOWN_ALARM_INTERVAL_MS and TOWN_ALARM_ACTIVE_MS. */
  alarmMs: 2_000,
  activeAlarmMs: 1_000,
  /** GATEWAY_SELF_REFRESH_MS and the control server's --gateway-refresh-ms (null: half the lifetime). */
  gatewaySelfRefreshMs: null,
  /** One round of chaos (one of each kind) per this many minutes. */
  chaosRoundMinutes: 5,
  /**
   * Whether a control-server kill takes its agents too (true: the container's end, as in
   * production, where the server's death ends the container). False leaves them running as
   * orphans that still call back, a crash of the server alone.
   */
  controlKillTakesAgents: true,
  /** After the run, how long beads may take to finish (no chaos meanwhile). */
  drainMs: 180_000,
  out: "bench/results/soak-latest.json",
};

/** The short profile `npm test` runs: every chaos kind once in about two and a half minutes. */
export const SHORT = {
  minutes: 2.5,
  // A little below the worker's re-mint threshold (half the lifetime): the container's own
  // refresh always comes first, as it does whenever it wins the race under the defaults (where
  // the two are equal and their phase decides). Deterministic, so the short run always takes the
  // path where the container refreshed its gateway token itself before a restart.
  gatewaySelfRefreshMs: 24_000,
  slingEveryMs: [12_000, 18_000],
  idleStopMs: 30_000,
  stallMs: 30_000,
  chaosRoundMinutes: 5,
  drainMs: 150_000,
  out: null,
};

const CHAOS_KINDS = ["rotate", "control_kill", "container_stop", "worker_kill", "idle_stop"];
const HAND_BACK = new Set(["dispatch_failed", "stalled", "reopened", "done", "in_review", "closed", "failed", "merged"]);
const CLOSING = new Set(["done", "closed", "merged"]);
/** After a process is back, requests that began while it was down may still fail this long. */
const RECOVERY_GRACE_MS = 5_000;
const REQUEST_TIMEOUT_MS = 15_000;
/** Failures kept in full per kind (all are counted). */
const KEEP = 20;

const nowS = () => Math.floor(Date.now() / 1000);
const iso = (ms) => new Date(ms).toISOString();
const rand = ([min, max]) => min + Math.floor(Math.random() * (max - min + 1));
const fmtMs = (ms) => {
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
};

/** The claims that say how a JWT stands (never the token): exp, iat, gen, and its life left. */
export function tokenFacts(jwt) {
  if (typeof jwt !== "string" || jwt.split(".").length !== 3) return null;
  try {
    const c = JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
    const facts = { exp: c.exp ?? null, iat: c.iat ?? null };
    if (c.gen !== undefined) facts.gen = c.gen;
    if (typeof c.exp === "number") facts.left_s = c.exp - nowS();
    return facts;
  } catch {
    return null;
  }
}

/** Text safe to print: anything that looks like a token is masked. */
function scrub(text) {
  return String(text ?? "")
    .replace(/eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/g, "<jwt>")
    .replace(/\b(ghs|ghu|ghp|glo|gho)_[A-Za-z0-9]{8,}/g, "<$1 token>")
    .slice(0, 400);
}

/** Pids of the demo agents running under `workdir`, with the bead and agent each works. */
function demoAgents(workdir) {
  const root = resolve(workdir);
  const found = [];
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const cwd = readlinkSync(`/proc/${pid}/cwd`);
      if (cwd !== root && !cwd.startsWith(`${root}/`)) continue;
      const argv0 = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0];
      if (!argv0.endsWith("gastown-demo-agent")) continue;
      const env = Object.fromEntries(readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean).map((kv) => {
        const i = kv.indexOf("=");
        return [kv.slice(0, i), kv.slice(i + 1)];
      }));
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
      if (stat[0] === "Z") continue; // exited, not reaped yet
      found.push({ pid: Number(pid), ppid: Number(stat[1]), bead: env.GASTOWN_BEAD_ID, agent: env.GASTOWN_AGENT_ID, town: env.GASTOWN_TOWN_ID });
    } catch {
      // gone meanwhile
    }
  }
  // A child the agent is starting (git, between fork and exec) still shows the agent's
  // command line and env: only the agents themselves count.
  const pids = new Set(found.map((a) => a.pid));
  return found.filter((a) => !pids.has(a.ppid));
}

/** Runs a program; resolves { code, stdout, stderr } (never rejects). */
function run(file, args, { env, input, timeout = REQUEST_TIMEOUT_MS } = {}) {
  return new Promise((resolvePromise) => {
    const child = execFile(file, args, { env, timeout, encoding: "utf8", maxBuffer: 1 << 20 }, (error, stdout, stderr) => {
      resolvePromise({ code: error ? (typeof error.code === "number" ? error.code : -1) : 0, stdout: stdout ?? "", stderr: stderr ?? "", error: error && typeof error.code !== "number" ? String(error.message) : null });
    });
    child.stdin.end(input ?? "");
  });
}

/**
 * Runs the soak: starts its own world, runs `minutes` of agents, work and chaos, drains, checks
 * and tears down. Returns the report (`report.ok` false on any failure); `log` gets the progress
 * lines.
 */
export async function soak(options = {}) {
  const o = { ...DEFAULTS, ...options };
  const log = o.log ?? ((line) => console.log(line));
  if (o.towns < 2) throw new Error("the soak needs at least 2 towns (one goes quiet while others work)");
  const runMs = Math.round(o.minutes * 60_000);
  /** Whether the caller asked to stop early (`signal`, e.g. Ctrl-C): the run tears down at once. */
  const aborted = () => o.signal?.aborted === true;
  /** Sleeps `ms`, or less when aborted. */
  const nap = async (ms) => {
    const until = Date.now() + ms;
    while (!aborted() && Date.now() < until) await sleep(Math.min(500, until - Date.now()));
  };
  // The worker refuses (every request a 500) settings whose refresh cannot come round in time.
  if (o.tokenTtlS < 20 || o.alarmMs + (o.tokenTtlS * 1000) / 8 >= o.tokenTtlS * 1000) {
    throw new Error(`tokens of ${o.tokenTtlS} s with a loop of ${o.alarmMs} ms: the worker would refuse these settings`);
  }

  // ------------------------------------------------------------------ the record
  const counts = {
    callback: { ok: 0, unreachable: 0, no_token: 0 },
    git_helper: { ok: 0, unreachable: 0, no_token: 0 },
    git_route: { ok: 0, unreachable: 0, no_token: 0 },
    git_check: { ok: 0 },
    gateway: { ok: 0, unreachable: 0, no_token: 0 },
    sling: { ok: 0, unreachable: 0 },
  };
  const failures = {
    credential_401: { count: 0, list: [] },
    expired_held: { count: 0, list: [] },
    lost: { count: 0, list: [] },
    duplicated: { count: 0, list: [] },
    double_dispatch: { count: 0, list: [] },
    wrongly_refused: { count: 0, list: [] },
  };
  const fail = (kind, entry) => {
    const f = failures[kind];
    f.count++;
    if (f.list.length >= KEEP) return {};
    const kept = { at: iso(Date.now()), ...entry };
    f.list.push(kept);
    return kept;
  };
  const windows = []; // { who, from, to }
  const down = { worker: null, control: null };
  const goDown = (who) => {
    down[who] = Date.now();
  };
  const comeUp = (who) => {
    windows.push({ who, from: down[who], to: Date.now() });
    down[who] = null;
  };
  /** Whether a request to `who` that ran from `t0` to `t1` met it down (or just back). */
  const metDown = (who, t0, t1 = Date.now()) =>
    down[who] !== null || windows.some((w) => w.who === who && w.from <= t1 && w.to + RECOVERY_GRACE_MS >= t0);
  const chaos = [];
  const chaosDone = Object.fromEntries(CHAOS_KINDS.map((k) => [k, 0]));

  // ------------------------------------------------------------------ the world
  const world = { control: null, worker: null, platforms: null, gateway: null, persistDir: null };
  const homes = [];
  const teardown = async () => {
    try {
      await world.control?.kill();
    } catch {
      // already gone
    }
    if (world.control) {
      killWorkingIn(world.control.workdir);
      rmSync(world.control.workdir, { recursive: true, force: true });
    }
    await world.worker?.stop().catch(() => {});
    world.gateway?.stop();
    await world.platforms?.stop().catch(() => {});
    if (world.persistDir) removePersistDir(world.persistDir);
    for (const home of homes) rmSync(home, { recursive: true, force: true });
  };

  const port = await freePort();
  const workerUrl = `http://127.0.0.1:${port}`;
  const call = client(() => workerUrl);
  const selfRefreshMs = o.gatewaySelfRefreshMs ?? Math.floor((o.tokenTtlS * 1000) / 2);
  const towns = [];
  const report = { ok: false, aborted: null };
  const loops = [];
  let progress = null;
  let running = true;
  const t = { start: 0, chaosEnd: 0, end: 0 };
  try {
    world.persistDir = makePersistDir();
    const { persistDir } = world;
    migrateD1(persistDir);
    world.platforms = await startDevPlatforms();
    const { platforms } = world;
    platforms.setTokenTtl({ github: o.tokenTtlS });
    world.gateway = await startGateway();
    const { gateway } = world;
    const controlArgs = ["--worker-url", workerUrl, "--git-ca-file", platforms.gitCaFile, "--gateway-refresh-ms", String(selfRefreshMs)];
    world.control = await startControlServer({ args: controlArgs });
    const workdir = world.control.workdir;
    const vars = {
      CONTAINER_CONTROL_URL: world.control.url,
      AGENT_CALLBACK_URL: workerUrl,
      GITHUB_API_URL: platforms.url,
      GITHUB_WEB_URL: platforms.url,
      GITLAB_URL: platforms.url,
      KILO_GATEWAY_URL: gateway.url,
      GASTOWN_ALLOW_LOCAL_GIT: "0",
      TOWN_ALARM_INTERVAL_MS: String(o.alarmMs),
      TOWN_ALARM_ACTIVE_MS: String(o.activeAlarmMs),
      WATCHDOG_INTERVAL_MS: "5000",
      // Only the lifetimes: every refresh keys off them (the container token pushed every
      // eighth, the gateway token re-minted at half its life), as in a deployment.
      CONTAINER_TOKEN_TTL_S: String(o.tokenTtlS),
      GATEWAY_TOKEN_TTL_S: String(o.tokenTtlS),
      GATEWAY_SELF_REFRESH_MS: String(selfRefreshMs),
      GIT_TOKEN_REFRESH_MARGIN_S: String(o.gitMarginS),
      CONTAINER_TOKEN_GRACE_MS: String(o.tokenGraceMs),
      AGENT_STALL_MS: String(o.stallMs),
      CONTAINER_IDLE_STOP_MS: String(o.idleStopMs),
      DISPATCH_BREAKER_MS: "10000",
      MAX_TOWNS_PER_OWNER: "20",
      MAX_RIGS_PER_TOWN: "20",
      MAX_AGENTS_PER_TOWN: "40",
    };
    world.worker = await startWorker({ persistDir, port, vars });

    // ---------------------------------------------------------------- towns and agents
    for (let i = 0; i < o.towns; i++) {
      const user = freshUser("soak");
      const w = await installedTownWithRig({ call, workerUrl, platforms, user, installation: 95_000_000 + (process.pid % 1000) * 100 + i, label: `soak${i}` });
      const agents = [];
      for (let j = 0; j < o.agentsPerTown; j++) {
        // Refinery-role agents: dispatch never hands them a bead (it takes polecats), and idle
        // ones do not keep the town busy, so only the slung beads decide its idleness.
        agents.push((await registerAgent(call, w.town.id, w.rig.id, { role: "refinery", name: `sim-${j}` })).id);
      }
      const containerStart = await call("POST", `/api/towns/${w.town.id}/container/start`, { token: tokenFor(user) });
      if (containerStart.status !== 200) throw new Error(`container start: ${containerStart.status} ${containerStart.text}`);
      const gitHost = new URL(w.rig.git_url).host;
      towns.push({ i, user, ...w, agents, gitHost, dir: join(workdir, w.town.id), quiet: false, slung: [], unacknowledged: 0, revivals: [] });
    }
    const byLogin = new Map(towns.map((x) => [x.login.toLowerCase(), x]));

    // ---------------------------------------------------------------- what an agent reads
    const readToken = (town) => {
      try {
        return readFileSync(join(town.dir, ".container-token"), "utf8").trim() || null;
      } catch {
        return null;
      }
    };
    const readGatewayToken = (town) => {
      try {
        const line = readFileSync(join(town.dir, ".env.gateway"), "utf8").split("\n").find((l) => l.startsWith("KILO_JWT="));
        return line ? line.slice("KILO_JWT=".length).trim() || null : null;
      } catch {
        return null;
      }
    };
    /** A credential the agent is about to use that has already lapsed (by its own exp). */
    const heldExpired = (what, town, method, path, facts) => {
      if (facts && typeof facts.exp === "number" && facts.exp <= nowS()) {
        return fail("expired_held", { what, town: town.town.id, method, path, token: facts });
      }
      return null;
    };
    /** What the server answered a request sent with a lapsed credential (it may still take it). */
    const answered = (lapsed, res) => {
      if (lapsed) lapsed.status = res.status ?? `network: ${res.error}`;
    };

    /** Classifies one answer to an agent's request; the record of it. */
    const judge = (kind, town, { method, path, t0, status, text, error, token, who = "worker" }) => {
      const entry = { kind, town: town.town.id, method, path, status: status ?? null, body: scrub(text ?? error), token };
      if (status !== undefined && status >= 200 && status < 300) {
        counts[kind].ok++;
        return true;
      }
      if (status === 401) {
        fail("credential_401", entry);
        return false;
      }
      const network = status === undefined;
      if ((network || status >= 500) && who && metDown(who, t0)) {
        counts[kind].unreachable++;
        return false;
      }
      fail("wrongly_refused", entry);
      return false;
    };

    const timed = async (url, init) => {
      try {
        const res = await fetch(url, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
        return { status: res.status, text: await res.text() };
      } catch (e) {
        return { error: `${e.name}: ${e.cause?.code ?? e.message}` };
      }
    };

    // ---------------------------------------------------------------- the simulated agents
    const heartbeat = async (town, agentId) => {
      const token = readToken(town);
      if (!token) return counts.callback.no_token++;
      const path = `/api/towns/${town.town.id}/rigs/${town.rig.id}/agents/${agentId}/heartbeat`;
      const facts = tokenFacts(token);
      const lapsed = heldExpired("container token", town, "POST", path, facts);
      const t0 = Date.now();
      const res = await timed(workerUrl + path, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: "{}" });
      answered(lapsed, res);
      judge("callback", town, { method: "POST", path, t0, ...res, token: facts });
    };

    /** Tries a git token at the GitHub stand-in: an installation token it no longer takes is a failure. */
    const checkGitToken = async (town, token, via) => {
      const res = await timed(`${platforms.url}/installation/repositories`, { headers: { authorization: `token ${token}` } });
      if (res.status === 200) return counts.git_check.ok++;
      const entry = { kind: "github", via, town: town.town.id, method: "GET", path: "/installation/repositories", status: res.status ?? null, body: scrub(res.text ?? res.error) };
      fail(res.status === 401 ? "credential_401" : "wrongly_refused", entry);
    };

    const gitEnv = (town, agentId) => ({
      PATH: process.env.PATH,
      HOME: town.home,
      GIT_CONFIG_GLOBAL: join(town.dir, "gitconfig"),
      GIT_CONFIG_NOSYSTEM: "1",
      GIT_TERMINAL_PROMPT: "0",
      GASTOWN_TOWN_ID: town.town.id,
      GASTOWN_RIG_ID: town.rig.id,
      GASTOWN_AGENT_ID: agentId,
      GASTOWN_GIT_TOKEN_MARGIN_S: String(o.gitMarginS),
    });

    /** git's own way: `git credential fill`, which runs the helper the town's gitconfig names. */
    const gitViaHelper = async (town, agentId) => {
      if (!existsSync(join(town.dir, "gitconfig")) || !readToken(town)) return counts.git_helper.no_token++;
      const t0 = Date.now();
      const path = `${town.login}/app.git`;
      const out = await run("git", ["credential", "fill"], { env: gitEnv(town, agentId), input: `protocol=https\nhost=${town.gitHost}\npath=${path}\n\n` });
      const fields = Object.fromEntries(out.stdout.split("\n").filter((l) => l.includes("=")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
      const method = "git credential fill";
      if (out.code === 0 && fields.password) {
        const expiry = Number(fields.password_expiry_utc);
        if (Number.isFinite(expiry) && expiry <= nowS()) {
          fail("expired_held", { what: "git token (helper)", town: town.town.id, method, path, token: { exp: expiry, left_s: expiry - nowS() } });
        }
        counts.git_helper.ok++;
        return checkGitToken(town, fields.password, "helper");
      }
      // The container stopped meanwhile: its agents are gone with it.
      if (/no container token/.test(out.stderr) || !readToken(town)) return counts.git_helper.no_token++;
      const said = /worker answered (\d{3})/.exec(out.stderr);
      const what = { method, path, t0, token: tokenFacts(readToken(town)) };
      if (said) return judge("git_helper", town, { ...what, status: Number(said[1]), text: out.stderr });
      if (/worker not reached/.test(out.stderr)) return judge("git_helper", town, { ...what, error: out.stderr });
      // Neither a status nor an unreachable worker: git or the helper failed otherwise.
      fail("wrongly_refused", { kind: "git_helper", town: town.town.id, method, path, status: null, body: scrub(out.stderr || out.error || `exit ${out.code}`) });
    };

    /** The worker's route, with the file's token. */
    const gitViaRoute = async (town, agentId) => {
      const token = readToken(town);
      if (!token) return counts.git_route.no_token++;
      const path = `/api/towns/${town.town.id}/rigs/${town.rig.id}/git-token`;
      const facts = tokenFacts(token);
      const lapsed = heldExpired("container token", town, "POST", path, facts);
      const t0 = Date.now();
      const res = await timed(workerUrl + path, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: JSON.stringify({ agent_id: agentId }) });
      answered(lapsed, res);
      if (!judge("git_route", town, { method: "POST", path, t0, ...res, token: facts })) return;
      let body;
      try {
        body = JSON.parse(res.text);
      } catch {
        return fail("wrongly_refused", { kind: "git_route", town: town.town.id, method: "POST", path, status: res.status, body: "not JSON" });
      }
      if (typeof body.expires_at === "number" && body.expires_at <= nowS()) {
        fail("expired_held", { what: "git token (route)", town: town.town.id, method: "POST", path, token: { exp: body.expires_at, left_s: body.expires_at - nowS() } });
      }
      return checkGitToken(town, body.token, "route");
    };

    const gatewayCall = async (town) => {
      const token = readGatewayToken(town);
      if (!token) return counts.gateway.no_token++;
      const path = "/api/gateway/chat/completions";
      const facts = tokenFacts(token);
      const lapsed = heldExpired("gateway token", town, "POST", path, facts);
      const t0 = Date.now();
      const res = await timed(gateway.url + path, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "kilo/auto", messages: [{ role: "user", content: "soak" }] }),
      });
      answered(lapsed, res);
      // The gateway is never restarted: it is never excused as unreachable.
      judge("gateway", town, { method: "POST", path, t0, ...res, token: facts, who: null });
    };

    /** `fn` every `everyMs`, never overlapping itself, until the run ends. */
    const loop = (everyMs, offsetMs, fn) => {
      const done = (async () => {
        await sleep(offsetMs);
        while (running) {
          const t0 = Date.now();
          try {
            await fn();
          } catch (e) {
            log(`[soak] a loop failed: ${e.stack ?? e}`);
          }
          await sleep(Math.max(0, everyMs - (Date.now() - t0)));
        }
      })();
      loops.push(done);
    };

    // ---------------------------------------------------------------- work
    let beadNo = 0;
    /** Slings one bead; resolves its id when the worker acknowledged it (201), else null. */
    const sling = async (town, why) => {
      const path = `/api/towns/${town.town.id}/sling`;
      const t0 = Date.now();
      const title = `soak ${town.i}-${++beadNo} (${why})`;
      const res = await timed(workerUrl + path, {
        method: "POST",
        headers: { authorization: `Bearer ${tokenFor(town.user)}`, "content-type": "application/json" },
        body: JSON.stringify({ rig_id: town.rig.id, title, body: "Say hello." }),
      });
      if (res.status === 201) {
        counts.sling.ok++;
        const id = JSON.parse(res.text).id;
        town.slung.push({ id, at: Date.now(), why, title });
        return id;
      }
      if ((res.status === undefined || res.status >= 500) && metDown("worker", t0)) {
        counts.sling.unreachable++;
        town.unacknowledged++;
        return null;
      }
      fail("wrongly_refused", { kind: "sling", town: town.town.id, method: "POST", path, status: res.status ?? null, body: scrub(res.text ?? res.error) });
      town.unacknowledged++;
      return null;
    };
    /** Slings until one is acknowledged (a revival after a stop), for up to a minute. */
    const slingSurely = async (town, why) => {
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline) {
        const id = await sling(town, why);
        if (id) return id;
        await sleep(2_000);
      }
      return null;
    };

    const health = async (town) => {
      const res = await timed(`${workerUrl}/api/internal/towns/${town.town.id}/health`, { headers: { "x-internal-api-key": internalKey() } });
      return res.status === 200 ? JSON.parse(res.text) : null;
    };

    // ---------------------------------------------------------------- observers
    // The control server's own gateway refreshes live in its memory: summed over its lives.
    const selfRefresh = new Map(towns.map((x) => [x.town.id, { base: 0, last: 0, failures: 0, lastFailures: 0 }]));
    const sampleControl = async () => {
      for (const town of towns) {
        const s = selfRefresh.get(town.town.id);
        let res;
        try {
          res = await world.control.town(town.town.id);
        } catch {
          continue; // down
        }
        if (res.status !== 200) continue;
        const n = res.body.gateway_refreshes ?? 0;
        if (n < s.last) s.base += s.last;
        s.last = n;
        const f = res.body.gateway_refresh_failures ?? 0;
        if (f < s.lastFailures) s.failures += s.lastFailures;
        s.lastFailures = f;
      }
    };
    // A timeline of what each town's agents hold and what the worker believes, for diagnosis.
    const trace = [];
    const sampleTrace = async () => {
      for (const town of towns) {
        const ct = tokenFacts(readToken(town));
        const gw = tokenFacts(readGatewayToken(town));
        const h = down.worker === null ? await health(town).catch(() => null) : null;
        trace.push({
          t: Math.round((Date.now() - t.start) / 1000),
          town: town.town.id.slice(0, 8),
          container_token: ct && { gen: ct.gen, left_s: ct.left_s },
          gateway_token: gw && { iat: gw.iat, left_s: gw.left_s },
          worker_thinks_gateway_left_s: h?.gateway_token_expires_at ? h.gateway_token_expires_at - nowS() : null,
        });
      }
    };
    const doubleSeen = new Set();
    const watchAgents = () => {
      const byBead = new Map();
      for (const a of demoAgents(workdir)) {
        if (!a.bead) continue;
        if (!byBead.has(a.bead)) byBead.set(a.bead, []);
        byBead.get(a.bead).push(a);
      }
      for (const [bead, list] of byBead) {
        if (list.length > 1 && !doubleSeen.has(bead)) {
          doubleSeen.add(bead);
          fail("double_dispatch", { what: "two agent processes working one bead at once", town: list[0].town, bead, agents: list.map((a) => ({ agent: a.agent, pid: a.pid })) });
        }
      }
    };

    // ---------------------------------------------------------------- chaos
    const others = (idle) => towns.filter((x) => x !== idle);
    const plan = [];
    const rounds = Math.max(1, Math.round(o.minutes / o.chaosRoundMinutes));
    const first = Math.min(15_000, runMs * 0.1);
    const last = runMs * 0.8;
    const roundMs = (last - first) / rounds;
    for (let r = 0; r < rounds; r++) {
      const idle = towns[(((towns.length - 1 - r) % towns.length) + towns.length) % towns.length];
      plan.push({ at: first + r * roundMs, kind: "idle_stop", town: idle });
      const pick = others(idle);
      // The restarts come after the first token lifetime, so the tokens they restore are old.
      ["rotate", "container_stop", "control_kill", "worker_kill"].forEach((kind, k) => {
        plan.push({ at: first + r * roundMs + ((k + 1) * roundMs) / 5, kind, town: pick[(r + k) % pick.length] });
      });
    }
    const note = (kind, detail) => {
      const entry = { at: iso(Date.now()), t: fmtMs(Date.now() - t.start), kind, ...detail };
      chaos.push(entry);
      if (entry.ok) chaosDone[kind]++;
      log(`[soak ${entry.t}] chaos ${kind}${detail.town ? ` (${detail.town.slice(0, 8)})` : ""}: ${entry.ok ? "done" : "FAILED"}${detail.downtime_ms !== undefined ? `, down ${(detail.downtime_ms / 1000).toFixed(1)} s` : ""}${detail.detail ? ` — ${detail.detail}` : ""}`);
    };
    const waitPortFree = async (p) => {
      for (let i = 0; i < 100; i++) {
        try {
          await fetch(`http://127.0.0.1:${p}/health`, { signal: AbortSignal.timeout(500) });
        } catch (e) {
          if (e.cause?.code === "ECONNREFUSED") return;
        }
        await sleep(100);
      }
    };
    const actions = {
      async rotate(town) {
        const res = await call("POST", `/api/towns/${town.town.id}/container/refresh-token`, { token: tokenFor(town.user) });
        note("rotate", { town: town.town.id, ok: res.status === 200, detail: res.status === 200 ? `token_expires_at ${res.body.token_expires_at}` : `${res.status} ${scrub(res.text)}` });
      },
      async control_kill() {
        const t0 = Date.now();
        await sampleControl();
        goDown("control");
        // The server and everything it started, as the container's end takes them (agents are
        // not killed by the server's death alone: each leads a process group of its own; see
        // `controlKillTakesAgents`). It starts again on the same port and work directory.
        await world.control.kill();
        if (o.controlKillTakesAgents) killWorkingIn(workdir);
        try {
          world.control = await startControlServer({ workdir, port: world.control.port, args: controlArgs });
        } finally {
          comeUp("control");
        }
        note("control_kill", { ok: true, downtime_ms: Date.now() - t0 });
      },
      async container_stop(town) {
        const res = await world.control.stopTown(town.town.id);
        const ok = res.status === 200 && res.body.ok === true;
        const id = ok ? await slingSurely(town, "after its container stopped") : null;
        if (id) town.revivals.push({ id, kind: "container_stop" });
        note("container_stop", { town: town.town.id, ok: ok && Boolean(id), detail: `${res.status} ${JSON.stringify(res.body)}; revived by bead ${id?.slice(0, 8) ?? "none"}` });
      },
      async worker_kill() {
        const t0 = Date.now();
        goDown("worker");
        try {
          await world.worker.kill();
          await waitPortFree(port);
          world.worker = await startWorker({ persistDir, port, vars });
        } finally {
          comeUp("worker");
        }
        note("worker_kill", { ok: true, downtime_ms: Date.now() - t0 });
      },
      async idle_stop(town) {
        town.quiet = true;
        const t0 = Date.now();
        let before = null;
        while (before === null && Date.now() - t0 < 30_000) {
          before = (await health(town))?.idle_stops ?? null;
          if (before === null) await sleep(1_000);
        }
        let stopped = false;
        const deadline = Date.now() + o.idleStopMs + 120_000;
        while (running && !aborted() && !stopped && Date.now() < deadline) {
          await sleep(2_000);
          const h = await health(town);
          stopped = h !== null && before !== null && h.idle_stops > before;
        }
        town.quiet = false;
        const id = stopped ? await slingSurely(town, "after its idle stop") : null;
        if (id) town.revivals.push({ id, kind: "idle_stop" });
        note("idle_stop", { town: town.town.id, ok: stopped && Boolean(id), detail: stopped ? `stopped after ${fmtMs(Date.now() - t0)} quiet; revived by bead ${id?.slice(0, 8) ?? "none"}` : "the container was not stopped for idleness in time" });
      },
    };

    // ---------------------------------------------------------------- the run
    t.start = Date.now();
    log(`[soak] ${o.towns} towns × ${o.agentsPerTown} agents, tokens of ${o.tokenTtlS} s (git margin ${o.gitMarginS} s), ${fmtMs(runMs)} with ${plan.length} chaos events; worker ${workerUrl}, control ${world.control.url}`);
    towns.forEach((town, ti) => {
      town.home = mkdtempSync(join(tmpdir(), "gastown-soak-home-"));
      homes.push(town.home);
      town.agents.forEach((agentId, j) => {
        loop(o.callbackEveryMs, Math.floor((j * o.callbackEveryMs) / town.agents.length) + ti * 37, () => heartbeat(town, agentId));
      });
      let g = 0;
      loop(o.gitEveryMs, 500 + ti * 211, () => {
        const agentId = town.agents[g % town.agents.length];
        return g++ % 2 === 0 ? gitViaHelper(town, agentId) : gitViaRoute(town, agentId);
      });
      loop(o.gatewayEveryMs, 250 + ti * 97, () => gatewayCall(town));
    });
    loop(5_000, 2_000, sampleControl);
    loop(5_000, 3_000, sampleTrace);
    loop(1_000, 500, async () => watchAgents());
    let slinging = true;
    const slingLoops = towns.map((town, ti) => (async () => {
      await sleep(1_000 + ti * 3_000);
      while (slinging && !aborted()) {
        if (!town.quiet) await sling(town, "steady");
        const wait = rand(o.slingEveryMs);
        for (let waited = 0; slinging && waited < wait; waited += 500) await sleep(500);
      }
    })());
    progress = setInterval(() => {
      const acked = towns.reduce((n, x) => n + x.slung.length, 0);
      const bad = Object.values(failures).reduce((n, f) => n + f.count, 0);
      const c = counts;
      log(`[soak ${fmtMs(Date.now() - t.start)}] beads ${acked} acknowledged · callbacks ${c.callback.ok} ok/${c.callback.unreachable} unreachable · git ${c.git_helper.ok + c.git_route.ok} ok/${c.git_helper.unreachable + c.git_route.unreachable} unreachable · gateway ${c.gateway.ok} ok · failures ${bad} · chaos ${CHAOS_KINDS.map((k) => `${k} ${chaosDone[k]}`).join(", ")}`);
    }, 60_000);

    const pending = [];
    for (const ev of plan.sort((a, b) => a.at - b.at)) {
      const wait = t.start + ev.at - Date.now();
      if (wait > 0) await nap(wait);
      if (Date.now() - t.start > runMs || aborted()) break;
      const act = actions[ev.kind](ev.town).catch((e) => note(ev.kind, { town: ev.town?.town.id, ok: false, detail: scrub(e.stack ?? e) }));
      // An idle phase runs beside the rest; every other event runs alone.
      if (ev.kind === "idle_stop") pending.push(act);
      else await act;
    }
    const left = t.start + runMs - Date.now();
    if (left > 0) await nap(left);
    slinging = false;
    await Promise.all(slingLoops);
    await Promise.all(pending);
    t.chaosEnd = Date.now();

    // ---------------------------------------------------------------- the drain
    log(`[soak ${fmtMs(Date.now() - t.start)}] chaos over: draining (up to ${fmtMs(o.drainMs)})`);
    const statuses = async (town) => {
      const seen = new Map();
      let after;
      for (;;) {
        const res = await call("GET", `/api/towns/${town.town.id}/beads?limit=200${after ? `&after=${after}` : ""}`, { token: tokenFor(town.user) });
        if (res.status !== 200) throw new Error(`listing beads: ${res.status} ${res.text}`);
        for (const b of res.body) seen.set(b.id, b.status);
        if (res.body.length < 200) return seen;
        after = res.body.at(-1).id;
      }
    };
    const drainDeadline = Date.now() + o.drainMs;
    for (;;) {
      let open = 0;
      try {
        for (const town of towns) {
          const seen = await statuses(town);
          open += town.slung.filter((b) => ["open", "in_progress"].includes(seen.get(b.id))).length;
        }
      } catch (e) {
        open = -1;
        log(`[soak] drain: ${scrub(e.message)}`);
      }
      if (open === 0 || Date.now() > drainDeadline || aborted()) break;
      await sleep(3_000);
    }
    running = false;
    await sampleControl();
    t.end = Date.now();
    if (aborted()) throw new Error("stopped early (signal)");

    // ---------------------------------------------------------------- the beads
    const beadReport = { acknowledged: 0, closed: 0, unacknowledged: 0, revivals_closed: 0, revivals: 0 };
    for (const town of towns) {
      beadReport.unacknowledged += town.unacknowledged;
      const revival = new Set(town.revivals.map((r) => r.id));
      for (const slung of town.slung) {
        beadReport.acknowledged++;
        const res = await call("GET", `/api/towns/${town.town.id}/beads/${slung.id}`, { token: tokenFor(town.user) });
        const b = res.body;
        if (res.status !== 200 || !b) {
          fail("lost", { town: town.town.id, bead: slung.id, title: slung.title, status: res.status, body: scrub(res.text) });
          continue;
        }
        const kinds = b.events.map((e) => e.kind);
        const summary = b.events.map((e) => `${e.created_at.slice(11, 19)} ${e.kind}${e.message ? `: ${scrub(e.message).slice(0, 80)}` : ""}`);
        if (b.status === "closed") {
          beadReport.closed++;
          if (revival.has(b.id)) beadReport.revivals_closed++;
        } else {
          fail("lost", { town: town.town.id, bead: b.id, title: b.title, status: b.status, failure_reason: b.failure_reason ?? null, acknowledged_at: iso(slung.at), events: summary });
        }
        if (revival.has(b.id)) beadReport.revivals++;
        const dones = kinds.filter((k) => k === "done").length;
        const closings = kinds.filter((k) => CLOSING.has(k)).length;
        if (dones > 1 || closings > 1) fail("duplicated", { town: town.town.id, bead: b.id, title: b.title, done: dones, closing_events: closings, events: summary });
        let held = false;
        for (const e of b.events) {
          if (e.kind === "dispatched") {
            if (held) {
              fail("double_dispatch", { what: "dispatched again with no hand-back between", town: town.town.id, bead: b.id, at_event: e.created_at, events: summary });
              break;
            }
            held = true;
          } else if (HAND_BACK.has(e.kind)) {
            held = false;
          }
        }
      }
    }
    // ---------------------------------------------------------------- the git host's word
    // Every git request of the demo agents: an installation token it refused (expired, or not
    // for the repository) reached an agent's git through the helper.
    for (const a of platforms.gitAuth()) {
      if (a.as && a.verdict !== true) {
        const town = byLogin.get(String(a.owner).toLowerCase());
        fail(a.verdict === false ? "credential_401" : "wrongly_refused", { kind: "git_host", town: town?.town.id ?? null, method: a.service, path: `/${a.owner}/${a.repo}.git`, status: a.verdict === false ? 401 : 403, body: `the git host refused ${a.as}` });
      }
    }

    // ---------------------------------------------------------------- refresh traffic
    const hours = (t.end - t.start) / 3_600_000;
    const perTownHour = (n) => Math.round((n / towns.length / hours) * 10) / 10;
    const healths = [];
    for (const town of towns) healths.push(await health(town));
    const sum = (f) => healths.reduce((n, h) => n + (h ? f(h) : 0), 0);
    const minted = platforms.log().filter((e) => e.key === "github.access_tokens" && e.status === 201);
    const mintedBy = new Map();
    for (const e of minted) {
      const id = Number(/installations\/(\d+)\//.exec(e.path)?.[1]);
      const town = towns.find((x) => x.installation === id);
      if (town) mintedBy.set(town.town.id, (mintedBy.get(town.town.id) ?? 0) + 1);
    }
    const selfTotal = [...selfRefresh.values()].reduce((n, s) => n + s.base + s.last, 0);
    const selfFailures = [...selfRefresh.values()].reduce((n, s) => n + s.failures + s.lastFailures, 0);
    const refresh = {
      hours_per_town: Math.round(hours * 1000) / 1000,
      totals: {
        container_token_pushes: sum((h) => h.token_refreshes),
        container_token_push_failures: sum((h) => h.token_refresh_failures),
        gateway_remints: sum((h) => h.gateway_refreshes),
        gateway_remint_failures: sum((h) => h.gateway_refresh_failures),
        control_self_refreshes: selfTotal,
        control_self_refresh_failures: selfFailures,
        git_tokens_minted: [...mintedBy.values()].reduce((a, b) => a + b, 0),
      },
    };
    refresh.per_town_hour = Object.fromEntries(Object.entries(refresh.totals).map(([k, v]) => [k, perTownHour(v)]));
    refresh.per_town = towns.map((town, k) => ({
      town: town.town.id,
      container_token_pushes: healths[k]?.token_refreshes ?? null,
      gateway_remints: healths[k]?.gateway_refreshes ?? null,
      control_self_refreshes: (() => {
        const s = selfRefresh.get(town.town.id);
        return s.base + s.last;
      })(),
      git_tokens_minted: mintedBy.get(town.town.id) ?? 0,
      idle_stops: healths[k]?.idle_stops ?? null,
      stalls: healths[k]?.stalls ?? null,
      dispatches: healths[k]?.dispatches ?? null,
      dispatch_failures: healths[k]?.dispatch_failures ?? null,
    }));

    Object.assign(report, {
      started_at: iso(t.start),
      ended_at: iso(t.end),
      minutes: o.minutes,
      run_ms: t.chaosEnd - t.start,
      drain_ms: t.end - t.chaosEnd,
      settings: { towns: o.towns, agents_per_town: o.agentsPerTown, control_kill_takes_agents: o.controlKillTakesAgents, token_ttl_s: o.tokenTtlS, git_margin_s: o.gitMarginS, token_grace_ms: o.tokenGraceMs, idle_stop_ms: o.idleStopMs, stall_ms: o.stallMs, sling_every_ms: o.slingEveryMs, gateway_self_refresh_ms: selfRefreshMs, vars },
      requests: counts,
      beads: beadReport,
      failures: Object.fromEntries(Object.entries(failures).map(([k, f]) => [k, { count: f.count, first: f.list[0] ?? null, kept: f.list }])),
      chaos: { planned: plan.length, done: chaosDone, events: chaos },
      downtime: windows.map((w) => ({ who: w.who, from: iso(w.from), ms: w.to - w.from })),
      refresh,
      trace,
    });
  } catch (e) {
    report.aborted = scrub(e.stack ?? e);
    log(`[soak] aborted: ${e.stack ?? e}`);
  } finally {
    running = false;
    clearInterval(progress);
    await Promise.allSettled(loops);
    await teardown();
  }
  const bad = report.failures ? Object.values(report.failures).reduce((n, f) => n + f.count, 0) : 0;
  report.failure_count = bad;
  // A chaos event that did not happen as planned leaves the soak short of what it claims.
  report.chaos_failed = report.chaos ? report.chaos.events.filter((e) => !e.ok).length : 0;
  report.ok = !report.aborted && bad === 0 && report.chaos_failed === 0;
  if (o.out) {
    const out = resolve(ROOT, o.out);
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
    report.written_to = out;
  }
  return report;
}

/** The report as text. */
export function formatReport(r) {
  const lines = [];
  const say = (s = "") => lines.push(s);
  say("== soak report ==");
  if (r.aborted) say(`ABORTED: ${r.aborted}`);
  if (!r.requests) return lines.join("\n");
  const c = r.requests;
  const s = r.settings;
  say(`${r.started_at} → ${r.ended_at}: ${fmtMs(r.run_ms)} of load and chaos, then ${fmtMs(r.drain_ms)} of drain`);
  say(`${s.towns} towns × ${s.agents_per_town} agents; container/gateway/GitHub tokens of ${s.token_ttl_s} s, git margin ${s.git_margin_s} s, rotation grace ${s.token_grace_ms} ms`);
  say("");
  say("requests (ok / unreachable while a process was down / skipped: no credential in the container)");
  for (const [k, v] of Object.entries(c)) {
    say(`  ${k.padEnd(11)} ${String(v.ok).padStart(7)} ok${v.unreachable !== undefined ? ` / ${v.unreachable} unreachable` : ""}${v.no_token !== undefined ? ` / ${v.no_token} skipped` : ""}`);
  }
  say("");
  say(`beads: ${r.beads.acknowledged} acknowledged, ${r.beads.closed} closed; ${r.beads.unacknowledged} slings not acknowledged (the worker was down); revival beads ${r.beads.revivals_closed}/${r.beads.revivals} closed`);
  say("");
  say("chaos (done / planned events):");
  say(`  ${Object.entries(r.chaos.done).map(([k, n]) => `${k} ${n}`).join(", ")} (of ${r.chaos.planned} planned)`);
  for (const e of r.chaos.events) say(`  ${e.t.padStart(6)} ${e.kind.padEnd(14)} ${e.ok ? "ok    " : "FAILED"}${e.downtime_ms !== undefined ? ` down ${(e.downtime_ms / 1000).toFixed(1)} s` : ""}${e.detail ? ` ${e.detail}` : ""}`);
  say("");
  const f = r.failures;
  const line = (n, label, key) => say(`  (${n}) ${label.padEnd(58)} ${String(f[key].count).padStart(5)}`);
  say("failures (each must be 0):");
  line("1", "401s an agent saw (callbacks, git tokens, gateway, git host)", "credential_401");
  line("1", "credentials an agent held past their exp", "expired_held");
  line("2", "acknowledged beads lost (not closed after the drain)", "lost");
  line("2", "acknowledged beads closed twice / two dones", "duplicated");
  line("3", "beads dispatched twice at once", "double_dispatch");
  line("4", "requests refused wrongly", "wrongly_refused");
  for (const [key, v] of Object.entries(f)) {
    if (v.count > 0) say(`  first ${key}: ${JSON.stringify(v.first)}`);
  }
  say("");
  const rt = r.refresh;
  say(`refresh traffic per town-hour (${rt.hours_per_town} h per town):`);
  say(`  container-token pushes ${rt.per_town_hour.container_token_pushes} (failed ${rt.per_town_hour.container_token_push_failures}), gateway re-mints by the worker ${rt.per_town_hour.gateway_remints} (failed ${rt.per_town_hour.gateway_remint_failures}),`);
  say(`  control-server gateway self-refreshes ${rt.per_town_hour.control_self_refreshes} (failed ${rt.per_town_hour.control_self_refresh_failures}), GitHub installation tokens minted ${rt.per_town_hour.git_tokens_minted}`);
  say(`  totals: ${JSON.stringify(rt.totals)}`);
  say("");
  say(r.ok ? "OK: no failure" : `FAILED: ${r.failure_count} failure(s), ${r.chaos_failed ?? 0} chaos event(s) that did not happen as planned`);
  return lines.join("\n");
}

function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--minutes") o.minutes = Number(value());
    else if (a === "--towns") o.towns = Number(value());
    else if (a === "--agents") o.agentsPerTown = Number(value());
    else if (a === "--out") o.out = value();
    else if (a === "--short") Object.assign(o, SHORT, { out: DEFAULTS.out });
    else if (a === "--orphan-agents") o.controlKillTakesAgents = false;
    else if (a === "--gateway-self-refresh-ms") o.gatewaySelfRefreshMs = Number(value());
    else if (a === "--help" || a === "-h") {
      console.log(`usage: node scripts/soak.mjs [--minutes N (30)] [--towns N (3)] [--agents N (5)] [--out FILE (bench/results/soak-latest.json)]
                          [--short] [--orphan-agents] [--gateway-self-refresh-ms MS]
  --short          the profile npm test runs (2.5 minutes, every chaos kind once)
  --orphan-agents  a control-server kill leaves its agents running (by default they die with it,
                   as with the container in production)
  --gateway-self-refresh-ms  the control server's own gateway refresh (default: half the lifetime)`);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  for (const k of ["minutes", "towns", "agentsPerTown"]) {
    if (o[k] !== undefined && !(o[k] > 0)) throw new Error(`--${k === "agentsPerTown" ? "agents" : k} must be a positive number`);
  }
  return o;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`soak: ${e.message}`);
    process.exit(2);
  }
  const stop = new AbortController();
  for (const sig of ["SIGINT", "SIGTERM"]) {
    process.once(sig, () => {
      console.error(`soak: ${sig}: stopping and cleaning up`);
      stop.abort();
    });
  }
  const report = await soak({ ...options, signal: stop.signal });
  console.log(formatReport(report));
  if (report.written_to) console.log(`(JSON: ${report.written_to})`);
  process.exit(report.ok ? 0 : 1);
}

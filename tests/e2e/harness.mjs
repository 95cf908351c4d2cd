// One real worker in workerd (`wrangler dev --local`) per test run, on a free loopback port with a
// throwaway persist dir, driven over HTTP the way the dashboard and containers drive it.
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { createHmac } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { ROOT, devVars } from "../../scripts/lib/jwt.mjs";

export const secrets = devVars();

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const wranglerBin = join(ROOT, "node_modules", ".bin", "wrangler");

export function makePersistDir() {
  return mkdtempSync(join(tmpdir(), "gastown-e2e-"));
}

export function removePersistDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

/** Applies the D1 migrations to `persistDir`, as `npm run dev` does. */
export function migrateD1(persistDir) {
  execFileSync(wranglerBin, ["d1", "migrations", "apply", "gastown", "--local", "--persist-to", persistDir], {
    cwd: ROOT,
    stdio: "pipe",
    env: { ...process.env, CI: "true", WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" },
  });
}

/**
 * Spawns one of our native binaries on `port` and waits until its `/health` answers; returns the
 * child, its URL and a reader of everything it printed.
 */
async function spawnServer(name, args, env, port) {
  const child = spawn(join(ROOT, "target", "release", name), args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      if ((await fetch(`${url}/health`)).ok) break;
    } catch {
      // not listening yet
    }
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${name} did not start:\n${output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, url, output: () => output };
}

/**
 * Starts the container control server with its /debug routes (`gastown-control-debug`, built by
 * scripts/build.sh) on a free port, holding the master key GASTOWN_CONTROL_KEY of the dev vars, as
 * `npm run dev` does: one server for every town. Like every control route, the debug routes want
 * `authorization: Bearer <control secret of the town>` and `x-gastown-town-id`; `town(id)` sends
 * those of town `id`, `fail(modes)` those of a fixed pseudo-town (fail modes are server-wide).
 */
export async function startControlServer({ workdir = mkdtempSync(join(tmpdir(), "gastown-work-")), args = [], port, env = {} } = {}) {
  const key = secrets.GASTOWN_CONTROL_KEY;
  if (!key) throw new Error("GASTOWN_CONTROL_KEY is missing from .dev.vars (see .dev.vars.example)");
  port ??= await freePort();
  const { child, url, output } = await spawnServer("gastown-control-debug", ["--port", String(port), "--workdir", workdir, ...args],
    { GASTOWN_CONTROL_KEY: key, GASTOWN_CONTROL_SECRET: "", GASTOWN_TOWN_ID: "", ...env }, port);
  // base64url(HMAC-SHA256(key, "gastown-control-v1:" + townId)): gastown_core::control::control_secret.
  const secretOf = (townId) => createHmac("sha256", key).update(`gastown-control-v1:${townId}`).digest("base64url");
  const json = async (method, path, townId, body) => {
    const headers = { authorization: `Bearer ${secretOf(townId)}`, "x-gastown-town-id": townId };
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(url + path, { method, headers, body: body && JSON.stringify(body) });
    return { status: res.status, body: await res.json() };
  };
  return {
    url,
    port,
    /** The server's process (a test may signal it: SIGSTOP, SIGTERM). */
    child,
    pid: child.pid,
    /** The server's work directory: each town's files are under `<workdir>/<townId>/`. */
    workdir,
    output,
    town: (townId) => json("GET", `/debug/towns/${townId}`, townId),
    fail: (modes) => json("POST", "/debug/fail", "e2e-harness", modes),
    /** A further message to an agent's running session (`POST /agents/:id/message`). */
    message: (townId, agentId, text) => json("POST", `/agents/${agentId}/message`, townId, { townId, text }),
    /** As if the town's container stopped (or restarted): its token and env are gone. */
    stopTown: (townId) => json("POST", "/stop", townId, { townId }),
    stop: () => {
      child.kill("SIGTERM");
      killWorkingIn(workdir);
      rmSync(workdir, { recursive: true, force: true });
    },
    /**
     * SIGKILLs the server alone, as a crash does: its agents (each in a process group of its
     * own) and the work directory stay, so a server started again with the same `workdir` and
     * `port` finds them. Resolves once it is gone.
     */
    kill: () => {
      if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      return exited;
    },
  };
}

/** Pids of the processes whose working directory is `dir` or under it (Linux's /proc). */
export function workingIn(dir) {
  const root = resolve(dir);
  return readdirSync("/proc").filter((p) => /^\d+$/.test(p)).filter((pid) => {
    try {
      const cwd = readlinkSync(`/proc/${pid}/cwd`);
      return cwd === root || cwd.startsWith(`${root}/`);
    } catch {
      return false; // gone, or not ours to read
    }
  });
}

/**
 * SIGKILLs every process working under `dir`: the agents a control server started (each leads a
 * process group of its own, so killing the server leaves them running) and whatever they started.
 */
export function killWorkingIn(dir) {
  for (const pid of workingIn(dir)) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/**
 * Starts the stand-in Kilo gateway (`gastown-gateway`) on a free port with the dev
 * NEXTAUTH_SECRET: it accepts only valid sandbox tokens and records usage at /debug/usage.
 */
export async function startGateway() {
  const port = await freePort();
  const { child, url, output } = await spawnServer("gastown-gateway", ["--port", String(port)], { NEXTAUTH_SECRET: secrets.NEXTAUTH_SECRET }, port);
  return { url, output, stop: () => child.kill("SIGTERM") };
}

/**
 * Our wrangler.toml without its `[build]` section, for runs of the already built worker: with a
 * build command, `wrangler dev` watches src/ and rebuilds (and without `npm test`'s features)
 * whenever someone edits a file during a run. It lives in .wrangler/ (ignored by git), so its
 * paths are rewritten, and the dev secrets are copied beside it, where wrangler reads them.
 */
export function builtWorkerConfig() {
  const dir = join(ROOT, ".wrangler", "built");
  mkdirSync(dir, { recursive: true });
  const out = [];
  let inBuild = false;
  for (const line of readFileSync(join(ROOT, "wrangler.toml"), "utf8").split("\n")) {
    if (/^\s*\[/.test(line)) inBuild = /^\s*\[build\]\s*$/.test(line);
    if (inBuild) continue;
    out.push(line.replace(/^(\s*(?:main|image|image_build_context|migrations_dir)\s*=\s*)"([^"]*)"/,
      (_, key, value) => `${key}"${relative(dir, resolve(ROOT, value)) || "."}"`));
  }
  // Written only when it changes: a running `wrangler dev` reloads when its config is touched.
  const writeIfChanged = (path, text) => {
    if (!existsSync(path) || readFileSync(path, "utf8") !== text) writeFileSync(path, text);
  };
  const file = join(dir, "wrangler.toml");
  writeIfChanged(file, out.join("\n"));
  const vars = [".dev.vars", ".dev.vars.example"].map((f) => join(ROOT, f)).find(existsSync);
  if (vars) writeIfChanged(join(dir, ".dev.vars"), readFileSync(vars, "utf8"));
  return file;
}

/**
 * Starts the built worker (or another, with `config`); resolves once `readyPath` answers
 * `readyStatus`.
 */
export async function startWorker(options) {
  // A free port is only free until someone binds it: another process of the run may take it
  // between our probe and wrangler's bind. That one failure is retried with fresh ports.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startWorkerOnce(options);
    } catch (e) {
      if (attempt >= 3 || !/Address already in use/.test(String(e.message))) throw e;
    }
  }
}

async function startWorkerOnce({ persistDir, vars = {}, config = builtWorkerConfig(), readyPath = "/health", readyStatus = 200, port }) {
  port ??= await freePort();
  const inspector = await freePort();
  const args = ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector),
    "--persist-to", persistDir, "--show-interactive-dev-session=false", "--log-level", "warn"];
  for (const [k, v] of Object.entries(vars)) args.push("--var", `${k}:${v}`);
  args.push("--config", config);
  const child = spawn(wranglerBin, args, {
    cwd: ROOT,
    env: { ...process.env, CI: "true", WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited early:\n${output}`);
    try {
      const res = await fetch(`${url}${readyPath}`);
      if (res.status === readyStatus) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`worker did not become ready in 120 s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return {
    url,
    port,
    persistDir,
    output: () => output,
    /**
     * SIGKILLs the whole runtime (wrangler and the workerd it started: its process group), as
     * a crash or a deploy does, with no chance to finish anything. Resolves once it is gone.
     */
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
      await exited;
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {
        child.kill("SIGTERM");
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {
          // already gone
        }
      }, 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** A small client: `call(method, path, {token, body, raw, headers})` → {status, body, headers}. */
export function client(base) {
  return async function call(method, path, { token, body, raw, headers = {}, contentType } = {}) {
    const h = { ...headers };
    if (token) h.authorization = `Bearer ${token}`;
    let payload;
    if (raw !== undefined) {
      payload = raw;
      h["content-type"] = contentType ?? "application/json";
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      h["content-type"] = contentType ?? "application/json";
    }
    const res = await fetch(base() + path, { method, headers: h, body: payload });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, body: json, text, headers: res.headers };
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A probe's answer that means "not yet", carrying what it saw (for the timeout's message). */
export const not = (value) => ({ __not: value ?? null });

/** Waits until `probe()` answers something other than `not(…)`, or fails after `ms` with the last answer. */
export async function until(what, probe, ms = 45_000, every = 200) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last && !Object.hasOwn(last, "__not")) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(last?.__not ?? last)}`);
    await sleep(every);
  }
}

/**
 * A worker of its own (its persist dir, D1 migrated) on a fresh port, with a control server
 * (`--worker-url` it, plus `controlArgs`) its towns' containers use and, with `gateway`, the
 * stand-in gateway; a 1-second loop (300 ms while busy) and `vars` over `ctx.vars()`. For suites
 * whose timings must touch no other suite.
 */
export async function startOwnWorker(ctx, { controlArgs = [], controlEnv = {}, vars = {}, gateway: withGateway = false } = {}) {
  const persistDir = makePersistDir();
  migrateD1(persistDir);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const control = await startControlServer({ args: ["--worker-url", url, ...controlArgs], env: controlEnv });
  const gateway = withGateway ? await startGateway() : null;
  const worker = await startWorker({
    persistDir,
    port,
    vars: {
      ...ctx.vars(),
      CONTAINER_CONTROL_URL: control.url,
      AGENT_CALLBACK_URL: url,
      TOWN_ALARM_INTERVAL_MS: "1000",
      TOWN_ALARM_ACTIVE_MS: "300",
      ...(gateway ? { KILO_GATEWAY_URL: gateway.url } : {}),
      ...vars,
    },
  });
  return {
    call: client(() => worker.url),
    control,
    gateway,
    worker,
    async stop() {
      await worker.stop();
      control.stop();
      gateway?.stop();
      removePersistDir(persistDir);
    },
  };
}

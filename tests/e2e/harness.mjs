// One real worker in workerd (`wrangler dev --local`) per test run, on a free loopback port with a
// throwaway persist dir, driven over HTTP the way the dashboard and containers drive it.
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, devVars } from "../../scripts/lib/jwt.mjs";

export const secrets = devVars();

function freePort() {
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

/** Starts the container control server (with its /debug routes) on a free port. */
export async function startControlServer() {
  const port = await freePort();
  const child = spawn(join(ROOT, "target", "release", "gastown-control"), ["--port", String(port), "--debug"], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      if ((await fetch(`${url}/health`)).ok) break;
    } catch {
      // not listening yet
    }
    if (child.exitCode !== null || Date.now() > deadline) throw new Error("gastown-control did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  const json = async (method, path, body) => {
    const res = await fetch(url + path, { method, body: body && JSON.stringify(body) });
    return { status: res.status, body: await res.json() };
  };
  return {
    url,
    town: (townId) => json("GET", `/debug/towns/${townId}`),
    fail: (modes) => json("POST", "/debug/fail", modes),
    stop: () => child.kill("SIGTERM"),
  };
}

/** Starts the built worker (or another, with `config`); resolves once `readyPath` answers 200. */
export async function startWorker({ persistDir, vars = {}, config, readyPath = "/health" }) {
  const port = await freePort();
  const inspector = await freePort();
  const args = ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector),
    "--persist-to", persistDir, "--show-interactive-dev-session=false", "--log-level", "warn"];
  for (const [k, v] of Object.entries(vars)) args.push("--var", `${k}:${v}`);
  if (config) args.push("--config", config);
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
      if (res.status === 200) break;
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
    output: () => output,
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

// The workers `npm run bench` measures — ours (the release build), the TypeScript peer
// (bench/peer) and the floor (bench/floor) — started in one of two modes:
//
// - "wrangler": `wrangler dev --local` through the e2e harness, as `npm run dev` serves them. A
//   request crosses wrangler's local proxy (Node) before it reaches workerd.
// - "direct": each worker's deploy bundle (`wrangler deploy --dry-run`) in its own workerd,
//   driven by Miniflare's Node API and answering on a direct socket (`unsafeDirectSockets`): no
//   proxy, no Miniflare entry worker, nothing but workerd between wrk and the worker. Bindings,
//   vars and compatibility settings come from each wrangler.toml (wrangler's
//   `unstable_getMiniflareWorkerOptions`), secrets from .dev.vars, as under wrangler dev.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT } from "./jwt.mjs";
import { startWorker, makePersistDir, removePersistDir, migrateD1, secrets } from "../../tests/e2e/harness.mjs";

export const CONFIGS = {
  ours: join(ROOT, "wrangler.toml"),
  peer: join(ROOT, "bench", "peer", "wrangler.toml"),
  floor: join(ROOT, "bench", "floor", "wrangler.toml"),
};

const wranglerEnv = { ...process.env, CI: "true", WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" };

/**
 * A worker as `wrangler deploy` would upload it: wrangler bundles `main` (esbuild; for the peer,
 * with its nodejs_compat polyfills) into a temporary directory, next to any wasm module.
 */
export function bundle(config) {
  const outdir = mkdtempSync(join(tmpdir(), "gastown-bench-bundle-"));
  execFileSync(join(ROOT, "node_modules", ".bin", "wrangler"),
    ["deploy", "--dry-run", "--outdir", outdir, "--config", config, "--containers-rollout=none"],
    { cwd: ROOT, env: wranglerEnv, stdio: "pipe" });
  const entries = readdirSync(outdir).filter((f) => /\.m?js$/.test(f));
  if (entries.length !== 1) throw new Error(`expected one entry module in ${outdir}, found ${entries.join(", ")}`);
  return { main: join(outdir, entries[0]), remove: () => rmSync(outdir, { recursive: true, force: true }) };
}

/**
 * Our wrangler.toml without its `[build]` section, for `wrangler dev`: with a build command,
 * wrangler dev watches src/ and rebuilds (cargo) whenever someone edits it during a run. It lives
 * in .wrangler/ (ignored by git), so its paths are rewritten, and .dev.vars, which wrangler reads
 * beside the config, is passed as vars instead.
 */
export function oursWranglerConfig() {
  const dir = join(ROOT, ".wrangler", "bench");
  mkdirSync(dir, { recursive: true });
  const out = [];
  let inBuild = false;
  for (const line of readFileSync(CONFIGS.ours, "utf8").split("\n")) {
    if (/^\s*\[/.test(line)) inBuild = /^\s*\[build\]\s*$/.test(line);
    if (inBuild) continue;
    out.push(line.replace(/^(\s*(?:main|image|image_build_context|migrations_dir)\s*=\s*)"([^"]*)"/,
      (_, key, value) => `${key}"${relative(dir, resolve(ROOT, value)) || "."}"`));
  }
  const file = join(dir, `ours-${process.pid}.toml`);
  writeFileSync(file, out.join("\n"));
  return { file, remove: () => rmSync(file, { force: true }) };
}

/** The pids of the running `workerd serve` processes. */
function workerdPids() {
  try {
    return new Set(execFileSync("pgrep", ["-f", "workerd serve"], { encoding: "utf8" }).split("\n").filter(Boolean));
  } catch {
    return new Set(); // pgrep exits 1 when nothing matches
  }
}

/** The main module, then every other module beside it (worker-build's wasm). */
function bundleModules(mainPath) {
  const dir = dirname(mainPath);
  const others = readdirSync(dir)
    .filter((f) => join(dir, f) !== mainPath && /\.(m?js|wasm)$/.test(f)) // not .map, not README.md
    .map((f) => ({ type: f.endsWith(".wasm") ? "CompiledWasm" : "ESModule", path: join(dir, f) }));
  return [{ type: "ESModule", path: mainPath }, ...others];
}

/**
 * One worker alone in workerd (Miniflare's Node API), answering on a direct socket; `config` is
 * its wrangler.toml, `mainPath` its built entry module, `bindings` its secrets and overrides.
 */
export async function startDirect(name, config, mainPath, persistDir, bindings, extra = {}) {
  // wrangler's own miniflare, the one its options below are written for.
  const miniflarePath = createRequire(join(ROOT, "node_modules", "wrangler", "package.json")).resolve("miniflare");
  const { Miniflare, Log, LogLevel, convertV4MiniflareOptions } = await import(pathToFileURL(miniflarePath).href);
  const { unstable_getMiniflareWorkerOptions } = await import("wrangler");
  // wrangler gives v4-style options; this Miniflare (5.x, wrangler's own) converts them.
  const { workerOptions } = unstable_getMiniflareWorkerOptions(config, undefined, { overrides: { enableContainers: false } });
  const { modulesRules: _rules, rootPath: _root, ...options } = workerOptions;
  const before = workerdPids();
  const mf = new Miniflare(convertV4MiniflareOptions({
    host: "127.0.0.1",
    port: 0,
    log: new Log(LogLevel.WARN),
    logRequests: false,
    cf: false, // no request.cf download (offline); the placeholder is enough
    ...extra, // e.g. inspectorPort, to take a CPU profile
    resourcePersistencePath: join(persistDir, "v3"), // where `wrangler dev --persist-to` keeps it
    workers: [{
      ...options,
      name,
      modulesRoot: dirname(mainPath),
      modules: bundleModules(mainPath),
      bindings: { ...options.bindings, ...bindings },
      unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
    }],
  }));
  try {
    await mf.ready;
    // This worker's own workerd process, so the bench can read its CPU time.
    const pid = [...workerdPids()].find((p) => !before.has(p)) ?? null;
    return { url: (await mf.unsafeGetDirectURL(name)).origin, pid, stop: () => mf.dispose() };
  } catch (e) {
    await mf.dispose().catch(() => {});
    throw e;
  }
}

/** Starts ours, the peer and the floor in `mode`; `controlUrl` is our container control server. */
export async function startWorkers(mode, { controlUrl }) {
  const dirs = { ours: makePersistDir(), peer: makePersistDir(), floor: makePersistDir() };
  migrateD1(dirs.ours);
  const started = [];
  const cleanup = async () => {
    for (const w of started) await w.stop().catch(() => {});
    for (const d of Object.values(dirs)) removePersistDir(d);
  };
  try {
    const peerVars = { NEXTAUTH_SECRET: secrets.NEXTAUTH_SECRET };
    // Quotas out of the way: the list measurements seed 10 000 rigs in one town.
    const oursVars = { CONTAINER_CONTROL_URL: controlUrl, MAX_RIGS_PER_TOWN: "100000", MAX_TOWNS_PER_OWNER: "1000" };
    let ours, peer, floor;
    if (mode === "wrangler") {
      const config = oursWranglerConfig();
      started.push({ stop: async () => config.remove() });
      started.push((ours = await startWorker({ persistDir: dirs.ours, config: config.file, vars: { ...secrets, ...oursVars } })));
      started.push((peer = await startWorker({ persistDir: dirs.peer, config: CONFIGS.peer, vars: peerVars })));
      started.push((floor = await startWorker({ persistDir: dirs.floor, config: CONFIGS.floor, readyPath: "/" })));
    } else if (mode === "direct") {
      const direct = async (...args) => {
        const worker = await startDirect(...args);
        started.push(worker);
        return worker;
      };
      // Each worker's deploy bundle (ours from the config without its build hook: no cargo
      // here), loaded once: workerd holds it, so a rebuild during the run changes nothing.
      const load = async (name, config, persistDir, bindings) => {
        const b = bundle(config);
        try {
          return await direct(name, config, b.main, persistDir, bindings);
        } finally {
          b.remove();
        }
      };
      const oursConfig = oursWranglerConfig();
      try {
        // Secrets as wrangler dev gives them (.dev.vars), then the bench's overrides.
        ours = await load("gastown", oursConfig.file, dirs.ours, { ...secrets, ...oursVars });
      } finally {
        oursConfig.remove();
      }
      peer = await load("gastown-bench-peer", CONFIGS.peer, dirs.peer, peerVars);
      floor = await load("gastown-bench-floor", CONFIGS.floor, dirs.floor, {});
    } else {
      throw new Error(`unknown bench mode ${mode}`);
    }
    return { ours, peer, floor, stop: cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

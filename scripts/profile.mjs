#!/usr/bin/env node
// A V8 CPU profile of one worker's isolate under workerd while wrk drives one route: where a
// request's time goes (wasm, JavaScript glue, workerd natives, V8), and the top functions.
//
//   node scripts/profile.mjs [ours|peer] [health|town|org] [seconds]
//
// Measures the current build/ (run `npm run build` first; with node_modules/.bin on PATH).
// For Rust function names, build with them kept:
//   CARGO_PROFILE_RELEASE_STRIP=false worker-build --release --no-opt
// The profiler slows what it samples: compare splits and functions, not absolute figures.
import { execFileSync } from "node:child_process";
import { bundle, oursWranglerConfig, startDirect, CONFIGS } from "./lib/bench-workers.mjs";
import { startControlServer, makePersistDir, removePersistDir, migrateD1, secrets } from "../tests/e2e/harness.mjs";
import { userToken } from "./lib/jwt.mjs";

const [who = "ours", route = "org", seconds = "5"] = process.argv.slice(2);
const INSPECTOR_PORT = 9239;
const USER = "profile-user";
const ORG = "profile-org";

const control = await startControlServer();
const dir = makePersistDir();
migrateD1(dir);
let worker;
let cleanup;
if (who === "ours") {
  const config = oursWranglerConfig();
  const b = bundle(config.file);
  worker = await startDirect("gastown", config.file, b.main, dir, { ...secrets, CONTAINER_CONTROL_URL: control.url }, { inspectorPort: INSPECTOR_PORT });
  cleanup = () => { config.remove(); b.remove(); };
} else {
  const b = bundle(CONFIGS.peer);
  worker = await startDirect("gastown-bench-peer", CONFIGS.peer, b.main, dir, { NEXTAUTH_SECRET: secrets.NEXTAUTH_SECRET }, { inspectorPort: INSPECTOR_PORT });
  cleanup = () => b.remove();
}

// The bench's seed: a personal town and five org towns.
const token = userToken(secrets.NEXTAUTH_SECRET, USER, { orgs: [{ orgId: ORG, role: "member" }] });
const post = (path, body) => fetch(worker.url + path, {
  method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: JSON.stringify(body),
}).then((r) => r.json());
const town = await post(`/api/users/${USER}/towns`, { name: "profile" });
for (let i = 0; i < 5; i++) await post(`/api/orgs/${ORG}/towns`, { name: `org town ${i}` });
const path = { health: "/health", town: `/api/users/${USER}/towns/${town.id}`, org: `/api/orgs/${ORG}/towns` }[route];
if (!path) throw new Error(`unknown route ${route}`);

// One inspector session per isolate; the worker's is the one whose profile holds its code.
async function session(target) {
  const ws = new WebSocket(target.webSocketDebuggerUrl);
  await new Promise((resolve) => ws.addEventListener("open", resolve));
  let id = 0;
  const pending = new Map();
  ws.addEventListener("message", (m) => {
    const msg = JSON.parse(m.data);
    pending.get(msg.id)?.(msg);
    pending.delete(msg.id);
  });
  const send = (method, params = {}) => new Promise((resolve) => {
    pending.set(++id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });
  return { title: target.title, send, close: () => ws.close() };
}
const targets = await (await fetch(`http://127.0.0.1:${INSPECTOR_PORT}/json/list`)).json();
const sessions = await Promise.all(targets.map(session));
for (const s of sessions) {
  await s.send("Profiler.enable");
  await s.send("Profiler.setSamplingInterval", { interval: 100 });
  await s.send("Profiler.start");
}
const out = execFileSync("wrk", ["-t1", "-c4", `-d${seconds}s`, "-H", `authorization: Bearer ${token}`, worker.url + path], { encoding: "utf8" });
const requests = Number(out.match(/(\d+) requests in/)[1]);

const kind = (name, url) => {
  if (/\.wasm/.test(url) || name.startsWith("wasm-function")) return "wasm";
  if (name.startsWith("wasm-to-js") || name.startsWith("js-to-wasm")) return "wasm<->js";
  if (url.endsWith(".js") || url.endsWith(".mjs")) return "js";
  if (name === "(idle)") return "idle";
  if (name === "(program)") return "v8";
  if (name === "(garbage collector)") return "gc";
  return "native";
};
for (const s of sessions) {
  const { result } = await s.send("Profiler.stop");
  s.close();
  const p = result.profile;
  const perNode = new Map();
  p.samples.forEach((node, i) => perNode.set(node, (perNode.get(node) ?? 0) + (p.timeDeltas[i] ?? 0)));
  const self = new Map();
  const kinds = new Map();
  for (const n of p.nodes) {
    const t = perNode.get(n.id) ?? 0;
    const name = n.callFrame.functionName || "(anonymous)";
    const url = n.callFrame.url.split("/").pop();
    const key = `${name} ${url}${n.callFrame.lineNumber >= 0 ? `:${n.callFrame.lineNumber + 1}` : ""}`;
    self.set(key, (self.get(key) ?? 0) + t);
    kinds.set(kind(name, url), (kinds.get(kind(name, url)) ?? 0) + t);
  }
  if (!kinds.get("js") && !kinds.get("wasm")) continue; // workerd's own service isolates
  const total = [...kinds.values()].reduce((a, b) => a + b, 0);
  const busy = total - (kinds.get("idle") ?? 0);
  const pct = (t) => `${((100 * t) / total).toFixed(1)}%`;
  console.log(`\n${s.title}: ${route}, ${requests} requests, ${(busy / requests).toFixed(0)} µs busy per request (profiler on)`);
  console.log([...kinds.entries()].sort((a, b) => b[1] - a[1]).map(([k, t]) => `${k} ${pct(t)}`).join(", "));
  for (const [k, t] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`${pct(t).padStart(6)}  ${k}`);
}
await worker.stop();
control.stop();
cleanup();
removePersistDir(dir);
process.exit(0);

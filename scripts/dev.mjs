#!/usr/bin/env node
// `npm run dev`: applies the local D1 migrations, starts the container control server (what a
// town's container runs; here one process serves every town, with its work dir in
// .wrangler/work and its own gateway-token refresh against this worker; its agents are the real
// Kilo CLI unless GASTOWN_AGENT_COMMAND says otherwise), the stand-in Kilo
// gateway (it accepts only the towns' sandbox tokens and records whom it would bill), and the
// worker under
// `wrangler dev --local` with persisted state in .wrangler/state, the secrets of .dev.vars and
// CONTAINER_CONTROL_URL pointing at that control server, and prints how to call it.
// (Setup and the build ran just before, from package.json.)
import { spawn, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ROOT, devVars } from "./lib/jwt.mjs";

const port = process.env.PORT ?? "8787";
const controlPort = process.env.CONTROL_PORT ?? String(Number(port) + 1);
const gatewayPort = process.env.GATEWAY_PORT ?? String(Number(port) + 2);
const workdir = join(ROOT, ".wrangler", "work");
const persist = join(ROOT, ".wrangler", "state");
const wrangler = join(ROOT, "node_modules", ".bin", "wrangler");
const env = { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" };

execFileSync(wrangler, ["d1", "migrations", "apply", "gastown", "--local", "--persist-to", persist], {
  cwd: ROOT,
  env: { ...env, CI: "true" },
  stdio: ["ignore", "ignore", "inherit"],
});

// The agents: the real Kilo CLI (installed by npm ci as @kilocode/cli-linux-x64), run by the
// control server's Kilo runtime, unless GASTOWN_AGENT_COMMAND names another command (the demo
// agent: GASTOWN_AGENT_COMMAND=target/release/gastown-demo-agent).
const controlBin = join(ROOT, "target", "release", "gastown-control");
const kilo = join(ROOT, "node_modules", "@kilocode", "cli-linux-x64", "bin", "kilo");
let agentArgs = [];
let runtime;
if (process.env.GASTOWN_AGENT_COMMAND) {
  runtime = `GASTOWN_AGENT_COMMAND (${process.env.GASTOWN_AGENT_COMMAND})`;
} else if (existsSync(kilo) && !/\s/.test(ROOT)) {
  agentArgs = ["--agent-command", `${controlBin} kilo-agent --kilo ${kilo}`];
  runtime = "the Kilo CLI (gastown-control kilo-agent), against the stand-in gateway's scripted model";
} else {
  runtime = "the demo agent (the Kilo CLI is not installed here, or this path has spaces)";
}

// The control server authenticates the worker with secrets derived from GASTOWN_CONTROL_KEY,
// the same key the worker reads from .dev.vars.
const control = spawn(
  controlBin,
  ["--port", controlPort, "--workdir", workdir, "--worker-url", `http://127.0.0.1:${port}`, ...agentArgs],
  { cwd: ROOT, env: { ...process.env, GASTOWN_CONTROL_KEY: devVars().GASTOWN_CONTROL_KEY }, stdio: "inherit" },
);
// The stand-in gateway verifies sandbox tokens with the same NEXTAUTH_SECRET the worker signs with.
const gateway = spawn(join(ROOT, "target", "release", "gastown-gateway"), ["--port", gatewayPort], {
  cwd: ROOT,
  env: { ...process.env, NEXTAUTH_SECRET: devVars().NEXTAUTH_SECRET },
  stdio: "inherit",
});
const child = spawn(
  wrangler,
  ["dev", "--local", "--ip", "127.0.0.1", "--port", port, "--persist-to", persist,
    "--var", `CONTAINER_CONTROL_URL:http://127.0.0.1:${controlPort}`,
    "--var", `KILO_GATEWAY_URL:http://127.0.0.1:${gatewayPort}`,
    // Agents the control server starts call this worker back here.
    "--var", `AGENT_CALLBACK_URL:http://127.0.0.1:${port}`, ...process.argv.slice(2)],
  { cwd: ROOT, env, stdio: "inherit" },
);
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    control.kill(sig);
    gateway.kill(sig);
    child.kill(sig);
  });
}
child.on("exit", (code) => {
  control.kill("SIGTERM");
  gateway.kill("SIGTERM");
  process.exit(code ?? 0);
});
gateway.on("exit", (code) => {
  if (code) console.error(`gastown-gateway exited with ${code}`);
});
control.on("exit", (code) => {
  if (code) console.error(`gastown-control exited with ${code}`);
});

const base = `http://127.0.0.1:${port}`;
for (let i = 0; i < 240; i++) {
  try {
    if ((await fetch(`${base}/health`)).ok) {
      console.log(`
  Gastown control plane is up at ${base}
  (container control server: http://127.0.0.1:${controlPort}, work dir ${workdir};
   agents: ${runtime};
   stand-in gateway: http://127.0.0.1:${gatewayPort}/api/gateway/chat/completions, usage at /debug/usage)

    curl ${base}/health
    TOKEN=$(npm run -s token -- --user u1)
    curl -X POST ${base}/api/users/u1/towns -H "authorization: Bearer $TOKEN" \\
         -H 'content-type: application/json' -d '{"name":"My town"}'
    curl ${base}/api/users/u1/towns -H "authorization: Bearer $TOKEN"
`);
      break;
    }
  } catch {
    // not up yet
  }
  await new Promise((r) => setTimeout(r, 500));
}

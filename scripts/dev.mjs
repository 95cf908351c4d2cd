#!/usr/bin/env node
// `npm run dev`: applies the local D1 migrations, starts the container control server (what a
// town's container runs; here one process serves every town, with its work dir in
// .wrangler/work and its own gateway-token refresh against this worker; its agents are the real
// Kilo CLI unless GASTOWN_AGENT_COMMAND says otherwise), the stand-in Kilo
// gateway (it accepts only the towns' sandbox tokens and records whom it would bill), and the
// worker under
// `wrangler dev --local` with persisted state in .wrangler/state, the secrets of .dev.vars and
// CONTAINER_CONTROL_URL pointing at that control server, and prints how to call it.
// With GASTOWN_STANDINS=1 it first starts the GitHub/GitLab stand-in
// (tests/e2e/standins/serve.mjs, on STANDINS_PORT, default PORT + 3 = 8790, with its controls on
// STANDINS_PORT + 1 and its git host on STANDINS_PORT + 2; STANDINS_WEBHOOKS=0 keeps it from
// delivering webhooks, leaving merges to the refinery's poll), points the worker's
// GITHUB_API_URL, GITHUB_WEB_URL and GITLAB_URL at it and gives the control server its git
// host's certificate (--git-ca-file), so agents clone and push over HTTPS there and the town
// opens pull requests against it, and stops it with the rest. Without it nothing of that runs.
// Arguments are passed on to `wrangler dev` (`npm run dev -- --var PR_POLL_MS:5000`).
// (Setup and the build ran just before, from package.json.)
import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";
import { existsSync } from "node:fs";
import { join, isAbsolute, resolve } from "node:path";
import { ROOT, devVars } from "./lib/jwt.mjs";

const port = process.env.PORT ?? "8787";
const controlPort = process.env.CONTROL_PORT ?? String(Number(port) + 1);
const gatewayPort = process.env.GATEWAY_PORT ?? String(Number(port) + 2);
const withStandins = process.env.GASTOWN_STANDINS === "1";
const standinsPort = process.env.STANDINS_PORT ?? String(Number(port) + 3);
const standinsControlPort = String(Number(standinsPort) + 1);
const standinsGitPort = String(Number(standinsPort) + 2);
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
  // The control server starts each agent in the agent's own folder, so a relative path such as
  // the one above is taken from the repository root here.
  const [command, ...rest] = process.env.GASTOWN_AGENT_COMMAND.trim().split(/\s+/);
  if (command.includes("/") && !isAbsolute(command) && !/\s/.test(ROOT)) {
    agentArgs = ["--agent-command", [resolve(ROOT, command), ...rest].join(" ")];
  }
} else if (existsSync(kilo) && !/\s/.test(ROOT)) {
  agentArgs = ["--agent-command", `${controlBin} kilo-agent --kilo ${kilo}`];
  runtime = "the Kilo CLI (gastown-control kilo-agent), against the stand-in gateway's scripted model";
} else {
  runtime = "the demo agent (the Kilo CLI is not installed here, or this path has spaces)";
}

// GASTOWN_STANDINS=1: the GitHub/GitLab stand-in, up before the worker and the control server
// need its addresses and its git host's certificate (it prints them on one line).
let standins = null;
let standinsAt = null;
if (withStandins) {
  standins = spawn(
    process.execPath,
    [join(ROOT, "tests", "e2e", "standins", "serve.mjs"), "--port", standinsPort, "--control-port", standinsControlPort,
      "--git-port", standinsGitPort, "--worker-url", `http://127.0.0.1:${port}`, ...(process.env.STANDINS_WEBHOOKS === "0" ? ["--no-webhooks"] : [])],
    { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] },
  );
  standinsAt = await new Promise((up) => {
    const lines = createInterface({ input: standins.stdout });
    let found = null;
    lines.on("line", (line) => {
      if (found) return console.log(line);
      const m = /^stand-ins up: api=(\S+) git=(\S+) control=(\S+) webhooks=(\S+) ca=(.+)$/.exec(line);
      if (!m) return console.log(line);
      found = { api: m[1], git: m[2], control: m[3], webhooks: m[4] === "on", ca: m[5] };
      up(found);
    });
    standins.once("exit", (code) => {
      if (found) return;
      console.error(`the GitHub/GitLab stand-in (serve.mjs) exited with ${code} before it was up`);
      process.exit(1);
    });
  });
  standins.on("exit", (code) => {
    if (code) console.error(`the GitHub/GitLab stand-in exited with ${code}`);
  });
}
const standinVars = standinsAt
  ? ["--var", `GITHUB_API_URL:${standinsAt.api}`, "--var", `GITHUB_WEB_URL:${standinsAt.api}`, "--var", `GITLAB_URL:${standinsAt.api}`]
  : [];

// The control server authenticates the worker with secrets derived from GASTOWN_CONTROL_KEY,
// the same key the worker reads from .dev.vars.
const control = spawn(
  controlBin,
  ["--port", controlPort, "--workdir", workdir, "--worker-url", `http://127.0.0.1:${port}`, ...agentArgs,
    ...(standinsAt ? ["--git-ca-file", standinsAt.ca] : [])],
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
    "--var", `AGENT_CALLBACK_URL:http://127.0.0.1:${port}`, ...standinVars, ...process.argv.slice(2)],
  { cwd: ROOT, env, stdio: "inherit" },
);
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    control.kill(sig);
    gateway.kill(sig);
    standins?.kill(sig);
    child.kill(sig);
  });
}
child.on("exit", (code) => {
  control.kill("SIGTERM");
  gateway.kill("SIGTERM");
  if (standins && standins.exitCode === null) {
    // Let it remove its git host's temporary folder before this process goes.
    standins.once("exit", () => process.exit(code ?? 0));
    standins.kill("SIGTERM");
    return;
  }
  process.exit(code ?? 0);
});
gateway.on("exit", (code) => {
  if (code) console.error(`gastown-gateway exited with ${code}`);
});
control.on("exit", (code) => {
  if (code) console.error(`gastown-control exited with ${code}`);
});

const base = `http://127.0.0.1:${port}`;
function standinsHelp(at) {
  return `
  Stand-in GitHub/GitLab (GASTOWN_STANDINS=1): API ${at.api} (the worker's GITHUB_API_URL,
   GITHUB_WEB_URL and GITLAB_URL), git host ${at.git} (the control server trusts ${at.ca}),
   controls ${at.control} (webhooks ${at.webhooks ? "delivered to this worker" : "off: merges reach the town by its poll, PR_POLL_MS"}):

    curl -X POST ${at.control}/install -d '{"installation":1001,"login":"acme","repo":"app","user":"u1"}'
    curl -X PATCH ${base}/api/towns/<town>/config -H "authorization: Bearer $TOKEN" \\
         -H 'content-type: application/json' -d '{"merge_strategy":"pull_request"}'
    curl -X POST ${base}/api/users/u1/rigs -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \\
         -d '{"town_id":"<town>","name":"app","platform_integration_id":"<integration_id>","repo":"acme/app"}'
    curl -X POST ${base}/api/towns/<town>/sling -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \\
         -d '{"rig_id":"<rig>","title":"Say hello","body":"Say hello."}'
    curl ${base}/api/towns/<town>/beads/<bead> -H "authorization: Bearer $TOKEN"   # in_review, pull_request open
    curl -X POST ${at.control}/pulls -d '["acme","app"]'
    curl -X POST ${at.control}/mergePull -d '["acme","app",1]'      # merges, delivers the webhook: the bead closes
`;
}
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
${standinsAt ? standinsHelp(standinsAt) : `
  (GASTOWN_STANDINS=1 also starts the GitHub/GitLab stand-in, for pull requests on one machine.)
`}`);
      break;
    }
  } catch {
    // not up yet
  }
  await new Promise((r) => setTimeout(r, 500));
}

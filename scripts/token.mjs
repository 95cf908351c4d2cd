#!/usr/bin/env node
// Mints a development token signed with the secrets in .dev.vars (or .dev.vars.example).
//
//   npm run -s token -- --user u1                      dashboard user token, 1 h
//   npm run -s token -- --user u1 --org o1:owner --org o2:member
//   npm run -s token -- --kind container --town T --user u1 [--gen N]   (N: the town's token
//                                                     generation, 1 after its first start)
//   npm run -s token -- --kind sandbox --town T --user u1 [--org o1]
//
// Prints only the token, so `TOKEN=$(npm run -s token -- --user u1)` works.
import { parseArgs } from "node:util";
import { devVars, userToken, containerToken, agentToken, sandboxToken } from "./lib/jwt.mjs";

const { values } = parseArgs({
  options: {
    kind: { type: "string", default: "user" },
    user: { type: "string" },
    org: { type: "string", multiple: true, default: [] },
    town: { type: "string" },
    rig: { type: "string" },
    agent: { type: "string" },
    ttl: { type: "string" },
    gen: { type: "string", default: "1" },
    help: { type: "boolean", short: "h" },
  },
});

const fail = (msg) => {
  console.error(`token: ${msg}\nusage: npm run -s token -- [--kind user|container|agent|sandbox] --user ID [--org ORG:ROLE]... [--town ID] [--gen N] [--ttl SECONDS]`);
  process.exit(2);
};
if (values.help) fail("help");
if (!values.user) fail("--user is required");
const vars = devVars();
const ttl = values.ttl ? Number(values.ttl) : undefined;
const opt = (o) => (ttl ? { ...o, ttl } : o);

switch (values.kind) {
  case "user": {
    const orgs = values.org.map((spec) => {
      const [orgId, role = "member"] = spec.split(":");
      return { orgId, role };
    });
    console.log(userToken(vars.NEXTAUTH_SECRET, values.user, opt({ orgs })));
    break;
  }
  case "container":
    if (!values.town) fail("--town is required for a container token");
    console.log(containerToken(vars.GASTOWN_JWT_SECRET, values.town, values.user, opt({ extra: { gen: Number(values.gen) } })));
    break;
  case "agent":
    if (!values.town || !values.rig || !values.agent) fail("--town, --rig and --agent are required for an agent token");
    console.log(agentToken(vars.GASTOWN_JWT_SECRET, opt({ agentId: values.agent, rigId: values.rig, townId: values.town, userId: values.user })));
    break;
  case "sandbox":
    if (!values.town) fail("--town is required for a sandbox token");
    console.log(sandboxToken(vars.NEXTAUTH_SECRET, values.user, values.town, values.org[0] ?? null, opt({})));
    break;
  default:
    fail(`unknown kind ${values.kind}`);
}

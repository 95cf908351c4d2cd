// End-to-end suite: one worker for the whole run (restarted once, on the same persist dir, by
// the persistence test at the end). Suites live beside this file and share `ctx`.
import { before, after } from "node:test";
import { startWorker, startControlServer, makePersistDir, removePersistDir, migrateD1, client } from "./harness.mjs";
import { startDevPlatforms } from "./fixtures.mjs";
import personal from "./personal.mjs";
import auth from "./auth.mjs";
import badInput from "./bad_input.mjs";
import internal from "./internal.mjs";
import org from "./org.mjs";
import container from "./container.mjs";
import fuzz from "./fuzz.mjs";
import lifecycle from "./lifecycle.mjs";
import hardening from "./hardening.mjs";
import security from "./security.mjs";
import gateway from "./gateway.mjs";
import integrations from "./integrations.mjs";
import userTokens from "./user_tokens.mjs";
import work from "./work.mjs";
import ghToken from "./gh_token.mjs";
import refinery from "./refinery.mjs";
import kilo from "./kilo.mjs";
import mayor from "./mayor.mjs";
import events, { EVENTS_CAP } from "./events.mjs";
import streams from "./streams.mjs";
import typedClient from "./client.mjs";
import reliability from "./reliability.mjs";
import soak from "./soak.mjs";

// Alarms every second, a 2-second container-token throttle and a 2-second rotation grace, so
// the tests watch the main loop, the watchdog, token refresh and revocation happen in seconds
// instead of minutes and hours; quotas low enough to reach.
export const VARS = {
  TOWN_ALARM_INTERVAL_MS: "1000",
  WATCHDOG_INTERVAL_MS: "1000",
  CONTAINER_TOKEN_REFRESH_MS: "2000",
  CONTAINER_TOKEN_GRACE_MS: "2000",
  MAX_TOWNS_PER_OWNER: "20",
  MAX_RIGS_PER_TOWN: "20",
  MAX_AGENTS_PER_TOWN: "20",
  // Few enough events per agent that the events suite reaches the cap.
  AGENT_EVENTS_CAP: String(EVENTS_CAP),
  // A busy town's loop every second, as before the work loop had two cadences.
  TOWN_ALARM_ACTIVE_MS: "1000",
  // As in production: no file:// rigs (.dev.vars allows them for development; work.mjs's own
  // worker allows them for its local repositories).
  GASTOWN_ALLOW_LOCAL_GIT: "0",
};

const ctx = {
  persistDir: makePersistDir(),
  worker: null,
  control: null,
  platforms: null,
  vars: () => ({
    ...VARS,
    CONTAINER_CONTROL_URL: ctx.control.url,
    // GitHub and GitLab are the stand-in (tests/e2e/standins/git_platforms.mjs).
    GITHUB_API_URL: ctx.platforms.url,
    GITHUB_WEB_URL: ctx.platforms.url,
    GITLAB_URL: ctx.platforms.url,
  }),
  async restart() {
    await ctx.worker.stop();
    ctx.worker = await startWorker({ persistDir: ctx.persistDir, vars: ctx.vars() });
  },
};
ctx.call = client(() => ctx.worker.url);

before(async () => {
  migrateD1(ctx.persistDir);
  ctx.control = await startControlServer();
  ctx.platforms = await startDevPlatforms();
  ctx.worker = await startWorker({ persistDir: ctx.persistDir, vars: ctx.vars() });
});

after(async () => {
  await ctx.worker?.stop();
  ctx.control?.stop();
  await ctx.platforms?.stop();
  removePersistDir(ctx.persistDir);
});

// Every suite, in order. `GASTOWN_E2E_ONLY=work,ghToken node --test tests/e2e/all.test.mjs`
// runs only the named ones (for working on one suite; `npm test` runs them all).
const SUITES = { personal, auth, badInput, internal, org, container, hardening, security, gateway, integrations, userTokens, work, ghToken, refinery, kilo, mayor, events, client: typedClient, streams, reliability, soak, fuzz, lifecycle };
const only = process.env.GASTOWN_E2E_ONLY?.split(",").filter(Boolean);
for (const [name, suite] of Object.entries(SUITES)) {
  if (!only || only.includes(name)) suite(ctx);
}

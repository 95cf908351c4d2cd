// End-to-end suite: one worker for the whole run (restarted once, on the same persist dir, by
// the persistence test at the end). Suites live beside this file and share `ctx`.
import { before, after } from "node:test";
import { startWorker, makePersistDir, removePersistDir, migrateD1, client } from "./harness.mjs";
import personal from "./personal.mjs";
import auth from "./auth.mjs";
import badInput from "./bad_input.mjs";
import internal from "./internal.mjs";
import org from "./org.mjs";
import lifecycle from "./lifecycle.mjs";

export const VARS = { TOWN_ALARM_INTERVAL_MS: "1000", WATCHDOG_INTERVAL_MS: "1000", GASTOWN_TEST_HOOKS: "1" };

const ctx = {
  persistDir: makePersistDir(),
  worker: null,
  async restart() {
    await ctx.worker.stop();
    ctx.worker = await startWorker({ persistDir: ctx.persistDir, vars: VARS });
  },
};
ctx.call = client(() => ctx.worker.url);

before(async () => {
  migrateD1(ctx.persistDir);
  ctx.worker = await startWorker({ persistDir: ctx.persistDir, vars: VARS });
});

after(async () => {
  await ctx.worker?.stop();
  removePersistDir(ctx.persistDir);
});

personal(ctx);
auth(ctx);
badInput(ctx);
internal(ctx);
org(ctx);
lifecycle(ctx);

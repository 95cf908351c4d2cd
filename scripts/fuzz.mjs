#!/usr/bin/env node
// `npm run fuzz`: the long schemathesis run. Starts its own control server and worker (fresh
// persist dir), seeds the ids the run aims at, and fuzzes every operation for FUZZ_SECONDS
// (default 600) with FUZZ_EXAMPLES examples per operation (default 200), randomly seeded.
// Exits non-zero on any failure. The short deterministic run is part of `npm test`.
import { startWorker, startControlServer, makePersistDir, removePersistDir, migrateD1, client } from "../tests/e2e/harness.mjs";
import { seed, run } from "../tests/e2e/schemathesis.mjs";

const seconds = Number(process.env.FUZZ_SECONDS ?? 600);
const maxExamples = Number(process.env.FUZZ_EXAMPLES ?? 200);
const persistDir = makePersistDir();
migrateD1(persistDir);
const control = await startControlServer();
const worker = await startWorker({ persistDir, vars: { CONTAINER_CONTROL_URL: control.url } });
let code = 1;
try {
  const env = await seed(client(() => worker.url));
  console.log(`fuzzing ${worker.url} for up to ${seconds}s, ${maxExamples} examples per operation`);
  const result = await run(worker.url, env, { maxExamples, seconds, deterministic: false });
  console.log(result.output);
  code = result.code;
} finally {
  await worker.stop();
  control.stop();
  removePersistDir(persistDir);
}
process.exit(code);

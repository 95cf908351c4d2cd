#!/usr/bin/env bash
# Native unit tests, then end-to-end tests against the real worker in workerd. Exits non-zero on
# any failure. Run through `npm test`, which sets up and builds first.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
log "native unit tests (cargo test)"
cargo test --workspace --quiet
log "the TypeScript client: src/schema.ts matches the OpenAPI document, and its types check (tsc)"
node clients/ts/scripts/generate.mjs --check
log "the GitHub/GitLab stand-in, against GitHub's published OpenAPI description"
node --test --test-reporter=spec tests/e2e/standins/git_platforms.test.mjs
log "end-to-end tests (wrangler dev / workerd)"
node --test --test-reporter=spec tests/e2e/all.test.mjs

#!/usr/bin/env bash
# Builds the release worker into build/ and the container control server (native) into
# target/release/gastown-control (and gastown-control-debug, with the /debug routes the tests
# use), with the stand-ins of crates/standins beside it: the demo agent it runs by default
# (gastown-demo-agent, found beside the server's executable) and the stand-in gateway
# (gastown-gateway).
# Does nothing when all are newer than every input and were built with the same
# features, so wrangler's [build] hook costs nothing after `npm run dev` / `npm test` have built
# once. GASTOWN_FEATURES=test-hooks (set by `npm test`) compiles in the routes only the
# end-to-end tests use; every other build leaves them out.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
stamp=build/.stamp
features="${GASTOWN_FEATURES:-}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$features" ] && [ -x target/release/gastown-control ] && [ -x target/release/gastown-control-debug ] && [ -x target/release/gastown-gateway ] && [ -x target/release/gastown-demo-agent ] && [ -z "$(find src crates migrations Cargo.toml Cargo.lock -newer "$stamp" -print -quit)" ]; then
  exit 0
fi
log "building the container control server (native)"
cargo build --release --quiet -p gastown-control -p gastown-standins --bin gastown-control --bin gastown-gateway --bin gastown-demo-agent && cargo build --release --quiet -p gastown-control --features debug-routes --bin gastown-control-debug
log "building the release worker (wasm32)"
start=$(date +%s)
if [ -n "$features" ]; then
  worker-build --release --features "$features"
else
  worker-build --release
fi
printf '%s' "$features" > "$stamp"
log "built${features:+ with $features} in $(( $(date +%s) - start ))s: $(du -b build/index_bg.wasm 2>/dev/null | cut -f1) bytes of wasm"

#!/usr/bin/env bash
# Builds the release worker into build/ and the container control server (native) into
# target/release/gastown-control (and gastown-control-debug, with the /debug routes the tests
# use). Does nothing when all are newer than every input, so
# wrangler's [build] hook costs nothing after `npm run dev` / `npm test` have built once.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
stamp=build/.stamp
if [ -f "$stamp" ] && [ -x target/release/gastown-control ] && [ -x target/release/gastown-control-debug ] && [ -z "$(find src crates migrations Cargo.toml Cargo.lock -newer "$stamp" -print -quit)" ]; then
  exit 0
fi
log "building the container control server (native)"
cargo build --release --quiet -p gastown-control && cargo build --release --quiet -p gastown-control --features debug-routes --bin gastown-control-debug
log "building the release worker (wasm32)"
start=$(date +%s)
worker-build --release
touch "$stamp"
log "built in $(( $(date +%s) - start ))s: $(du -b build/index_bg.wasm 2>/dev/null | cut -f1) bytes of wasm"

#!/usr/bin/env bash
# Installs whatever is missing, from crates.io, npm and rustup only, and nothing that is already
# there: a second run takes a few seconds. Used by `npm run dev` and `npm test`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

WORKER_BUILD_VERSION=0.8.7
# The CLI must match the wasm-bindgen crate in Cargo.lock exactly (Cargo.toml pins it with `=`).
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)

# npm devDependencies: wrangler, node 22 (wrangler needs it; npm scripts put it first on PATH),
# binaryen (wasm-opt) and esbuild. `npm ci` when the lock changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm devDependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  log "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

pids=()
if ! worker-build --version 2>/dev/null | grep -q "$WORKER_BUILD_VERSION"; then
  log "installing worker-build $WORKER_BUILD_VERSION (a few minutes, once)"
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked --quiet &
  pids+=($!)
fi
if ! wasm-bindgen --version 2>/dev/null | grep -q "$WASM_BINDGEN_VERSION"; then
  log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (a few minutes, once)"
  # Not --locked: its own lock names a crate version the registry mirror may lack.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force --quiet &
  pids+=($!)
fi
for pid in "${pids[@]}"; do
  wait "$pid"
done

# schemathesis (PyPI), for the API fuzz run inside `npm test` and `npm run fuzz`.
SCHEMATHESIS_VERSION=4.32.5
if ! .tools/venv/bin/schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into .tools/venv"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

if [ ! -f .dev.vars ]; then
  cp .dev.vars.example .dev.vars
  log "created .dev.vars from .dev.vars.example (development secrets)"
else
  # A variable added to the example since .dev.vars was made is added to it, never overwritten.
  while IFS= read -r line; do
    name=${line%%=*}
    if ! grep -q "^${name}=" .dev.vars; then
      printf '%s\n' "$line" >> .dev.vars
      log "added ${name} to .dev.vars from .dev.vars.example"
    fi
  done < <(grep -E '^[A-Z0-9_]+=' .dev.vars.example)
fi

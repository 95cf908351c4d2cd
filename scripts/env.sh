# Sourced by the other scripts: one place for paths and the offline build overrides.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$ROOT/node_modules/.bin:$HOME/.cargo/bin:$PATH"
# worker-build would download these; use the registry-installed ones (DESIGN.md §8).
export WASM_BINDGEN_BIN="$HOME/.cargo/bin/wasm-bindgen"
export WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$ROOT/node_modules/.bin/esbuild"
export WRANGLER_SEND_METRICS=false
log() { printf '\033[1m[gastown]\033[0m %s\n' "$*" >&2; }
export CLOUDFLARE_CF_FETCH_ENABLED=false

#!/usr/bin/env bash
# Builds the example plugins and the test plugin for wasm32-wasip2 and copies the
# example plugins into plugins/dist/, the folder the embedded default
# configuration loads.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=(agent-router carrier-trunk header-rules sip-users)
args=()
for p in "${examples[@]}" test-plugin; do args+=(-p "$p"); done
cargo build --locked --profile plugin --target wasm32-wasip2 "${args[@]}"
mkdir -p plugins/dist
for p in "${examples[@]}"; do
  # Write then rename, so a running proxy never reads half a file.
  cp "target/wasm32-wasip2/plugin/${p//-/_}.wasm" "plugins/dist/.$p.wasm.tmp"
  mv "plugins/dist/.$p.wasm.tmp" "plugins/dist/$p.wasm"
done

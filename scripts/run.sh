#!/usr/bin/env bash
# Builds weir in release mode and runs it: on the embedded default configuration,
# or with the arguments given (e.g. `scripts/run.sh -c weir.toml`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
cargo build --release --locked -p weir
scripts/build-plugins.sh
exec target/release/weir run "$@"

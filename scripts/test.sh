#!/usr/bin/env bash
# Installs what the tests need and runs every test: formatting, lints, unit and
# simulation tests, corpus tests, the bounded mutation test and the end-to-end
# tests against real peers. Builds once, in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
corpora="${WEIR_CORPORA:-$(cd .. && pwd)/shared/corpora}"
if [[ ! -d "$corpora" ]]; then
  echo "NOTE: external corpora not found at $corpora: the corpus tests will report SKIPPED (set WEIR_CORPORA)" >&2
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "NOTE: not root: the network-namespace corpus tests will report SKIPPED" >&2
fi
cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo build --release --locked --workspace
scripts/build-plugins.sh
cargo test --release --locked --workspace -- --test-threads 2

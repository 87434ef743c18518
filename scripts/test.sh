#!/usr/bin/env bash
# Installs what the tests need and runs every test: formatting, lints, unit and
# simulation tests, corpus tests, the bounded mutation test and the end-to-end
# tests against real peers. Builds once, in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo build --release --locked --workspace
cargo test --release --locked --workspace -- --test-threads 2

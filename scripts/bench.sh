#!/usr/bin/env bash
# Call-rate benchmark, weir beside Kamailio in one sitting, with the SIPp harness
# in ../shared/bench (or $WEIR_BENCH). Prints one RESULT line per run.
#   scripts/bench.sh ruri       routing by Request-URI: Kamailio `ruri`, weir without plugins
#   scripts/bench.sh plugins    routing by a program (ROUTE_BY=proxy): Kamailio `script`,
#                               weir without plugins (by R-URI, the reference rate), and
#                               weir with agent-router routing through the registry
#   DUR=10 scripts/bench.sh ... a quicker look (DUR=30 per step is the harness default)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${WEIR_BENCH:-$(cd .. && pwd)/shared/bench}"
[[ -x "$BENCH/sip-cps.sh" ]] || { echo "no SIPp harness at $BENCH (set WEIR_BENCH)" >&2; exit 2; }
what="${1:-ruri}"
scripts/setup.sh bench
cargo build --release --locked -p weir
if [[ "$what" == plugins ]]; then
  scripts/build-plugins.sh
  echo "== Kamailio (script, 2 children, TLSF) on 127.0.0.1:5060" >&2
  KAM_MEMMGR=tlsf "$BENCH/kamailio/run-kamailio.sh" start script 2 >/dev/null
  trap '"$BENCH/kamailio/run-kamailio.sh" stop >/dev/null 2>&1 || true' EXIT
  sleep 1
  kam=$(ROUTE_BY=proxy LABEL=kamailio-script "$BENCH/sip-cps.sh" 127.0.0.1:5060)
  "$BENCH/kamailio/run-kamailio.sh" stop >/dev/null
  trap - EXIT
  echo "== weir without plugins (by Request-URI) on 127.0.0.1:5070" >&2
  target/release/weir run -c scripts/bench.toml &
  weir_pid=$!
  trap 'kill $weir_pid 2>/dev/null || true' EXIT
  sleep 1
  plain=$(ROUTE_BY=ruri LABEL=weir-ruri PROXY_PID=$weir_pid "$BENCH/sip-cps.sh" 127.0.0.1:5070)
  kill $weir_pid; wait $weir_pid 2>/dev/null || true
  echo "== weir with agent-router (registry) on 127.0.0.1:5070" >&2
  target/release/weir run -c scripts/bench-plugins.toml &
  weir_pid=$!
  sleep 1
  curl -fsS -X PUT 127.0.0.1:9071/v1/registry/call:callee \
    -d '{"value": "sip:callee@127.0.0.1:5080"}' >/dev/null
  plug=$(ROUTE_BY=proxy LABEL=weir-plugin PROXY_PID=$weir_pid "$BENCH/sip-cps.sh" 127.0.0.1:5070)
  echo "kamailio script:      $kam"
  echo "weir, no plugin:      $plain"
  echo "weir, agent-router:   $plug"
  exit 0
fi
export ROUTE_BY=ruri

echo "== Kamailio (ruri, 2 children, TLSF) on 127.0.0.1:5060" >&2
KAM_MEMMGR=tlsf "$BENCH/kamailio/run-kamailio.sh" start ruri 2 >/dev/null
trap '"$BENCH/kamailio/run-kamailio.sh" stop >/dev/null 2>&1 || true' EXIT
sleep 1
kam=$(LABEL=kamailio-ruri "$BENCH/sip-cps.sh" 127.0.0.1:5060)
"$BENCH/kamailio/run-kamailio.sh" stop >/dev/null
trap - EXIT

echo "== weir (scripts/bench.toml) on 127.0.0.1:5070" >&2
target/release/weir run -c scripts/bench.toml &
weir_pid=$!
trap 'kill $weir_pid 2>/dev/null || true' EXIT
sleep 1
weir=$(LABEL=weir-ruri PROXY_PID=$weir_pid "$BENCH/sip-cps.sh" 127.0.0.1:5070)
echo "kamailio: $kam"
echo "weir:     $weir"

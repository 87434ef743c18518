#!/usr/bin/env bash
# Call-rate benchmark, weir beside Kamailio in one sitting, with the SIPp harness
# in ../shared/bench (or $WEIR_BENCH): the same job for both, routing by
# Request-URI (ROUTE_BY=ruri). Prints the two RESULT lines.
#   scripts/bench.sh            full search (DUR=30 per step, as the harness README says)
#   DUR=10 scripts/bench.sh     a quicker look
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${WEIR_BENCH:-$(cd .. && pwd)/shared/bench}"
[[ -x "$BENCH/sip-cps.sh" ]] || { echo "no SIPp harness at $BENCH (set WEIR_BENCH)" >&2; exit 2; }
scripts/setup.sh bench
cargo build --release --locked -p weir
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

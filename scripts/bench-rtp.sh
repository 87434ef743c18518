#!/usr/bin/env bash
# RTP relay benchmark: rtpengine (userspace forwarding, the shared harness's
# rtp/rtp-bench.sh) and weir's relay, one sitting, same load generator
# (rtpload: 2 streams per call of 172-byte PCMU packets every 20 ms; loss,
# relay latency, jitter) and the same process monitor.
#
#   scripts/bench-rtp.sh [CALLS ...]        (default: 250 500 1000 1500 2000 3000 4000)
#   SKIP_RTPENGINE=1 / SKIP_WEIR=1          one side only
#   DUR=20 STOP_LOSS_PCT=5 WORKERS=2        as in the harness; WORKERS: weir's [media] workers
#   SRTP=1                                  weir terminates SRTP (SDES, AES_CM_128_HMAC_SHA1_80)
#                                           on the caller's leg (the test plugin's relay-srtp-caller),
#                                           load from tests/src/bin/srtp-load (rtpload has no SRTP);
#                                           rtpengine is skipped
#   LOADGEN=srtp-load                       plain RTP from that generator too, to compare
#   VIA_PLUGIN=1                            plain relay chosen by the test plugin (media = relay)
#   MUX=1                                   both parties put a=rtcp-mux in their SDP (the relay
#                                           then holds one socket per party instead of two)
#   FLOOR=1                                 instead of weir, tests/src/bin/udp-floor: one recvfrom
#                                           and one sendto per packet on epoll and nothing else,
#                                           the kernel's cost per relayed packet here (plain RTP
#                                           from srtp-load; its "KB/call" is the sockets' only)
#
# weir's calls are set up by SIP (scripts/rtp-calls.py is caller and callee;
# weir rewrites the SDP and picks the ports) instead of rtpengine's ng
# protocol, then torn down with BYE. Prints one line per level and relay.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${WEIR_BENCH:-$(cd .. && pwd)/shared/bench}"
[[ -x "$BENCH/rtp/rtp-bench.sh" ]] || { echo "no RTP harness at $BENCH/rtp (set WEIR_BENCH)" >&2; exit 2; }
levels=("$@"); [[ ${#levels[@]} -eq 0 ]] && levels=(250 500 1000 1500 2000 3000 4000)
DUR="${DUR:-20}"
STOP_LOSS_PCT="${STOP_LOSS_PCT:-5}"
WORKERS="${WORKERS:-2}"
OUT="${BENCH_OUT:-/tmp/weir-bench}/rtp-weir-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
scripts/setup.sh bench
cargo build --release --locked -p weir
ulimit -n "$(ulimit -Hn)"

SRTP="${SRTP:-0}"
LOADGEN="${LOADGEN:-rtpload}"
[[ "$SRTP" == 1 ]] && LOADGEN=srtp-load && SKIP_RTPENGINE=1
if [[ "${SKIP_RTPENGINE:-0}" != 1 ]]; then
  echo "== rtpengine (userspace, $WORKERS threads)" >&2
  RTPE_THREADS="$WORKERS" DUR="$DUR" STOP_LOSS_PCT="$STOP_LOSS_PCT" "$BENCH/rtp/rtp-bench.sh" "${levels[@]}" \
    | sed 's/^/rtpengine: /' || true
fi
[[ "${SKIP_WEIR:-0}" == 1 ]] && exit 0
FLOOR="${FLOOR:-0}"
# The floor forwarder moves plain RTP only.
[[ "$FLOOR" == 1 ]] && SRTP=0 && LOADGEN=srtp-load

echo "== weir relay ($WORKERS workers, SRTP=$SRTP, VIA_PLUGIN=${VIA_PLUGIN:-0}, FLOOR=$FLOOR, load: $LOADGEN)" >&2
gcc -O2 -Wall -o "$OUT/rtpload" "$BENCH/rtp/rtpload.c"
cargo build --release --locked -p weir-e2e --bin srtp-load --bin udp-floor
UAS_SIP=5072
# The plain relay chosen by the same plugin (VIA_PLUGIN=1) tells the
# plugin runtime's share from SRTP's.
plugin_media=""
[[ "$SRTP" == 1 ]] && plugin_media=relay-srtp-caller
[[ "${VIA_PLUGIN:-0}" == 1 && "$SRTP" != 1 ]] && plugin_media=relay
if [[ -n "$plugin_media" ]]; then
  scripts/build-plugins.sh >/dev/null
  mkdir -p "$OUT/plugins"
  cp target/wasm32-wasip2/plugin/test_plugin.wasm "$OUT/plugins/test-plugin.wasm"
  media_mode=plugin
  plugin_toml="[plugins]
dir = \"$OUT/plugins\"
chain = [\"test-plugin\"]
[plugins.test-plugin]
capabilities = [\"registry\"]
[plugins.test-plugin.config]
target = \"sip:callee@127.0.0.1:$UAS_SIP\"
media = \"$plugin_media\""
  setup_flags=(--uas-port "$UAS_SIP")
  [[ "$SRTP" == 1 ]] && setup_flags=(--srtp --uas-port "$UAS_SIP")
else
  media_mode=always
  plugin_toml=""
  setup_flags=(--uas-port "$UAS_SIP")
fi
cat > "$OUT/weir.toml" <<CFG
[sip]
listen = ["udp:127.0.0.1:5070"]
$plugin_toml
[media]
mode = "$media_mode"
srtp_over_plain_sip = true
port_range = "30000-59999"
max_sessions = 100000
workers = $WORKERS
timeout = "120s"
[log]
level = "warn"
CFG
pid=""
trap 'kill $pid 2>/dev/null || true' EXIT
if [[ "$FLOOR" != 1 ]]; then
  target/release/weir run -c "$OUT/weir.toml" 2>"$OUT/weir.log" &
  pid=$!
  sleep 1
  rss_idle=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
fi
for n in "${levels[@]}"; do
  d="$OUT/calls-$n"; mkdir -p "$d"
  if [[ "$FLOOR" == 1 ]]; then
    target/release/udp-floor --calls "$n" --first-port 30000 --caller 21000 --callee 21002 \
      --workers "$WORKERS" --out "$d/ports.txt" &
    pid=$!
    for _ in $(seq 100); do [[ -s "$d/ports.txt" ]] && break; sleep 0.1; done
    rss_idle=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
  else
    python3 scripts/rtp-calls.py --proxy 127.0.0.1:5070 --state "$d/state.json" "${setup_flags[@]}" setup "$n" --out "$d/ports.txt" 2>"$d/setup.txt"
  fi
  rss_calls=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
  if [[ "$LOADGEN" == srtp-load ]]; then
    target/release/srtp-load --ports "$d/ports.txt" --caller 21000 --callee 21002 --seconds "$DUR" --out "$d/rtpload.json" >/dev/null &
  else
    "$OUT/rtpload" -p "$d/ports.txt" -a 21000 -b 21002 -d "$DUR" -o "$d/rtpload.json" >/dev/null &
  fi
  lp=$!
  python3 "$BENCH/lib/procmon.py" --proxy "$pid" --uac "$lp" --until "$lp" --out "$d/mon.json" &
  mp=$!
  wait "$lp"; wait "$mp"
  if [[ "$FLOOR" == 1 ]]; then
    kill "$pid"; wait "$pid" 2>/dev/null || true
  else
    python3 scripts/rtp-calls.py --proxy 127.0.0.1:5070 --state "$d/state.json" teardown 2>"$d/teardown.txt"
  fi
  line=$(python3 - "$d" "$n" "$rss_calls" "$rss_idle" <<'PY'
import json, sys
d, n, rss_calls, rss_idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(d + "/rtpload.json")); m = json.load(open(d + "/mon.json"))
relayed = r["received"] / r["duration_s"]
cpu = m["proxy_cpu_cores"]
print("calls=%s streams=%d target_pps=%d relayed_pps=%d loss=%.3f%% lat_p50=%dus p99=%dus p99.9=%dus max=%dus "
      "jitter_avg=%s relay_cpu=%.2f cores (%.1f us/pkt) tester_cpu=%.2f softirq=%.2f busy=%.2f "
      "relay_rss=%.1fMB rss_with_calls_before_media=%.1fMB (%.1f KB/call over idle)" % (
      n, r["streams"], r["target_pps"], relayed, r["loss_pct"], r["lat_p50_us"], r["lat_p99_us"],
      r["lat_p99.9_us"], r["lat_max_us"],
      ("%.1fus" % r["jitter_avg_us"]) if "jitter_avg_us" in r else "n/a", cpu, cpu * 1e6 / max(relayed, 1),
      m["uac_cpu_cores"], m["softirq_cores"], m["machine_busy_cores"], m["proxy_peak_rss_kb"] / 1024,
      rss_calls / 1024, (rss_calls - rss_idle) / int(n))
      + (" refused_at_caller=%d p99_to_callee=%dus p99_to_caller=%dus" % (
          r["refused"], r["lat_p99_to_callee_us"], r["lat_p99_to_caller_us"]) if "refused" in r else ""))
PY
)
  echo "weir: $line" | tee -a "$OUT/levels.txt"
  loss=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["loss_pct"])' "$d/rtpload.json")
  if awk -v l="$loss" -v m="$STOP_LOSS_PCT" 'BEGIN{exit !(l>m)}'; then
    echo "loss $loss% > $STOP_LOSS_PCT%: stopping" >&2
    break
  fi
  sleep 3
done
echo "results: $OUT" >&2

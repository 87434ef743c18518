#!/usr/bin/env bash
# Call-rate benchmark, weir beside Kamailio in one sitting, with the SIPp harness
# in ../shared/bench (or $WEIR_BENCH). Prints one RESULT line per run.
#   scripts/bench.sh ruri       routing by Request-URI: Kamailio `ruri`, weir without plugins
#   scripts/bench.sh plugins    routing by a program (ROUTE_BY=proxy): Kamailio `script`,
#                               weir without plugins (by R-URI, the reference rate), and
#                               weir with agent-router routing through the registry
#   scripts/bench.sh digest     a digest challenge on every INVITE (the harness's UAC with a
#                               407 round: scripts/bench-uac-digest.xml): Kamailio with
#                               pv_proxy_authenticate (tests/kamailio/carrier.cfg), weir with
#                               sip-users + agent-router; and weir without plugins, plain UDP
#   scripts/bench.sh tls        SIP over TLS with connection reuse: SIPp's TCP carried over one
#                               TLS connection by stunnel (SIPp here has no TLS) to the proxy's
#                               TLS listener, routing by Request-URI to the UAS over UDP:
#                               Kamailio (its tls module) and weir; and weir plain UDP
#   DUR=10 scripts/bench.sh ... a quicker look (DUR=30 per step is the harness default)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${WEIR_BENCH:-$(cd .. && pwd)/shared/bench}"
[[ -x "$BENCH/sip-cps.sh" ]] || { echo "no SIPp harness at $BENCH (set WEIR_BENCH)" >&2; exit 2; }
what="${1:-ruri}"
scripts/setup.sh bench
cargo build --release --locked -p weir

# kamailio VARIANT ROUTE_BY: one search against Kamailio (2 children, TLSF) on :5060.
kamailio() {
  echo "== Kamailio ($1, 2 children, TLSF) on 127.0.0.1:5060" >&2
  KAM_MEMMGR=tlsf "$BENCH/kamailio/run-kamailio.sh" start "$1" 2 >/dev/null
  trap '"$BENCH/kamailio/run-kamailio.sh" stop >/dev/null 2>&1 || true' EXIT
  sleep 1
  ROUTE_BY="$2" LABEL="kamailio-$1" "$BENCH/sip-cps.sh" 127.0.0.1:5060
  "$BENCH/kamailio/run-kamailio.sh" stop >/dev/null
  trap - EXIT
}

# weir CONFIG LABEL ROUTE_BY [REGISTRY_KEY REGISTRY_VALUE]: one search against
# weir on :5070, with a registry entry set through its admin API (:9071) first.
weir() {
  echo "== weir ($2, $1) on 127.0.0.1:5070" >&2
  target/release/weir run -c "$1" &
  local pid=$!
  trap "kill $pid 2>/dev/null || true" EXIT
  sleep 1
  if [[ $# -ge 5 ]]; then
    curl -fsS -X PUT "127.0.0.1:9071/v1/registry/$4" -d "{\"value\": \"$5\"}" >/dev/null
  fi
  ROUTE_BY="$3" LABEL="weir-$2" PROXY_PID=$pid "$BENCH/sip-cps.sh" 127.0.0.1:5070
  kill $pid
  wait $pid 2>/dev/null || true
  trap - EXIT
}

# A copy of the harness whose UAC answers a 407 on every INVITE.
digest_harness() {
  local tmp; tmp="$(mktemp -d)"
  cp -r "$BENCH" "$tmp/bench"
  cp scripts/bench-uac-digest.xml "$tmp/bench/sipp/uac-invite-sdp.xml"
  echo "$tmp/bench"
}

# kamailio_digest: Kamailio (2 children, TLSF) challenging every INVITE on :5060.
kamailio_digest() {
  echo "== Kamailio (digest on every INVITE, 2 children, TLSF) on 127.0.0.1:5060" >&2
  local cfg; cfg="$(mktemp --suffix=.cfg)"
  sed -e 's/@PORT@/5060/g; s/@UAS_PORT@/5080/g; s/@USER@/bench/g; s/@PASSWORD@/bench-pw/g' \
      -e '/xlog(/d; s/^debug=2/debug=1/; s/"carrier.example"/"bench"/g' tests/kamailio/carrier.cfg > "$cfg"
  /usr/sbin/kamailio -f "$cfg" -x tlsf -m 256 -M 16 -P "$cfg.pid" -E 2>"$cfg.log" &
  sleep 1.5
  trap 'kill "$(cat "'"$cfg"'.pid")" 2>/dev/null || true' EXIT
  ROUTE_BY=proxy LABEL="kamailio-digest" PROXY_PID="$(cat "$cfg.pid")" "$1/sip-cps.sh" 127.0.0.1:5060
  kill "$(cat "$cfg.pid")" 2>/dev/null || true
  trap - EXIT
  sleep 1
}

# tls_front DIR TLS_PORT: stunnel taking the harness's TCP on 127.0.0.1:5090 to a TLS
# listener on TLS_PORT (one TLS connection per TCP connection; SIPp opens one),
# checking the proxy's certificate (DIR/cert.pem). Prints its PID.
tls_front() {
  cat > "$1/stunnel-$2.conf" <<EOF
foreground = yes
[sip]
client = yes
accept = 127.0.0.1:5090
connect = 127.0.0.1:$2
verifyChain = yes
CAfile = $1/cert.pem
checkIP = 127.0.0.1
sslVersionMin = TLSv1.2
EOF
  stunnel "$1/stunnel-$2.conf" >"$1/stunnel-$2.log" 2>&1 &
  echo $!
}

# tls_run LABEL PROXY_PID DIR TLS_PORT: one search through stunnel to the proxy's TLS
# port, then the proxy is stopped.
tls_run() {
  trap "kill $2 2>/dev/null || true" EXIT
  sleep 1
  local front; front=$(tls_front "$3" "$4")
  sleep 1
  TRANSPORT=tcp ROUTE_BY=ruri LABEL="$1" PROXY_PID="$2" "$BENCH/sip-cps.sh" 127.0.0.1:5090 || true
  kill "$front" "$2" 2>/dev/null || true
  wait "$front" "$2" 2>/dev/null || true
  trap - EXIT
}

# kamailio_tls DIR: Kamailio `ruri` (2 children, TLSF) with a TLS listener on :5061.
kamailio_tls() {
  echo "== Kamailio (ruri over TLS, 2 children, TLSF) on tls:127.0.0.1:5061" >&2
  local d="$1"
  cat > "$d/tls.cfg" <<EOF
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = $d/key.pem
certificate = $d/cert.pem
EOF
  sed -e 's|^listen=tcp:127.0.0.1:5060$|&\nlisten=tls:127.0.0.1:5061\nenable_tls=yes|' \
      -e 's|^loadmodule "cfg_rpc.so"$|&\nloadmodule "tls.so"\nmodparam("tls", "config", "'"$d"'/tls.cfg")|' \
      "$BENCH/kamailio/proxy.cfg" > "$d/kamailio.cfg"
  /usr/sbin/kamailio -f "$d/kamailio.cfg" -A WITH_RURI -A KAM_CHILDREN=2 -A "CTL_SOCK=\"unix:$d/ctl\"" \
      -x tlsf -m 256 -M 16 -DD -E -u root -g root -Y "$d" >"$d/kamailio.log" 2>&1 </dev/null &
  tls_run kamailio-tls $! "$d" 5061
  sleep 1
}

# weir_tls DIR: weir by R-URI with a TLS listener on :5071.
weir_tls() {
  echo "== weir (ruri over TLS) on tls:127.0.0.1:5071" >&2
  local d="$1"
  cat > "$d/weir.toml" <<EOF
[sip]
listen = ["udp:127.0.0.1:5070", "tls:127.0.0.1:5071"]
[tls]
certificate = "$d/cert.pem"
private_key = "$d/key.pem"
[log]
level = "warn"
EOF
  target/release/weir run -c "$d/weir.toml" &
  tls_run weir-tls $! "$d" 5071
}

if [[ "$what" == tls ]]; then
  command -v stunnel >/dev/null || { echo "stunnel is missing (scripts/setup.sh bench installs stunnel4)" >&2; exit 2; }
  [[ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ]] \
    || { echo "Kamailio's tls module is missing (scripts/setup.sh bench installs kamailio-tls-modules)" >&2; exit 2; }
  d="$(mktemp -d)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$d/key.pem" -out "$d/cert.pem" -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null
  kam=$(kamailio_tls "$d")
  plain=$(weir scripts/bench.toml ruri ruri)
  tls=$(weir_tls "$d")
  echo "kamailio, TLS:        $kam"
  echo "weir, plain UDP:      $plain"
  echo "weir, TLS:            $tls"
elif [[ "$what" == digest ]]; then
  scripts/build-plugins.sh
  harness="$(digest_harness)"
  kam=$(kamailio_digest "$harness")
  plain=$(weir scripts/bench.toml ruri ruri)
  BENCH="$harness"
  dig=$(weir scripts/bench-digest.toml digest proxy call:callee sip:callee@127.0.0.1:5080)
  echo "kamailio, digest:     $kam"
  echo "weir, plain UDP:      $plain"
  echo "weir, digest:         $dig"
elif [[ "$what" == plugins ]]; then
  scripts/build-plugins.sh
  kam=$(kamailio script proxy)
  plain=$(weir scripts/bench.toml ruri ruri)
  plug=$(weir scripts/bench-plugins.toml plugin proxy call:callee sip:callee@127.0.0.1:5080)
  echo "kamailio script:      $kam"
  echo "weir, no plugin:      $plain"
  echo "weir, agent-router:   $plug"
else
  kam=$(kamailio ruri ruri)
  plain=$(weir scripts/bench.toml ruri ruri)
  echo "kamailio: $kam"
  echo "weir:     $plain"
fi

#!/usr/bin/env bash
# Installs what Weir needs on a fresh Debian machine.
#   setup.sh run    the Rust toolchain only (to build and run weir)
#   setup.sh test   plus the real SIP peers and tools the tests start (SIPp, Kamailio,
#                   SIPVicious, baresip, iproute2, openssl)
#   setup.sh bench  the same, plus stunnel, Kamailio's tls module (Kamailio is also the
#                   reference proxy of the benchmarks) and rtpengine (the reference relay)
set -euo pipefail
what="${1:-run}"

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup first (https://rustup.rs)" >&2
  exit 1
fi

if [[ "$what" == test || "$what" == bench ]]; then
  sudo=""
  [[ "$(id -u)" != 0 ]] && sudo="sudo"
  need=()
  command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
  command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v svcrack >/dev/null 2>&1 || need+=(sipvicious)
  command -v baresip >/dev/null 2>&1 || need+=(baresip)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  if [[ "$what" == bench ]]; then
    # The TLS benchmark: stunnel carries SIPp's TCP over TLS; Kamailio's tls module.
    command -v stunnel >/dev/null 2>&1 || need+=(stunnel4)
    [[ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ]] || need+=(kamailio-tls-modules)
    # The RTP benchmark's reference relay, and the compiler for its load generator.
    command -v rtpengine >/dev/null 2>&1 || need+=(rtpengine)
    command -v gcc >/dev/null 2>&1 || need+=(gcc)
  fi
  if ((${#need[@]})); then
    echo "setup: installing ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# Plugins are WebAssembly components: the wasm32-wasip2 standard library.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2 >/dev/null
fi

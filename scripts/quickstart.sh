#!/usr/bin/env bash
# hsmux quick start: build, start an agent over three SoftHSM tokens, and use the
# virtual token from pkcs11-tool (list, log in, generate EC and RSA keys, sign, verify).
#
#   bash scripts/quickstart.sh [--no-build] [--work-dir DIR] [--port PORT]
#
#   --no-build      skip install-deps.sh and the build; use the existing build tree
#                   (scripts/test.sh uses this after building and testing)
#   --work-dir DIR  demo files go here (default ./out/demo); wiped first
#   --port PORT     agent port (default 7443, or a free port if 7443 is taken)
# Environment: HSMUX_BUILD_DIR (default build), HSMUX_READY_TIMEOUT seconds (default 60).
# Ends with "quickstart: OK", or "quickstart: FAILED at step: ..." and a non-zero exit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

BUILD_FIRST=1
WORK="$REPO/out/demo"
PORT=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --no-build) BUILD_FIRST=0 ;;
    --work-dir) [ "$#" -ge 2 ] || { echo "quickstart: --work-dir needs a value" >&2; exit 2; }; WORK="$2"; shift ;;
    --port) [ "$#" -ge 2 ] || { echo "quickstart: --port needs a value" >&2; exit 2; }; PORT="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

BUILD="${HSMUX_BUILD_DIR:-build}"
case "$BUILD" in /*) ;; *) BUILD="$REPO/$BUILD" ;; esac
export HSMUX_BUILD_DIR="$BUILD"
READY_TIMEOUT="${HSMUX_READY_TIMEOUT:-60}"
MODULE="$BUILD/module/libhsmux-pkcs11.so"
HSMUXD="$BUILD/agent/hsmuxd"

STEP="start"
AGENT_PID=""
AGENT_LOG=""

step() { STEP="$*"; echo "== step: $*"; }

stop_agent() {
  [ -n "$AGENT_PID" ] || return 0
  local pid="$AGENT_PID" i
  AGENT_PID=""
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "quickstart: hsmuxd (pid $pid) did not exit 10 s after SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

on_exit() {
  local rc=$?
  trap - EXIT
  if [ "$rc" -ne 0 ]; then
    echo "quickstart: FAILED at step: $STEP (exit $rc)" >&2
    if [ -n "$AGENT_LOG" ] && [ -s "$AGENT_LOG" ]; then
      echo "---- last lines of $AGENT_LOG ----" >&2
      tail -n 30 "$AGENT_LOG" >&2
      echo "----" >&2
    fi
    if [ -n "$AGENT_LOG" ] && [ -s "$(dirname "$AGENT_LOG")/module.log" ]; then
      echo "---- last lines of $(dirname "$AGENT_LOG")/module.log ----" >&2
      tail -n 30 "$(dirname "$AGENT_LOG")/module.log" >&2
      echo "----" >&2
    fi
  fi
  stop_agent
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build -------------------------------------------------------------------------------------
if [ "$BUILD_FIRST" -eq 1 ]; then
  step "install dependencies (scripts/install-deps.sh)"
  bash "$REPO/scripts/install-deps.sh"
  step "configure and build ($BUILD)"
  cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo
  cmake --build "$BUILD" -j2
fi
step "check the build tree ($BUILD)"
for f in "$MODULE" "$HSMUXD" "$BUILD/agent/hsmuxctl"; do
  [ -e "$f" ] || { echo "quickstart: missing $f (build first, or drop --no-build)" >&2; exit 1; }
done
for tool in openssl pkcs11-tool softhsm2-util python3; do
  command -v "$tool" >/dev/null || { echo "quickstart: $tool not found (run scripts/install-deps.sh)" >&2; exit 1; }
done

# --- work directory ----------------------------------------------------------------------------
step "fresh work directory"
case "$WORK" in /*) ;; *) WORK="$PWD/$WORK" ;; esac
# Only wipe a directory this script made (it carries a marker), or an empty one.
if [ -d "$WORK" ] && [ -n "$(ls -A "$WORK")" ] && [ ! -e "$WORK/.hsmux-demo" ]; then
  echo "quickstart: $WORK exists and was not made by quickstart.sh; refusing to wipe it" >&2
  exit 1
fi
rm -rf "$WORK"
mkdir -p "$WORK"
touch "$WORK/.hsmux-demo"
WORK="$(cd "$WORK" && pwd)"
echo "work directory: $WORK"

port_free() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}
if [ -z "$PORT" ]; then
  if port_free 7443; then
    PORT=7443
  else
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    echo "port 7443 is taken; using $PORT"
  fi
fi

step "test PKI (scripts/make-test-pki.sh)"
bash "$REPO/scripts/make-test-pki.sh" "$WORK"

step "SoftHSM member tokens member-a, member-b, member-c (scripts/make-softhsm-tokens.sh)"
SOFTHSM_EXPORT="$(bash "$REPO/scripts/make-softhsm-tokens.sh" "$WORK")"
SOFTHSM_CONF_FILE="$WORK/softhsm2.conf"
echo "$SOFTHSM_EXPORT"

step "agent and module configuration (scripts/make-demo-config.sh)"
bash "$REPO/scripts/make-demo-config.sh" "$WORK" "$PORT"

# --- agent -------------------------------------------------------------------------------------
step "start hsmuxd on 127.0.0.1:$PORT"
AGENT_LOG="$WORK/hsmuxd.log"
SOFTHSM2_CONF="$SOFTHSM_CONF_FILE" "$HSMUXD" --config "$WORK/hsmuxd.yaml" >"$AGENT_LOG" 2>&1 &
AGENT_PID=$!
deadline=$((SECONDS + READY_TIMEOUT))
until grep -q '^hsmuxd: serving on ' "$AGENT_LOG" 2>/dev/null; do
  if ! kill -0 "$AGENT_PID" 2>/dev/null; then
    rc=0; wait "$AGENT_PID" || rc=$?
    AGENT_PID=""
    echo "quickstart: hsmuxd exited (status $rc) before it was ready" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "quickstart: hsmuxd not ready after ${READY_TIMEOUT}s (no 'hsmuxd: serving on' line)" >&2
    exit 1
  fi
  sleep 0.2
done
grep -m1 '^hsmuxd: serving on ' "$AGENT_LOG"

step "create the group's replication key (hsmuxctl create-replication-key)"
"$(dirname "$HSMUXD")/hsmuxctl" create-replication-key --config "$WORK/hsmuxd.yaml"

# --- pkcs11-tool against the virtual token -------------------------------------------------------
export HSMUX_CONFIG="$WORK/module.yaml"
PIN_FILE="$WORK/secrets/client-pin"
p11() { pkcs11-tool --module "$MODULE" "$@"; }
# The PIN goes on pkcs11-tool's command line from the file; it is never echoed.
p11login() { p11 --login --pin "$(head -n1 "$PIN_FILE")" "$@"; }

step "list slots"
p11 --list-slots

step "list token slots"
p11 --list-token-slots | tee "$WORK/token-slots.txt"
grep -q 'hsmux-demo' "$WORK/token-slots.txt" || { echo "quickstart: token hsmux-demo not listed" >&2; exit 1; }

step "log in and list objects"
p11login --list-objects

step "generate an EC P-256 key pair (id 01, label demo-ec)"
p11login --keypairgen --key-type EC:prime256v1 --id 01 --label demo-ec

step "generate an RSA-2048 key pair (id 02, label demo-rsa)"
p11login --keypairgen --key-type rsa:2048 --id 02 --label demo-rsa

step "list objects after key generation"
p11login --list-objects | tee "$WORK/objects.txt"
for label in demo-ec demo-rsa; do
  grep -q "label:[[:space:]]*$label" "$WORK/objects.txt" || { echo "quickstart: $label not listed" >&2; exit 1; }
done

step "export the public keys"
p11login --read-object --type pubkey --id 01 -o "$WORK/ec-pub.der"
p11login --read-object --type pubkey --id 02 -o "$WORK/rsa-pub.der"
openssl pkey -pubin -inform DER -in "$WORK/ec-pub.der" -out "$WORK/ec-pub.pem"
openssl pkey -pubin -inform DER -in "$WORK/rsa-pub.der" -out "$WORK/rsa-pub.pem"
openssl pkey -pubin -in "$WORK/ec-pub.pem" -noout -text | head -n 1
openssl pkey -pubin -in "$WORK/rsa-pub.pem" -noout -text | head -n 1

printf 'hsmux quick start %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$WORK/message.txt"
openssl dgst -sha256 -binary -out "$WORK/message.sha256" "$WORK/message.txt"

step "sign the SHA-256 hash with ECDSA (key 01)"
p11login --sign --mechanism ECDSA --id 01 --signature-format openssl \
  --input-file "$WORK/message.sha256" --output-file "$WORK/message.ec.sig"

step "sign the message with SHA256-RSA-PKCS (key 02)"
p11login --sign --mechanism SHA256-RSA-PKCS --id 02 \
  --input-file "$WORK/message.txt" --output-file "$WORK/message.rsa.sig"

step "verify the ECDSA signature with openssl"
openssl dgst -sha256 -verify "$WORK/ec-pub.pem" -signature "$WORK/message.ec.sig" "$WORK/message.txt"
openssl pkeyutl -verify -pubin -inkey "$WORK/ec-pub.pem" \
  -in "$WORK/message.sha256" -sigfile "$WORK/message.ec.sig"

step "verify the RSA signature with openssl"
openssl dgst -sha256 -verify "$WORK/rsa-pub.pem" -signature "$WORK/message.rsa.sig" "$WORK/message.txt"

step "stop hsmuxd"
pid="$AGENT_PID"
stop_agent
echo "hsmuxd (pid $pid) stopped; its log is $AGENT_LOG"

STEP="done"
echo "quickstart: OK"

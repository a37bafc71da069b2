#!/usr/bin/env bash
# Regenerates docs/benchmarks.md on this machine: hsmux-bench against
#   (a) SoftHSMv2 directly, (b) p11-kit server + p11-kit-client.so over a Unix
#   socket, (c) hsmux over mTLS (agent over three SoftHSM members), (d) a bare
#   gRPC echo with the module's channel settings; 1 and 8 threads, side by side
#   in one run; then the scale run (members behind tests/testwrap, serialised,
#   2 ms per call) and 1,000 client sessions.
#
#   bash scripts/bench.sh [--quick] [--build-dir DIR] [--out FILE] [--work-dir DIR]
#
#   --quick          1 s per cell and 0.2 s warm-up (default 3 s and 0.5 s)
#   --build-dir DIR  the build tree (default build); needs the targets hsmux-bench,
#                    hsmux-grpc-echo, hsmux-pkcs11, hsmuxd, hsmuxctl, hsmux-testwrap,
#                    hsmux-testwrap-ctl:
#                      cmake --build DIR -j1 --target hsmux-bench hsmux-grpc-echo \
#                        hsmux-pkcs11 hsmuxd hsmuxctl hsmux-testwrap hsmux-testwrap-ctl
#   --out FILE       the report (default docs/benchmarks.md)
#   --work-dir DIR   scratch (default out/bench); wiped first
# A full run takes about 10 minutes on 2 cores; --quick about 4.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/scripts/bench.sh"
# shellcheck source=tools/bench/echo-lib.sh
source "$REPO/tools/bench/echo-lib.sh"

# ---------------------------------------------------------------- inner parts --
# Run under tests/e2e/with_agent.sh (HSMUX_MODULE, HSMUX_TEST_DIR, ... set).
bench() {  # bench TARGET-NAME MODULE LABEL PINFILE OP THREADS [extra args...]
  local name="$1" module="$2" label="$3" pin="$4" op="$5" threads="$6"
  shift 6
  local out rc=0
  out="$("$BUILD/tools/bench/hsmux-bench" --module "$module" --token-label "$label" \
    --pin-file "$pin" --op "$op" --threads "$threads" --seconds "$SECS" --warmup "$WARM" "$@" 2>&1)" || rc=$?
  printf '%s\n' "$out" | grep -v '^BENCH ' >&2 || true
  local line note
  line="$(printf '%s\n' "$out" | grep '^BENCH ' | tail -n1 | sed 's/^BENCH //' || true)"
  if [ -z "$line" ]; then
    note="$(printf '%s\n' "$out" | grep -m1 'hsmux-bench:' | sed 's/^hsmux-bench: //; s/[\"]//g' || true)"
    line="{\"op\":\"$op\",\"threads\":$threads,\"errors\":-1,\"ops\":0,\"note\":\"$note\"}"
  fi
  printf '{"target":"%s","exit":%d,"r":%s}\n' "$name" "$rc" "$line" >>"$RESULTS"
}

P11KIT_PID=""
# bench_echo NAME API HAND_OFF: an echo server on a free port; prints the port.
bench_echo() {
  start_echo "$BUILD/tools/bench/hsmux-grpc-echo" "$HSMUX_TEST_DIR/pki" "$HSMUX_TEST_DIR/echo-$1.log" \
    "$HSMUX_TEST_DIR/echo.pids" 127.0.0.1:0 "$2" "$3"
}

inner_main() {
  local W="$HSMUX_TEST_DIR"
  trap 'kill $P11KIT_PID $(cat "$W/echo.pids" 2>/dev/null) 2>/dev/null || true; wait 2>/dev/null || true' EXIT
  # (a)/(b): one SoftHSM token of their own, so the agent's members are untouched.
  local D="$W/direct"
  mkdir -p "$D/tokens"
  printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$D" >"$D/softhsm2.conf"
  openssl rand -hex 8 >"$D/pin"
  SOFTHSM2_CONF="$D/softhsm2.conf" softhsm2-util --init-token --free --label bench-direct \
    --pin "$(cat "$D/pin")" --so-pin "$(openssl rand -hex 8)" >/dev/null
  # (b): p11-kit server over a Unix socket, exporting that token.
  SOFTHSM2_CONF="$D/softhsm2.conf" p11-kit server -f -n "$D/p11kit.sock" \
    --provider /usr/lib/softhsm/libsofthsm2.so "pkcs11:token=bench-direct" >"$D/p11kit.log" 2>&1 &
  P11KIT_PID=$!
  for _ in $(seq 1 100); do [ -S "$D/p11kit.sock" ] && break; sleep 0.1; done
  [ -S "$D/p11kit.sock" ] || { echo "bench: p11-kit server did not start" >&2; cat "$D/p11kit.log" >&2; exit 1; }
  # (d): the echo server with the agent's PKI; two more that build each reply
  # on a worker thread, as the agent runs each member call on a member worker
  # (sync: the handler thread waits, the agent's shape; callback: the worker
  # starts the write; docs/decisions/0013-server-shape.md).
  local EPORT WPORT CPORT
  EPORT="$(bench_echo plain sync 0)" || exit 1
  WPORT="$(bench_echo worker sync 1)" || exit 1
  CPORT="$(bench_echo cb-worker callback 1)" || exit 1

  local SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
  local P11KIT_CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
  # The floor of the transport the module uses (a stream per thread), and of
  # unary calls for comparison (decision 0012).
  local cell
  for cell in "echo $EPORT stream" "echo-unary $EPORT unary" "echo-worker $WPORT stream" \
              "echo-cb-worker $CPORT stream"; do
    set -- $cell
    for threads in 1 8; do
      "$BUILD/tools/bench/hsmux-grpc-echo" client --target "localhost:$2" --ca "$W/pki/ca.pem" \
        --cert "$W/pki/client.pem" --key "$W/pki/client.key" --threads "$threads" --shape "$3" \
        --seconds "$SECS" --warmup "$WARM" --request-bytes 100 --reply-bytes 100 >"$W/echo.out" 2>&1 || true
      grep -v '^BENCH ' "$W/echo.out" >&2 || true
      printf '{"target":"%s","exit":0,"r":%s}\n' "$1" "$(sed -n 's/^BENCH //p' "$W/echo.out")" >>"$RESULTS"
    done
  done
  for op in $OPS; do
    for threads in 1 8; do
      SOFTHSM2_CONF="$D/softhsm2.conf" bench softhsm "$SOFTHSM" bench-direct "$D/pin" "$op" "$threads" --token-keys
      P11_KIT_SERVER_ADDRESS="unix:path=$D/p11kit.sock" bench p11kit "$P11KIT_CLIENT" bench-direct "$D/pin" "$op" "$threads" --token-keys
      bench hsmux "$HSMUX_MODULE" hsmux-demo "$W/secrets/client-pin" "$op" "$threads" --token-keys
    done
  done
  # The same module with one RPC per round trip (transport: unary), for the
  # transport-shape table.
  local UNARY_CONF="$W/module-unary.yaml"
  { cat "$HSMUX_CONFIG"; echo "transport: unary"; } >"$UNARY_CONF"
  # And over the agent's Unix socket (listen_unix, same mTLS): the same
  # host's path, like p11-kit's.
  local UNIX_CONF="$W/module-unix.yaml"
  sed "s|^agents: .*|agents: [\"unix:$HSMUX_AGENT_UNIX\"]|" "$HSMUX_CONFIG" >"$UNIX_CONF"
  for op in random32 ecdsa-p256 rsa2048-sha256; do
    case " $OPS " in *" $op "*) ;; *) continue ;; esac
    for threads in 1 8; do
      [ "$op" = rsa2048-sha256 ] ||
        HSMUX_CONFIG="$UNARY_CONF" bench hsmux-unary "$HSMUX_MODULE" hsmux-demo "$W/secrets/client-pin" \
          "$op" "$threads" --token-keys
      HSMUX_CONFIG="$UNIX_CONF" bench hsmux-unix "$HSMUX_MODULE" hsmux-demo "$W/secrets/client-pin" \
        "$op" "$threads" --token-keys
    done
  done
}

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

inner_scale() {
  local W="$HSMUX_TEST_DIR" CTL="$BUILD/tests/testwrap/hsmux-testwrap-ctl"
  local WRAP="$BUILD/tests/testwrap/libhsmux-testwrap.so"
  for m in member-a member-b member-c; do
    "$CTL" "$HSMUX_TESTWRAP_DIR" "$m" serialize=1 latency_ms="$LAT_MS" >/dev/null
  done
  # One such member, directly (its own state dir, so the agent's stats stay its own).
  local ONE="$W/one-member"
  mkdir -p "$ONE"
  "$CTL" "$ONE" member-a serialize=1 latency_ms="$LAT_MS" >/dev/null
  HSMUX_TESTWRAP_DIR="$ONE" bench one-member "$WRAP" member-a "$W/secrets/member-pin" ecdsa-p256 32
  # hsmux over the three members, 32 threads, keys replicated to all three.
  bench hsmux-3-members "$HSMUX_MODULE" hsmux-demo "$W/secrets/client-pin" ecdsa-p256 32 --token-keys
  # 1,000 client sessions held open while 8 threads sign.
  local rss0 peak=0 s
  rss0="$(rss_kb "$HSMUX_AGENT_PID")"
  ( while kill -0 "$HSMUX_AGENT_PID" 2>/dev/null; do rss_kb "$HSMUX_AGENT_PID"; sleep 0.2; done ) >"$W/rss.txt" &
  local SAMPLER=$!
  bench hsmux-1000-sessions "$HSMUX_MODULE" hsmux-demo "$W/secrets/client-pin" ecdsa-p256 8 --token-keys --hold-sessions 1000
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  for s in $(cat "$W/rss.txt"); do [ "$s" -gt "$peak" ] && peak="$s"; done
  sleep 0.3
  local members="" m
  for m in member-a member-b member-c; do
    members="$members${members:+,}$(cat "$HSMUX_TESTWRAP_DIR/$m.stats.json" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(json.dumps({k: s.get(k) for k in ("label", "max_open_sessions", "open_sessions", "sessions_opened", "max_in_flight")}))')"
  done
  printf '{"target":"sessions","rss_before_kb":%s,"rss_peak_kb":%s,"rss_after_kb":%s,"hwm_kb":%s,"members":[%s],"pool_max_sessions":%s,"pool_min_sessions":%s,"latency_ms":%s}\n' \
    "$rss0" "$peak" "$(rss_kb "$HSMUX_AGENT_PID")" "$(hwm_kb "$HSMUX_AGENT_PID")" "$members" \
    "$POOL_MAX" "$POOL_MIN" "$LAT_MS" >>"$RESULTS"
}

if [ "${1:-}" = "--inner-main" ] || [ "${1:-}" = "--inner-scale" ]; then
  mode="$1"
  eval "$BENCH_INNER_ENV"
  if [ "$mode" = "--inner-main" ]; then inner_main; else inner_scale; fi
  exit 0
fi

# ---------------------------------------------------------------------- outer --
QUICK=0
BUILD="$REPO/build"
OUT="$REPO/docs/benchmarks.md"
WORK="$REPO/out/bench"
while [ "$#" -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --build-dir) BUILD="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --work-dir) WORK="$2"; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
case "$BUILD" in /*) ;; *) BUILD="$PWD/$BUILD" ;; esac
case "$WORK" in /*) ;; *) WORK="$PWD/$WORK" ;; esac
for f in tools/bench/hsmux-bench tools/bench/hsmux-grpc-echo module/libhsmux-pkcs11.so agent/hsmuxd \
         agent/hsmuxctl tests/testwrap/libhsmux-testwrap.so tests/testwrap/hsmux-testwrap-ctl; do
  [ -e "$BUILD/$f" ] || { echo "bench: missing $BUILD/$f (see --help for the build command)" >&2; exit 1; }
done
for tool in p11-kit softhsm2-util openssl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found (apt-get install p11-kit softhsm2 openssl python3)" >&2; exit 1; }
done
[ -e /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so ] || { echo "bench: p11-kit-client.so missing (apt-get install p11-kit-modules)" >&2; exit 1; }

if [ "$QUICK" = 1 ]; then SECS=1; WARM=0.2; else SECS=3; WARM=0.5; fi
OPS="random32 sha256 ecdsa-p256 rsa2048-sha256 hmac-sha256 aes256-gcm-1k open-close find-by-label-1000 keystore-load"
POOL_MIN=2 POOL_MAX=16 LAT_MS=2
rm -rf "$WORK"
mkdir -p "$WORK"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
START="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -z "$(git -C "$REPO" status --porcelain -- module agent proto tools 2>/dev/null)" ] || REV="$REV + local changes"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
T0=$SECONDS
export BENCH_INNER_ENV
BENCH_INNER_ENV="$(declare -p BUILD SECS WARM OPS RESULTS POOL_MIN POOL_MAX LAT_MS)"

PARTS="${HSMUX_BENCH_PARTS:-main scale}"   # for debugging one part
# The agent as in production: absl's lock-order checking off (with_agent.sh
# turns it on for tests; docs/decisions/0011-agent-hot-path.md).
export HSMUX_CHECK_LOCK_ORDER=0
if [[ " $PARTS " == *" main "* ]]; then
  echo "== bench: main grid ($SECS s per cell)" >&2
  bash "$REPO/tests/e2e/with_agent.sh" "$BUILD" "$WORK/main" -- bash "$SELF" --inner-main
fi
if [[ " $PARTS " == *" scale "* ]]; then
  echo "== bench: scale run and 1,000 sessions" >&2
  HSMUX_WITH_TESTWRAP=1 HSMUX_GROUP_EXTRA="pool_min_sessions: $POOL_MIN; pool_max_sessions: $POOL_MAX" \
    bash "$REPO/tests/e2e/with_agent.sh" "$BUILD" "$WORK/scale" -- bash "$SELF" --inner-scale
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

python3 "$REPO/tools/bench/report.py" --results "$RESULTS" --out "$OUT" --start "$START" \
  --duration "$((SECONDS - T0))" --seconds "$SECS" --warmup "$WARM" --quick "$QUICK" \
  --load "$LOAD_BEFORE / $LOAD_AFTER" --softhsm-lib /usr/lib/softhsm/libsofthsm2.so --rev "$REV"
echo "bench: wrote $OUT in $((SECONDS - T0)) s" >&2

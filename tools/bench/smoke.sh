#!/usr/bin/env bash
# CTest bench_smoke (run under tests/e2e/with_agent.sh): every hsmux-bench
# operation for one second against the agent. Correctness only: exit code,
# ops > 0, no errors, a BENCH line with round trips counted. Never timing.
#   smoke.sh PATH/TO/hsmux-bench
set -uo pipefail
BENCH="$1"
: "${HSMUX_MODULE:?run under tests/e2e/with_agent.sh}"
fail=0
for op in random32 sha256 ecdsa-p256 rsa2048-sha256 hmac-sha256 aes256-gcm-1k open-close \
          find-by-label-1000 keystore-load; do
  threads=1
  [ "$op" = ecdsa-p256 ] && threads=2   # one multi-threaded run too
  out="$("$BENCH" --module "$HSMUX_MODULE" --token-label hsmux-demo \
        --pin-file "$HSMUX_TEST_DIR/secrets/client-pin" --op "$op" --threads "$threads" \
        --seconds 1 --warmup 0.1 --probe-ops 2 2>&1)"
  rc=$?
  line="$(printf '%s\n' "$out" | grep '^BENCH ' || true)"
  if [ "$rc" -ne 0 ] || [ -z "$line" ] ||
     ! printf '%s' "${line#BENCH }" | python3 -c '
import json, sys
r = json.load(sys.stdin)
ok = r["ops"] > 0 and r["errors"] == 0 and r["round_trips_per_op"] is not None and r["round_trips_per_op"] > 0
sys.exit(0 if ok else 1)'; then
    echo "FAIL $op (exit $rc)"
    printf '%s\n' "$out"
    fail=$((fail + 1))
  else
    echo "ok   $op: ${line#BENCH }"
  fi
done
# The transport-floor echo in each server shape (decision 0013), both client
# shapes: every reply arrives, with the payload size asked for.
ECHO="$(dirname "$BENCH")/hsmux-grpc-echo"
# shellcheck source=tools/bench/echo-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/echo-lib.sh"
PKI="$HSMUX_TEST_DIR/pki"
echo_checks=0
for api in sync callback; do
  for hand_off in 0 1; do
    port="$(start_echo "$ECHO" "$PKI" "$HSMUX_TEST_DIR/smoke-echo-$api-$hand_off.log" \
      "$HSMUX_TEST_DIR/smoke-echo.pids" 127.0.0.1:0 "$api" "$hand_off")"
    spid="$(tail -n1 "$HSMUX_TEST_DIR/smoke-echo.pids")"
    for shape in stream unary; do
      echo_checks=$((echo_checks + 1))
      out="$("$ECHO" client --target "localhost:${port:-1}" --ca "$PKI/ca.pem" --cert "$PKI/client.pem" \
            --key "$PKI/client.key" --threads 2 --seconds 0.5 --warmup 1 --shape "$shape" \
            --request-bytes 64 --reply-bytes 300 2>&1)"
      rc=$?
      if [ "$rc" -ne 0 ] || ! printf '%s\n' "$out" | grep -q '^BENCH .*"errors":0,'; then
        echo "FAIL echo $api hand-off=$hand_off $shape (exit $rc)"
        printf '%s\n' "$out"
        fail=$((fail + 1))
      else
        echo "ok   echo $api hand-off=$hand_off $shape"
      fi
    done
    kill "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
  done
done
# The module exports only the 68 C_* functions (the counter adds none).
n="$(nm -D --defined-only "$HSMUX_MODULE" | awk '{print $3}' | grep -c '^C_')"
total="$(nm -D --defined-only "$HSMUX_MODULE" | awk 'NF==3{print $3}' | grep -vc '^C_' || true)"
if [ "$n" -ne 68 ] || [ "$total" -ne 0 ]; then
  echo "FAIL exports: $n C_* symbols, $total others"; fail=$((fail + 1))
fi
echo "$((10 + echo_checks - fail)) passed, $fail failed"
[ "$fail" -eq 0 ]

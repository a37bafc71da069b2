#!/usr/bin/env bash
# Transport shapes side by side (docs/decisions/0010-round-trips.md): run under
#   bash tests/e2e/with_agent.sh build out/shapes -- bash tools/bench/transport-shapes.sh
# (for its PKI). Unary vs one stream per thread, sync vs callback server,
# TCP loopback vs Unix socket; three interleaved rounds. env: B, SECS (2).
set -euo pipefail
B="${B:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build}"; W=$HSMUX_TEST_DIR; E=$B/tools/bench/hsmux-grpc-echo
C="--ca $W/pki/ca.pem --cert $W/pki/client.pem --key $W/pki/client.key --seconds ${SECS:-2} --warmup 0.3"
# shellcheck source=tools/bench/echo-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/echo-lib.sh"
SP=$(start_echo "$E" "$W/pki" "$W/echo-sync.log" "$W/echo.pids" 127.0.0.1:0 sync 0)
CP=$(start_echo "$E" "$W/pki" "$W/echo-callback.log" "$W/echo.pids" 127.0.0.1:0 callback 0)
start_echo "$E" "$W/pki" "$W/echo-uds.log" "$W/echo.pids" "unix:$W/echo.sock" sync 0 >/dev/null
for round in 1 2 3; do
 for t in 1 8; do
  for cfg in "tcp-sync-unary localhost:$SP unary" "tcp-sync-stream localhost:$SP stream" "tcp-callback-unary localhost:$CP unary" "uds-sync-unary unix:$W/echo.sock unary"; do
    set -- $cfg
    line=$($E client --target "$2" $C --threads $t --shape $3 2>&1 | grep '^grpc-echo')
    echo "round=$round $1 $line"
  done
 done
done
kill $(cat "$W/echo.pids")

#!/usr/bin/env bash
# Transport shapes side by side (docs/decisions/0010-round-trips.md): run under
#   bash tests/e2e/with_agent.sh build out/shapes -- bash tools/bench/transport-shapes.sh
# (for its PKI). Unary vs one stream per thread, sync vs callback server,
# TCP loopback vs Unix socket; three interleaved rounds. env: B, SECS (2).
set -euo pipefail
B="${B:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build}"; W=$HSMUX_TEST_DIR; E=$B/tools/bench/hsmux-grpc-echo
P="--ca $W/pki/ca.pem --cert $W/pki/server.pem --key $W/pki/server.key"
C="--ca $W/pki/ca.pem --cert $W/pki/client.pem --key $W/pki/client.key --seconds ${SECS:-2} --warmup 0.3"
start() { # api listen
  $E server --listen "$2" $P --server-api "$1" > "$W/echo-$1.log" 2>&1 & echo $! > "$W/echo-$1.pid"
  for _ in $(seq 1 50); do grep -q 'serving on' "$W/echo-$1.log" && break; sleep 0.1; done
}
start sync 127.0.0.1:0; SP=$(sed -n 's/^echo: serving on //p' $W/echo-sync.log)
start callback 127.0.0.1:0; CP=$(sed -n 's/^echo: serving on //p' $W/echo-callback.log)
$E server --listen "unix:$W/echo.sock" $P > "$W/echo-uds.log" 2>&1 & UP=$!
sleep 1
for round in 1 2 3; do
 for t in 1 8; do
  for cfg in "tcp-sync-unary localhost:$SP unary" "tcp-sync-stream localhost:$SP stream" "tcp-callback-unary localhost:$CP unary" "uds-sync-unary unix:$W/echo.sock unary"; do
    set -- $cfg
    line=$($E client --target "$2" $C --threads $t --shape $3 2>&1 | grep '^grpc-echo')
    echo "round=$round $1 $line"
  done
 done
done
kill $(cat $W/echo-sync.pid) $(cat $W/echo-callback.pid) $UP

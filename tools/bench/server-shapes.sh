#!/usr/bin/env bash
# Server shapes for the agent's call stream (docs/decisions/0013-server-shape.md):
# the bare echo's stream per client thread, served four ways: sync or callback
# server, reply built inline or on a worker thread (as the agent runs every
# member call on a member worker). Prints p50, ops/s, and the server's CPU
# time and context switches per round trip (steadier than latency on a
# shared machine). Run under the e2e harness for its PKI:
#   bash tests/e2e/with_agent.sh build out/shapes -- bash tools/bench/server-shapes.sh
# env: B (build dir), SECS (2), ROUNDS (3), THREADS ("1 8"), SHAPE (stream)
set -euo pipefail
B="${B:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build}"
W=$HSMUX_TEST_DIR
E=$B/tools/bench/hsmux-grpc-echo
# shellcheck source=tools/bench/echo-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/echo-lib.sh"
C="--ca $W/pki/ca.pem --cert $W/pki/client.pem --key $W/pki/client.key --seconds ${SECS:-2} --warmup 0.3"
VARIANTS="sync:0 sync:1 callback:0 callback:1"
declare -A PORT PID
for v in $VARIANTS; do
  PORT[$v]=$(start_echo "$E" "$W/pki" "$W/echo-${v/:/-}.log" "$W/echo-$$.pids" 127.0.0.1:0 "${v%:*}" "${v#*:}")
  PID[$v]=$(tail -n1 "$W/echo-$$.pids")
done
trap 'kill ${PID[*]} 2>/dev/null || true' EXIT
for round in $(seq 1 "${ROUNDS:-3}"); do
  for t in ${THREADS:-1 8}; do
    for v in $VARIANTS; do
      p=${PID[$v]}
      s0=$(proc_switches "$p"); c0=$(proc_cpu_ticks "$p")
      line=$($E client --target "localhost:${PORT[$v]}" $C --threads "$t" --shape "${SHAPE:-stream}" 2>&1 |
        grep '^BENCH')
      s1=$(proc_switches "$p"); c1=$(proc_cpu_ticks "$p")
      printf '%s\n' "$line" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read()[6:])
v, r, s0, s1, c0, c1, tck = sys.argv[1], sys.argv[2], *(int(x) for x in sys.argv[3:8])
n = max(d["ops"] * 1.15, 1)  # the client counts the timed part; warm-up adds ~15%
print("round=%s server=%-11s threads=%d ops/s=%7.0f p50=%6.1fus p99=%7.1fus server_cpu_us/rt=%6.1f server_switches/rt=%5.2f"
      % (r, v.replace(":0", "").replace(":1", "+worker"), d["threads"], d["ops_per_s"], d["p50_us"],
         d["p99_us"], (c1 - c0) * 1e6 / tck / n, (s1 - s0) / n))' "$v" "$round" "$s0" "$s1" "$c0" "$c1" "$(getconf CLK_TCK)"
    done
  done
done

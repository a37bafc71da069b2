#!/usr/bin/env bash
# Per-operation cost of the agent: runs hsmux-bench through the module and
# reads the agent's CPU time and context switches from /proc before and after
# (docs/decisions/0011-agent-hot-path.md). CPU per operation and round trips per
# operation are steadier than latency on a shared machine.
#
#   HSMUX_CHECK_LOCK_ORDER=0 bash tests/e2e/with_agent.sh build out/cost -- \
#     bash tools/bench/agent-cost.sh
#   env: B (build dir, default build), OPS, THREADS ("1 8"), SECS (3)
set -euo pipefail
B="${B:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build}"
P="$HSMUX_AGENT_PID"
# shellcheck source=tools/bench/echo-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/echo-lib.sh"
for op in ${OPS:-random32 ecdsa-p256}; do
  for t in ${THREADS:-1 8}; do
    c0=$(proc_switches "$P"); u0=$(proc_cpu_ticks "$P")
    out=$("$B/tools/bench/hsmux-bench" --module "$HSMUX_MODULE" --token-label hsmux-demo \
      --pin-file "$HSMUX_TEST_DIR/secrets/client-pin" --op "$op" --threads "$t" \
      --seconds "${SECS:-3}" --warmup 0.3 --token-keys 2>&1 | grep '^BENCH')
    c1=$(proc_switches "$P"); u1=$(proc_cpu_ticks "$P")
    tck=$(getconf CLK_TCK)
    printf '%s\n' "$out" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read()[6:])
n = max(d["ops"], 1)
c0, c1, u0, u1, tck = (int(x) for x in sys.argv[1:6])
print("%s threads=%d ops/s=%.0f p50=%.0fus p99=%.0fus rt/op=%.1f agent_cpu_us/op=%.1f agent_switches/op=%.2f"
      % (d["op"], d["threads"], d["ops_per_s"], d["p50_us"], d["p99_us"], d["round_trips_per_op"],
         (u1 - u0) * 1e6 / tck / n, (c1 - c0) / n))' "$c0" "$c1" "$u0" "$u1" "$tck"
  done
done

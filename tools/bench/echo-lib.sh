# Sourced by the bench scripts (bench.sh, smoke.sh, server-shapes.sh,
# transport-shapes.sh, agent-cost.sh): starting an echo server, and reading a
# process's cost from /proc.

# start_echo ECHO PKI LOG PIDFILE LISTEN API HAND_OFF: starts `ECHO server`
# with the test PKI's server certificate, appends its pid to PIDFILE, waits
# until it serves and prints its port (0 for a unix: listen address).
start_echo() {
  local echo_bin="$1" pki="$2" log="$3" pids="$4" listen="$5" api="$6" hand_off="$7"
  "$echo_bin" server --listen "$listen" --ca "$pki/ca.pem" --cert "$pki/server.pem" \
    --key "$pki/server.key" --server-api "$api" --hand-off "$hand_off" >"$log" 2>&1 &
  echo $! >>"$pids"
  for _ in $(seq 1 100); do grep -q '^echo: serving on' "$log" && break; sleep 0.1; done
  local port
  port="$(sed -n 's/^echo: serving on //p' "$log")"
  [ -n "$port" ] || { echo "echo server ($api, hand-off $hand_off) did not start: $log" >&2; return 1; }
  echo "$port"
}

# Context switches of all of PID's threads, and its CPU time in clock ticks.
proc_switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/{s+=$2} END{print s}'; }
proc_cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }

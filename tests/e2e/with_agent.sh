#!/usr/bin/env bash
# Runs one test command against a real hsmuxd over three fresh SoftHSMv2
# tokens with test-time mTLS certificates:
#
#   tests/e2e/with_agent.sh BUILD_DIR WORK_DIR -- COMMAND [ARGS...]
#
# Exports to COMMAND:
#   HSMUX_CONFIG        module config (client-1)
#   HSMUX_TEST_DIR      the work dir (pki/, secrets/, tokens/, hsmuxd.yaml, hsmuxd.log)
#   HSMUX_MODULE        path of libhsmux-pkcs11.so
#   HSMUX_AGENT_PORT    the agent's port
#   HSMUX_AGENT_UNIX    the agent's Unix socket (listen_unix; same mTLS)
#   HSMUX_AGENT_PID     the agent's pid
#   SOFTHSM2_CONF       the members' SoftHSM config (to check members directly)
#   HSMUX_AGENT_START   a command line that starts the agent again (after a test
#                       killed it); the test then stops that agent itself
#   HSMUX_TESTWRAP_DIR  with HSMUX_WITH_TESTWRAP=1: the wrapping module's state dir
# Optional inputs:
#   HSMUX_LEASE_SECONDS    shorten the instance lease
#   HSMUX_WITH_TESTWRAP=1  members through tests/testwrap (counters, faults)
#   HSMUX_GROUP_EXTRA      YAML lines added to the group (e.g. "pool_max_sessions: 4")
#   HSMUX_TOP_EXTRA        YAML lines added at the top level (e.g. "max_sessions_per_instance: 5")
#   HSMUX_CHECK_LOCK_ORDER 1 (default here) or 0: absl's lock-order checking in the agent
#   HSMUX_AGENT_WRAPPER    a command the agent runs under (e.g. "valgrind --tool=callgrind"),
#                          for profiling; word-split, so no spaces inside one argument
set -euo pipefail
[ "$#" -ge 4 ] && [ "$3" = "--" ] || { echo "usage: $0 BUILD_DIR WORK_DIR -- COMMAND..." >&2; exit 2; }
BUILD="$(cd "$1" && pwd)"
WORK="$2"
shift 3
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

rm -rf "$WORK"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

# A free port chosen by the kernel.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

bash "$REPO/scripts/make-test-pki.sh" "$WORK" >/dev/null
eval "$(bash "$REPO/scripts/make-softhsm-tokens.sh" "$WORK" | grep '^export ')"
if [ "${HSMUX_WITH_TESTWRAP:-0}" = 1 ]; then
  export HSMUX_TESTWRAP_DIR="$WORK/testwrap" HSMUX_TESTWRAP_TARGET=/usr/lib/softhsm/libsofthsm2.so
  mkdir -p "$HSMUX_TESTWRAP_DIR"
  export HSMUX_SOFTHSM_LIB="$BUILD/tests/testwrap/libhsmux-testwrap.so"
fi
HSMUX_BUILD_DIR="$BUILD" bash "$REPO/scripts/make-demo-config.sh" "$WORK" "$PORT" >/dev/null
# The agent's second listener, on a Unix socket (listen_unix), in a short
# private directory: socket paths are limited to 107 bytes.
SOCK_DIR="$(mktemp -d /tmp/hsmux-e2e.XXXXXX)"
printf 'listen_unix: %s/agent.sock\n' "$SOCK_DIR" >>"$WORK/hsmuxd.yaml"
if [ -n "${HSMUX_TOP_EXTRA:-}" ]; then
  printf '%s\n' "${HSMUX_TOP_EXTRA//;/$'\n'}" >>"$WORK/hsmuxd.yaml"
fi
if [ -n "${HSMUX_GROUP_EXTRA:-}" ]; then
  python3 - "$WORK/hsmuxd.yaml" "$HSMUX_GROUP_EXTRA" <<'PY'
import sys
path, extra = sys.argv[1], sys.argv[2]
lines = open(path).read().split("\n")
out = []
for line in lines:
    out.append(line)
    if line.startswith("    serial:"):
        out.extend("    " + e.strip() for e in extra.split(";") if e.strip())
open(path, "w").write("\n".join(out))
PY
fi
if [ -n "${HSMUX_LEASE_SECONDS:-}" ]; then
  sed -i "s/^lease_seconds: .*/lease_seconds: ${HSMUX_LEASE_SECONDS}/" "$WORK/hsmuxd.yaml"
fi

# Tests run the agent with absl's lock-order checking on (off in production,
# docs/decisions/0011-agent-hot-path.md); scripts/bench.sh turns it off.
export HSMUX_CHECK_LOCK_ORDER="${HSMUX_CHECK_LOCK_ORDER-1}"
# shellcheck disable=SC2086 # the wrapper is a command line to split
${HSMUX_AGENT_WRAPPER:-} "$BUILD/agent/hsmuxd" --config "$WORK/hsmuxd.yaml" >"$WORK/hsmuxd.log" 2>&1 &
AGENT=$!
cleanup() {
  kill "$AGENT" 2>/dev/null || true
  wait "$AGENT" 2>/dev/null || true
  rm -rf "$SOCK_DIR"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  grep -q '^hsmuxd: serving on ' "$WORK/hsmuxd.log" && break
  kill -0 "$AGENT" 2>/dev/null || { echo "hsmuxd exited early:" >&2; cat "$WORK/hsmuxd.log" >&2; exit 1; }
  sleep 0.1
done
grep -q '^hsmuxd: serving on ' "$WORK/hsmuxd.log" || { echo "hsmuxd not ready" >&2; cat "$WORK/hsmuxd.log" >&2; exit 1; }

# Key replication needs the group's replication key (DESIGN §3).
"$BUILD/agent/hsmuxctl" create-replication-key --config "$WORK/hsmuxd.yaml" >/dev/null

export HSMUX_CONFIG="$WORK/module.yaml" HSMUX_TEST_DIR="$WORK" HSMUX_AGENT_PORT="$PORT"
export HSMUX_AGENT_UNIX="$SOCK_DIR/agent.sock"
export HSMUX_MODULE="$BUILD/module/libhsmux-pkcs11.so" HSMUX_AGENT_PID="$AGENT"
export HSMUX_AGENT_START="$BUILD/agent/hsmuxd --config $WORK/hsmuxd.yaml"
set +e
"$@"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "---- last lines of hsmuxd.log ----" >&2
  tail -n 40 "$WORK/hsmuxd.log" >&2
fi
exit "$rc"

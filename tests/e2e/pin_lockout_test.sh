#!/usr/bin/env bash
# Client PIN rules through pkcs11-tool (run under with_agent.sh): wrong PINs
# are counted and shown in the token flags, max_pin_failures (5) lock the
# identity (CKR_PIN_LOCKED, also for the right PIN, also after an agent
# restart), `hsmuxctl unlock` lifts it, and C_SetPIN changes the PIN. The
# lockout is listed under "recent errors" by `hsmuxctl status` (no PIN there).
set -euo pipefail
BUILD="$1"
M="$HSMUX_MODULE"
PIN="$(head -n1 "$HSMUX_TEST_DIR/secrets/client-pin")"
CFG="$HSMUX_TEST_DIR/hsmuxd.yaml"
p() { pkcs11-tool --module "$M" "$@" 2>&1; }
rv_of() { p --login --pin "$1" --list-objects | grep -o 'CKR_[A-Z_]*' | head -n1 || true; }
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() { [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"; }

expect "$(rv_of 00000000)" CKR_PIN_INCORRECT "wrong PIN"
p -T | grep -q 'user PIN count low' || fail "token flags do not show a failed PIN"
expect "$(rv_of "$PIN")" "" "right PIN resets the count"
p -T | grep -q 'user PIN count low' && fail "count not reset after a good login"

p --login --pin "$PIN" --change-pin --new-pin 55555555 | grep -q 'successfully changed' \
  || fail "C_SetPIN"
expect "$(rv_of "$PIN")" CKR_PIN_INCORRECT "old PIN after C_SetPIN"
expect "$(rv_of 55555555)" "" "new PIN after C_SetPIN"

for i in 1 2 3 4; do expect "$(rv_of 00000000)" CKR_PIN_INCORRECT "wrong PIN $i"; done
p -T | grep -q 'final user PIN try' || fail "token flags do not show the final try"
expect "$(rv_of 00000000)" CKR_PIN_LOCKED "fifth wrong PIN locks"
expect "$(rv_of 55555555)" CKR_PIN_LOCKED "right PIN while locked"
p -T | grep -q 'user PIN locked' || fail "token flags do not show the lock"
status="$("$BUILD/agent/hsmuxctl" status --config "$CFG")" || fail "hsmuxctl status"
echo "$status" | grep -q ' lockout: cn:client-1 locked on slot 1 after 5 wrong PINs' \
  || fail "hsmuxctl status does not list the lockout: $status"

# The lock survives a restart of the agent.
kill "$HSMUX_AGENT_PID"; wait "$HSMUX_AGENT_PID" 2>/dev/null || true
$HSMUX_AGENT_START >"$HSMUX_TEST_DIR/restart.log" 2>&1 &
AGENT=$!
trap 'kill $AGENT 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q '^hsmuxd: serving on' "$HSMUX_TEST_DIR/restart.log" && break; sleep 0.1; done
expect "$(rv_of 55555555)" CKR_PIN_LOCKED "lock after restart"
status="$("$BUILD/agent/hsmuxctl" status --config "$CFG")" || fail "hsmuxctl status after restart"
echo "$status" | grep -q ' lockout: login refused: cn:client-1 is locked on slot 1' \
  || fail "hsmuxctl status does not list the refused login: $status"
case "$status" in *"$PIN"*|*55555555*|*00000000*) fail "a PIN appears in hsmuxctl status" ;; esac

"$BUILD/agent/hsmuxctl" unlock --identity client-1 --slot 1 --config "$CFG" | grep -q unlocked \
  || fail "hsmuxctl unlock"
expect "$(rv_of 55555555)" "" "login after unlock"
grep -q "$PIN" "$HSMUX_TEST_DIR"/*.log && fail "a PIN appears in a log"
grep -q 55555555 "$HSMUX_TEST_DIR"/*.log && fail "a PIN appears in a log"
echo "pin lockout: 1 passed, 0 failed"

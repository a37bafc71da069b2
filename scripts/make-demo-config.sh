#!/usr/bin/env bash
# Writes the demo configuration of the agent and the module.
#
#   scripts/make-demo-config.sh DIR [PORT]      (PORT defaults to 7443)
#
# Needs DIR/pki (scripts/make-test-pki.sh DIR), DIR/secrets/member-pin
# (scripts/make-softhsm-tokens.sh DIR) and a built hsmuxctl in ${HSMUX_BUILD_DIR:-build}/agent.
# Writes:
#   DIR/hsmuxd.yaml           agent: one group (slot 1, label hsmux-demo) of members
#                             member-a/b/c, clients client-1 and client-2
#   DIR/module.yaml           module: client-1's certificate, agent localhost:PORT, slot 1
#   DIR/secrets/client-pin    client-1's random PIN for slot 1 (mode 600)
#   DIR/secrets/client-2-pin  client-2's random PIN for slot 1 (mode 600)
#   DIR/state/                the agent's state directory
# PINs are never printed; the agent config holds only their hashes.
set -euo pipefail

usage() { echo "usage: $0 DIR [PORT]" >&2; exit 2; }
if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then usage; fi
[ -n "$1" ] || usage
PORT="${2:-7443}"
case "$PORT" in ''|*[!0-9]*) echo "make-demo-config: PORT must be a number: $PORT" >&2; exit 2 ;; esac
if [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then echo "make-demo-config: PORT out of range: $PORT" >&2; exit 2; fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${HSMUX_BUILD_DIR:-$REPO/build}"
case "$BUILD" in /*) ;; *) BUILD="$REPO/$BUILD" ;; esac
HSMUXCTL="$BUILD/agent/hsmuxctl"
SOFTHSM_LIB="${HSMUX_SOFTHSM_LIB:-/usr/lib/softhsm/libsofthsm2.so}"

DIR="$(cd "$1" && pwd)"
case "$DIR" in
  *'"'*|*\\*) printf 'make-demo-config: DIR must not contain a double quote or a backslash: %s\n' "$DIR" >&2; exit 1 ;;
esac

fail() { echo "make-demo-config: $*" >&2; exit 1; }
[ -x "$HSMUXCTL" ] || fail "$HSMUXCTL not found: build first (or set HSMUX_BUILD_DIR)"
for f in ca.pem server.pem server.key client.pem client.key client-2.pem client-2.key; do
  [ -r "$DIR/pki/$f" ] || fail "missing $DIR/pki/$f: run scripts/make-test-pki.sh $DIR"
done
[ -r "$DIR/secrets/member-pin" ] || fail "missing $DIR/secrets/member-pin: run scripts/make-softhsm-tokens.sh $DIR"
[ -r "$SOFTHSM_LIB" ] || fail "SoftHSM library not found: $SOFTHSM_LIB"

umask 077
mkdir -p "$DIR/secrets" "$DIR/state"
chmod 700 "$DIR/secrets" "$DIR/state"

# new_pin FILE -> writes a random PIN to FILE and prints its hash on stdout (never the PIN).
new_pin() {
  openssl rand -hex 8 >"$1"
  chmod 600 "$1"
  local hash
  hash="$(head -n1 "$1" | "$HSMUXCTL" hash-pin)" || fail "hsmuxctl hash-pin failed"
  hash="$(printf '%s' "$hash" | tr -d '\r\n')"
  [ -n "$hash" ] || fail "hsmuxctl hash-pin printed nothing"
  case "$hash" in *'"'*|*\\*) fail "unexpected characters in the PIN hash" ;; esac
  printf '%s' "$hash"
}
hash1="$(new_pin "$DIR/secrets/client-pin")"
hash2="$(new_pin "$DIR/secrets/client-2-pin")"

member() {  # member NAME LABEL
  printf '      - {name: %s, library: "%s", token_label: %s, pin_file: "%s"}\n' \
    "$1" "$SOFTHSM_LIB" "$2" "$DIR/secrets/member-pin"
}

{
  echo "# hsmuxd demo configuration (made by scripts/make-demo-config.sh)."
  echo "# Start: SOFTHSM2_CONF=$DIR/softhsm2.conf hsmuxd --config $DIR/hsmuxd.yaml"
  echo "listen: 127.0.0.1:$PORT"
  echo "tls: {ca: \"$DIR/pki/ca.pem\", cert: \"$DIR/pki/server.pem\", key: \"$DIR/pki/server.key\"}"
  echo "state_dir: \"$DIR/state\""
  echo "lease_seconds: 30"
  echo "groups:"
  echo "  - slot_id: 1"
  echo "    label: hsmux-demo"
  echo "    serial: HSMUX0001"
  echo "    members:"
  member a member-a
  member b member-b
  member c member-c
  echo "clients:"
  echo "  - common_name: client-1"
  echo "    groups:"
  echo "      - {slot_id: 1, pin_hash: \"$hash1\"}"
  echo "  - common_name: client-2"
  echo "    groups:"
  echo "      - {slot_id: 1, pin_hash: \"$hash2\"}"
} >"$DIR/hsmuxd.yaml"
chmod 600 "$DIR/hsmuxd.yaml"

{
  echo "# libhsmux-pkcs11.so demo configuration (made by scripts/make-demo-config.sh)."
  echo "# Use: export HSMUX_CONFIG=$DIR/module.yaml"
  echo "agents: [\"localhost:$PORT\"]"
  echo "tls: {ca: \"$DIR/pki/ca.pem\", cert: \"$DIR/pki/client.pem\", key: \"$DIR/pki/client.key\", server_name: localhost}"
  echo "slots: [1]"
  echo "timeouts: {call_ms: 10000, connect_ms: 3000}"
  echo "heartbeat_seconds: 10"
  echo "log_file: \"$DIR/module.log\""
} >"$DIR/module.yaml"
chmod 600 "$DIR/module.yaml"

# check-config sees the members' SoftHSM setup as hsmuxd will.
if [ -r "$DIR/softhsm2.conf" ]; then export SOFTHSM2_CONF="$DIR/softhsm2.conf"; fi
"$HSMUXCTL" check-config --config "$DIR/hsmuxd.yaml" >&2 || fail "hsmuxctl check-config rejected $DIR/hsmuxd.yaml"
echo "make-demo-config: wrote $DIR/hsmuxd.yaml and $DIR/module.yaml (port $PORT)" >&2

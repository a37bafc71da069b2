#!/usr/bin/env bash
# Makes a private SoftHSMv2 setup with three member tokens for hsmux tests and the demo.
#
#   eval "$(scripts/make-softhsm-tokens.sh DIR)"
#
# Writes:
#   DIR/softhsm2.conf        tokendir DIR/tokens, file object store, log level ERROR
#   DIR/tokens/              tokens labelled member-a, member-b, member-c (wiped first)
#   DIR/secrets/so-pin       one random SO PIN for all three tokens   (mode 600)
#   DIR/secrets/member-pin   one random user PIN for all three tokens (mode 600)
# Prints on stdout only:  export SOFTHSM2_CONF=DIR/softhsm2.conf
# PINs are never printed.
set -euo pipefail

usage() { echo "usage: $0 DIR" >&2; exit 2; }
[ "$#" -eq 1 ] || usage
[ -n "$1" ] || usage

command -v softhsm2-util >/dev/null || { echo "make-softhsm-tokens: softhsm2-util not found (run scripts/install-deps.sh)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "make-softhsm-tokens: openssl not found (run scripts/install-deps.sh)" >&2; exit 1; }

mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
case "$DIR" in
  *[[:space:]]*) echo "make-softhsm-tokens: DIR must not contain white space (SoftHSM's config format): $DIR" >&2; exit 1 ;;
esac
CONF="$DIR/softhsm2.conf"
TOKENS="$DIR/tokens"
SECRETS="$DIR/secrets"

umask 077
rm -rf "$TOKENS"
mkdir -p "$TOKENS" "$SECRETS"
chmod 700 "$TOKENS" "$SECRETS"

cat >"$CONF" <<EOF
# Private SoftHSMv2 configuration for hsmux tests (made by scripts/make-softhsm-tokens.sh).
directories.tokendir = $TOKENS
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
chmod 644 "$CONF"

# Random PINs: 16 hex digits (SoftHSM accepts 4..255 bytes).
openssl rand -hex 8 >"$SECRETS/so-pin"
openssl rand -hex 8 >"$SECRETS/member-pin"
chmod 600 "$SECRETS/so-pin" "$SECRETS/member-pin"
so_pin="$(head -n1 "$SECRETS/so-pin")"
user_pin="$(head -n1 "$SECRETS/member-pin")"

export SOFTHSM2_CONF="$CONF"
for label in member-a member-b member-c; do
  # stdout is reserved for the export line; softhsm2-util's output is shown only on failure.
  if ! out="$(softhsm2-util --init-token --free --label "$label" \
      --so-pin "$so_pin" --pin "$user_pin" 2>&1)"; then
    echo "$out" >&2
    echo "make-softhsm-tokens: could not initialise token $label" >&2
    exit 1
  fi
done

# Self-check: the three labels are present exactly once.
slots="$(softhsm2-util --show-slots 2>/dev/null)"
for label in member-a member-b member-c; do
  n="$(grep -cE "^[[:space:]]*Label:[[:space:]]+${label}[[:space:]]*\$" <<<"$slots" || true)"
  if [ "$n" != 1 ]; then
    echo "make-softhsm-tokens: expected one token labelled $label, found $n" >&2
    exit 1
  fi
done

echo "make-softhsm-tokens: tokens member-a, member-b, member-c in $TOKENS" >&2
printf 'export SOFTHSM2_CONF=%q\n' "$CONF"

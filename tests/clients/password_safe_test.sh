#!/usr/bin/env bash
# Password-safe style configuration: library path + token serial + token label + PIN, no slot
# number. Run under tests/e2e/with_agent.sh. Compiles password_safe_lookup.c (as the test runs,
# like the Java test compiles its program), makes an RSA-2048 key pair through hsmux, and runs the
# lookup: enumerate slots, match serial and label, log in, wrap/unwrap a fresh AES key with RSA.
set -euo pipefail
: "${HSMUX_MODULE:?run under with_agent.sh}" "${HSMUX_TEST_DIR:?}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
W="$HSMUX_TEST_DIR"
OUT="$W/password-safe"
mkdir -p "$OUT"
PIN_FILE="$W/secrets/client-pin"
fail() { echo "password_safe_test: FAIL: $*" >&2; [ -s "$W/module.log" ] && tail -n 20 "$W/module.log" >&2; exit 1; }

cc -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -I/usr/include/p11-kit-1 \
  -o "$OUT/password_safe_lookup" "$HERE/password_safe_lookup.c" -ldl || fail "compile"

pkcs11-tool --module "$HSMUX_MODULE" --login --pin "$(head -n1 "$PIN_FILE")" --keypairgen \
  --key-type rsa:2048 --id 5301 --label pwsafe-rsa --usage-wrap --usage-decrypt >/dev/null ||
  fail "RSA key pair"

echo "== lookup by serial HSMUX0001 and label hsmux-demo"
"$OUT/password_safe_lookup" "$HSMUX_MODULE" HSMUX0001 hsmux-demo "$PIN_FILE" pwsafe-rsa ||
  fail "lookup, login, wrap/unwrap"

echo "== a serial or label that does not match selects nothing"
for args in "HSMUX0002 hsmux-demo" "HSMUX0001 hsmux-dem" "HSMUX000 hsmux-demo"; do
  # shellcheck disable=SC2086
  if "$OUT/password_safe_lookup" "$HSMUX_MODULE" $args "$PIN_FILE" pwsafe-rsa >"$OUT/neg.txt" 2>&1; then
    fail "serial/label [$args] selected a token"
  fi
  grep -q 'no token with that serial and label' "$OUT/neg.txt" || { cat "$OUT/neg.txt" >&2; fail "[$args]: wrong failure"; }
done
echo "password_safe_test: OK"

#!/bin/sh
# End-to-end test of the hsmuxctl binary: hash-pin from stdin and from a
# file, then check-config on a generated config that uses the hash.
# Usage: hsmuxctl_test.sh /path/to/hsmuxctl
set -eu

CTL=$1
DIR=$(mktemp -d "${TMPDIR:-/tmp}/hsmuxctl_test.XXXXXX")
trap 'rm -rf "$DIR"' EXIT INT TERM

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# A PIN with '-', which never occurs in base64: if it shows up in any output,
# it was echoed.
PIN=cli-secret-4711
MEMBER_PIN=member-secret-0815

# hash-pin from stdin: one line on stdout, nothing on stderr.
printf '%s\n' "$PIN" | "$CTL" hash-pin >"$DIR/hash.out" 2>"$DIR/hash.err" ||
  fail "hash-pin from stdin failed: $(cat "$DIR/hash.err")"
HASH=$(cat "$DIR/hash.out")
case $HASH in
  'scrypt$15$8$1$'*) ;;
  *) fail "unexpected hash-pin output: $HASH" ;;
esac
[ "$(wc -l <"$DIR/hash.out")" -eq 1 ] || fail "hash-pin printed more than one line"
[ ! -s "$DIR/hash.err" ] || fail "hash-pin wrote to stderr: $(cat "$DIR/hash.err")"
if grep -q -- "$PIN" "$DIR/hash.out" "$DIR/hash.err"; then
  fail "hash-pin echoed the PIN"
fi

# hash-pin --pin-file: first line only.
printf '%s\nignored second line\n' "$PIN" >"$DIR/pin.txt"
"$CTL" hash-pin --pin-file "$DIR/pin.txt" >"$DIR/hash2.out" ||
  fail "hash-pin --pin-file failed"
grep -q '^scrypt\$' "$DIR/hash2.out" || fail "hash-pin --pin-file: no hash"
if grep -q -- "$PIN" "$DIR/hash2.out"; then fail "hash-pin echoed the PIN"; fi

# An empty PIN is refused.
if printf '\n' | "$CTL" hash-pin >/dev/null 2>&1; then
  fail "hash-pin accepted an empty PIN"
fi

# check-config on a good config.
: >"$DIR/ca.pem"
: >"$DIR/server.pem"
: >"$DIR/server.key"
: >"$DIR/libfake.so"
printf '%s\n' "$MEMBER_PIN" >"$DIR/pin-a"
cat >"$DIR/hsmuxd.yaml" <<YAML
listen: 127.0.0.1:7443
tls: {ca: $DIR/ca.pem, cert: $DIR/server.pem, key: $DIR/server.key}
state_dir: $DIR/state
groups:
  - slot_id: 1
    label: hsmux-demo
    serial: HSMUX0001
    members:
      - name: a
        library: $DIR/libfake.so
        token_label: member-a
        pin_file: $DIR/pin-a
clients:
  - common_name: client-1
    groups:
      - slot_id: 1
        pin_hash: "$HASH"
YAML
OUT=$("$CTL" check-config --config "$DIR/hsmuxd.yaml") ||
  fail "check-config rejected a good config"
[ "$OUT" = "config OK: 1 groups, 1 members, 1 clients" ] ||
  fail "unexpected check-config output: $OUT"
OUT=$("$CTL" check-config --config="$DIR/hsmuxd.yaml") ||
  fail "check-config --config=F failed"

# A bad config: exit 1, "file:line: ..." on stderr, nothing on stdout, and
# no PIN.
sed 's/^    serial: HSMUX0001$/    serail: HSMUX0001/' "$DIR/hsmuxd.yaml" >"$DIR/bad.yaml"
set +e
"$CTL" check-config --config "$DIR/bad.yaml" >"$DIR/bad.out" 2>"$DIR/bad.err"
RC=$?
set -e
[ "$RC" -eq 1 ] || fail "check-config on a bad config: exit $RC, want 1"
[ ! -s "$DIR/bad.out" ] || fail "check-config wrote to stdout on error"
grep -q -- "$DIR/bad.yaml:7: groups\[0\]: unknown key 'serail'" "$DIR/bad.err" ||
  fail "unexpected error: $(cat "$DIR/bad.err")"
if grep -q -- "$MEMBER_PIN" "$DIR/bad.err"; then fail "error shows the PIN"; fi

# Usage: --help exits 0, an unknown command or option exits 2.
"$CTL" --help | grep -q '^usage: hsmuxctl' || fail "--help"
"$CTL" check-config --help | grep -q 'check-config' || fail "check-config --help"
set +e
"$CTL" frobnicate >/dev/null 2>"$DIR/usage.err"
RC=$?
"$CTL" check-config --bogus >/dev/null 2>&1
RC2=$?
"$CTL" >/dev/null 2>&1
RC3=$?
set -e
[ "$RC" -eq 2 ] || fail "unknown command: exit $RC, want 2"
grep -q '^usage: hsmuxctl' "$DIR/usage.err" || fail "unknown command: no usage"
[ "$RC2" -eq 2 ] || fail "unknown option: exit $RC2, want 2"
[ "$RC3" -eq 2 ] || fail "no command: exit $RC3, want 2"

echo "hsmuxctl CLI test passed"

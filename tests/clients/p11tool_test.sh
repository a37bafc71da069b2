#!/usr/bin/env bash
# GnuTLS p11tool against hsmux: the token and its objects by pkcs11: URI.
# Run under tests/e2e/with_agent.sh.
set -euo pipefail
: "${HSMUX_MODULE:?run under with_agent.sh}" "${HSMUX_TEST_DIR:?}"
W="$HSMUX_TEST_DIR"
OUT="$W/p11tool"
mkdir -p "$OUT"
PIN="$(head -n1 "$W/secrets/client-pin")"
fail() { echo "p11tool_test: FAIL: $*" >&2; [ -s "$W/module.log" ] && tail -n 20 "$W/module.log" >&2; exit 1; }
P11T=(p11tool --provider "$HSMUX_MODULE")
# p11-kit, which GnuTLS loads modules through, initialises every module with
# CKF_LIBRARY_CANT_CREATE_OS_THREADS; hsmux needs threads and refuses that by
# default (spec-exact). Behind p11-kit the operator says the flag is a
# formality (docs/decisions/0009-cant-create-threads.md).
grep -q '^cant_create_threads:' "$HSMUX_CONFIG" || echo 'cant_create_threads: ignore' >>"$HSMUX_CONFIG"

pkcs11-tool --module "$HSMUX_MODULE" --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 \
  --id 5401 --label p11tool-ec >/dev/null || fail "EC key pair"
openssl req -new -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=p11tool test" \
  -keyout "$OUT/k.pem" -outform DER -out "$OUT/cert.der" 2>/dev/null
pkcs11-tool --module "$HSMUX_MODULE" --login --pin "$PIN" --write-object "$OUT/cert.der" \
  --type cert --id 5402 --label p11tool-cert >/dev/null || fail "write certificate"

echo "== p11tool --list-tokens"
rc=0
"${P11T[@]}" --list-tokens >"$OUT/tokens.txt" 2>&1 || rc=$?
cat "$OUT/tokens.txt"
if grep -q 'pkcs11_add_provider: Thread locking error' "$OUT/tokens.txt"; then
  # p11-kit (which GnuTLS loads modules through) calls C_Initialize with flags
  # CKF_OS_LOCKING_OK | CKF_LIBRARY_CANT_CREATE_OS_THREADS; the module answers
  # CKR_NEED_TO_CREATE_THREADS (module/bridge.cc, DESIGN §2), which GnuTLS reports like this.
  fail "C_Initialize refused p11-kit's init args (CKF_LIBRARY_CANT_CREATE_OS_THREADS -> CKR_NEED_TO_CREATE_THREADS)"
fi
[ "$rc" -eq 0 ] || fail "p11tool --list-tokens exit $rc"
grep -q '^Token [0-9]*:' "$OUT/tokens.txt" || fail "no token listed"
URI="$(grep -A1 -E '^Token [0-9]+:' "$OUT/tokens.txt" | sed -nE 's/^[[:space:]]*URL: (pkcs11:.*token=hsmux-demo.*)$/\1/p' | head -n1)"
[ -n "$URI" ] || fail "no URL line for token hsmux-demo"
case "$URI" in *serial=HSMUX0001*) ;; *) fail "token URI without serial=HSMUX0001: $URI" ;; esac
grep -A8 'token=hsmux-demo' "$OUT/tokens.txt" | grep -q 'Serial: HSMUX0001' || fail "serial not shown"
echo "token URI: $URI"

echo "== p11tool --list-all (public objects, no login)"
"${P11T[@]}" --list-all "$URI" | tee "$OUT/public.txt"
grep -q 'Label: p11tool-cert' "$OUT/public.txt" || fail "certificate not listed without login"
grep -q 'Type: Private key' "$OUT/public.txt" && fail "a private key listed without login"

echo "== p11tool --login --list-all (GNUTLS_PIN)"
GNUTLS_PIN="$PIN" "${P11T[@]}" --login --list-all "$URI" | tee "$OUT/all.txt"
for want in 'Label: p11tool-ec' 'Label: p11tool-cert' 'Type: Private key' 'Type: Public key' 'Type: X.509 Certificate'; do
  grep -q "$want" "$OUT/all.txt" || fail "--login --list-all does not show '$want'"
done
grep -q 'ID: 54:01' "$OUT/all.txt" || fail "key ID 54:01 not shown"

echo "== p11tool --list-all-privkeys and --export by object URI"
GNUTLS_PIN="$PIN" "${P11T[@]}" --login --list-all-privkeys "$URI;object=p11tool-ec" | tee "$OUT/priv.txt"
grep -q 'object=p11tool-ec;type=private' "$OUT/priv.txt" || fail "private key URI not listed"
"${P11T[@]}" --export "$URI;object=p11tool-cert;type=cert" --outder --outfile "$OUT/exported.der"
cmp -s "$OUT/cert.der" "$OUT/exported.der" || fail "exported certificate differs from the written one"

echo "== wrong GNUTLS_PIN"
if GNUTLS_PIN=wrong-pin "${P11T[@]}" --login --list-all-privkeys "$URI" >"$OUT/wrong.txt" 2>&1; then
  grep -q 'type=private' "$OUT/wrong.txt" && fail "a wrong PIN listed private keys"
fi
echo "p11tool_test: OK"

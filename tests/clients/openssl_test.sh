#!/usr/bin/env bash
# OpenSSL 3 through Debian's PKCS#11 engine (libengine-pkcs11-openssl) against hsmux, keys named
# by pkcs11: URIs (token label, object label, type). Run under tests/e2e/with_agent.sh.
#
#   1. RSA-2048 and EC P-256 key pairs made through hsmux (pkcs11-tool);
#   2. OPENSSL_CONF = packaging/examples/openssl-hsmux.cnf with MODULE_PATH pointed at the build;
#   3. openssl req -new -x509 signed by the RSA key and by the EC key; openssl x509 shows the
#      token's public key in the certificate; openssl verify accepts the self-signed certificates;
#   4. openssl dgst -sign with RSA-PSS (SHA-256, salt 32) and ECDSA through the engine, verified by
#      OpenSSL in software with the public keys.
set -euo pipefail
: "${HSMUX_MODULE:?run under with_agent.sh}" "${HSMUX_TEST_DIR:?}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
W="$HSMUX_TEST_DIR"
OUT="$W/openssl"
mkdir -p "$OUT"
PIN="$(head -n1 "$W/secrets/client-pin")"
fail() { echo "openssl_test: FAIL: $*" >&2; [ -s "$W/module.log" ] && tail -n 20 "$W/module.log" >&2; exit 1; }
step() { echo "== $*"; }
ENGINE_SO=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
[ -r "$ENGINE_SO" ] || fail "$ENGINE_SO missing (scripts/install-deps.sh installs libengine-pkcs11-openssl)"

p11() { pkcs11-tool --module "$HSMUX_MODULE" --login --pin "$PIN" "$@"; }
step "key pairs through hsmux: RSA-2048 (ossl-rsa) and EC P-256 (ossl-ec)"
p11 --keypairgen --key-type rsa:2048 --id 5201 --label ossl-rsa >/dev/null || fail "RSA key pair"
p11 --keypairgen --key-type EC:prime256v1 --id 5202 --label ossl-ec >/dev/null || fail "EC key pair"
for k in rsa:5201 ec:5202; do
  p11 --read-object --type pubkey --id "${k#*:}" -o "$OUT/${k%%:*}-pub.der" >/dev/null
  openssl pkey -pubin -inform DER -in "$OUT/${k%%:*}-pub.der" -out "$OUT/${k%%:*}-pub.pem"
done

step "OPENSSL_CONF from packaging/examples/openssl-hsmux.cnf"
sed -e "s#^MODULE_PATH = .*#MODULE_PATH = $HSMUX_MODULE#" -e "s#^dynamic_path = .*#dynamic_path = $ENGINE_SO#" \
  "$REPO/packaging/examples/openssl-hsmux.cnf" >"$OUT/openssl-hsmux.cnf"
export OPENSSL_CONF="$OUT/openssl-hsmux.cnf"
openssl engine -t pkcs11 | tee "$OUT/engine.txt"
grep -q 'available' "$OUT/engine.txt" || fail "engine pkcs11 not available"

# The PIN travels in the URI (pin-value), so the tests need no terminal; never echoed.
uri() { printf 'pkcs11:token=hsmux-demo;object=%s;type=private;pin-value=%s' "$1" "$PIN"; }
ENG=(-engine pkcs11 -keyform engine)

for kind in rsa ec; do
  step "openssl req -new -x509 signed by ossl-$kind (pkcs11:token=hsmux-demo;object=ossl-$kind;type=private)"
  openssl req -new -x509 "${ENG[@]}" -key "$(uri "ossl-$kind")" -sha256 -days 30 \
    -subj "/CN=hsmux openssl $kind test" -out "$OUT/$kind-cert.pem" 2>"$OUT/req-$kind.err" ||
    { cat "$OUT/req-$kind.err" >&2; fail "openssl req with ossl-$kind"; }
  openssl x509 -in "$OUT/$kind-cert.pem" -noout -subject -issuer -dates
  openssl x509 -in "$OUT/$kind-cert.pem" -noout -pubkey >"$OUT/$kind-cert-pub.pem"
  cmp -s <(openssl pkey -pubin -in "$OUT/$kind-cert-pub.pem" -outform DER) \
         <(openssl pkey -pubin -in "$OUT/$kind-pub.pem" -outform DER) ||
    fail "the $kind certificate does not carry the token's public key"
  openssl verify -CAfile "$OUT/$kind-cert.pem" "$OUT/$kind-cert.pem" || fail "openssl verify ($kind)"
  openssl x509 -in "$OUT/$kind-cert.pem" -noout -text | grep -E 'Signature Algorithm' | head -n1
done

printf 'hsmux openssl engine test %s\n' "$(date -u +%s)" >"$OUT/message.txt"
step "openssl dgst -sign RSA-PSS (SHA-256, salt 32) through the engine"
PSS=(-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha256)
openssl dgst -sha256 "${ENG[@]}" -sign "$(uri ossl-rsa)" "${PSS[@]}" -out "$OUT/msg.pss.sig" \
  "$OUT/message.txt" 2>"$OUT/pss.err" || { cat "$OUT/pss.err" >&2; fail "RSA-PSS sign"; }
openssl dgst -sha256 -verify "$OUT/rsa-pub.pem" "${PSS[@]}" -signature "$OUT/msg.pss.sig" \
  "$OUT/message.txt" || fail "RSA-PSS signature does not verify"
# A PSS signature is not a PKCS#1 v1.5 one.
if openssl dgst -sha256 -verify "$OUT/rsa-pub.pem" -signature "$OUT/msg.pss.sig" "$OUT/message.txt" >/dev/null 2>&1; then
  fail "the PSS signature verifies as PKCS#1 v1.5"
fi

step "openssl dgst -sign ECDSA through the engine"
openssl dgst -sha256 "${ENG[@]}" -sign "$(uri ossl-ec)" -out "$OUT/msg.ec.sig" \
  "$OUT/message.txt" 2>"$OUT/ec.err" || { cat "$OUT/ec.err" >&2; fail "ECDSA sign"; }
openssl dgst -sha256 -verify "$OUT/ec-pub.pem" -signature "$OUT/msg.ec.sig" "$OUT/message.txt" ||
  fail "ECDSA signature does not verify"
openssl asn1parse -inform DER -in "$OUT/msg.ec.sig" >/dev/null || fail "ECDSA signature is not DER"
echo "openssl_test: OK"

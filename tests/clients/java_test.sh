#!/usr/bin/env bash
# Java SunPKCS11 (Debian's OpenJDK 17) against hsmux, as identity servers use it.
# Run under tests/e2e/with_agent.sh (HSMUX_MODULE, HSMUX_CONFIG, HSMUX_TEST_DIR, SOFTHSM2_CONF,
# HSMUX_AGENT_PID, HSMUX_AGENT_START):
#
#   1. packaging/examples/sunpkcs11-hsmux.cfg with `library` pointed at the build's module;
#   2. a wrong PIN: KeyStore.load fails with IOException <- FailedLoginException <- CKR_PIN_INCORRECT;
#   3. keytool -genseckey HmacSHA256 (openidm-sym-default, openidm-selfservice-key,
#      openidm-jwtsessionhmac-key) and AES-256 (openidm-aes); keytool -genkeypair RSA-2048 with a
#      self-signed certificate (openidm-localhost, selfservice) and EC P-256 (openidm-ec);
#      keytool -list; keytool -exportcert and -importcert into a PKCS12 file truststore;
#   4. HsmuxJavaClient (javac here): KeyStore.load lists every alias; SHA256withRSA and
#      SHA256withECDSA verified with the public keys; KeyPairGenerator EC; HmacSHA256;
#      AES/GCM/NoPadding round trip;
#   5. directly on each SoftHSM member: every key made through Java exists on all three, the
#      same HMAC on each member as through Java, RSA and ECDSA signatures made by each member's
#      replica verify with the certificate's public key;
#   6. an agent outage inside one JVM: kill the agent (the next call fails with
#      CKR_DEVICE_ERROR), start it again, and record what works afterwards (see the README,
#      "Use it from Java").
set -euo pipefail
: "${HSMUX_MODULE:?run under with_agent.sh}" "${HSMUX_TEST_DIR:?}" "${SOFTHSM2_CONF:?}"
: "${HSMUX_AGENT_PID:?}" "${HSMUX_AGENT_START:?}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
W="$HSMUX_TEST_DIR"
OUT="$W/java"
mkdir -p "$OUT"
SOFTHSM_LIB=/usr/lib/softhsm/libsofthsm2.so
PIN_FILE="$W/secrets/client-pin"
PIN="$(head -n1 "$PIN_FILE")"
MEMBER_PIN="$(head -n1 "$W/secrets/member-pin")"
fail() { echo "java_test: FAIL: $*" >&2; [ -s "$W/module.log" ] && tail -n 20 "$W/module.log" >&2; exit 1; }
step() { echo "== $*"; }
NEW_AGENT=""
cleanup() {
  if [ -n "$NEW_AGENT" ]; then kill "$NEW_AGENT" 2>/dev/null || true; wait "$NEW_AGENT" 2>/dev/null || true; fi
}
trap cleanup EXIT

command -v keytool >/dev/null && command -v javac >/dev/null ||
  fail "keytool/javac not found (scripts/install-deps.sh installs openjdk-17-jdk-headless)"

step "SunPKCS11 config from packaging/examples/sunpkcs11-hsmux.cfg"
CFG="$OUT/sunpkcs11-hsmux.cfg"
sed "s#^library = .*#library = $HSMUX_MODULE#" "$REPO/packaging/examples/sunpkcs11-hsmux.cfg" >"$CFG"
grep -q "^library = $HSMUX_MODULE\$" "$CFG" || fail "library line not replaced in $CFG"

step "compile HsmuxJavaClient"
javac -d "$OUT/classes" "$HERE/HsmuxJavaClient.java"
JC=(java -cp "$OUT/classes" HsmuxJavaClient "$CFG" "$PIN_FILE")

# keytool on the token; the PIN is passed with -storepass:file (never on the command line).
printf '%s\n' "$PIN" >"$OUT/storepass"
chmod 600 "$OUT/storepass"
KT=(keytool -keystore NONE -storetype PKCS11 -addprovider SunPKCS11 -providerArg "$CFG"
    -storepass:file "$OUT/storepass")

step "wrong PIN (before any good login)"
"${JC[@]}" wrongpin | tee "$OUT/wrongpin.txt" || fail "wrong PIN"

step "keytool -genseckey HmacSHA256 and AES"
for alias in openidm-sym-default openidm-selfservice-key openidm-jwtsessionhmac-key; do
  "${KT[@]}" -genseckey -alias "$alias" -keyalg HmacSHA256 -keysize 256 || fail "genseckey $alias"
done
"${KT[@]}" -genseckey -alias openidm-aes -keyalg AES -keysize 256 || fail "genseckey openidm-aes"

step "keytool -genkeypair RSA-2048 (self-signed) and EC P-256"
"${KT[@]}" -genkeypair -alias openidm-localhost -keyalg RSA -keysize 2048 -sigalg SHA256withRSA \
  -dname "CN=localhost, O=OpenIDM Self-Signed Certificate, OU=None, L=None, ST=None, C=None" \
  -validity 3650 || fail "genkeypair openidm-localhost"
"${KT[@]}" -genkey -alias selfservice -keyalg RSA -keysize 2048 \
  -dname "CN=selfservice, O=hsmux test" -validity 3650 || fail "genkey selfservice"
"${KT[@]}" -genkeypair -alias openidm-ec -keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA \
  -dname "CN=openidm-ec, O=hsmux test" -validity 3650 || fail "genkeypair openidm-ec"

ALIASES=(openidm-sym-default openidm-selfservice-key openidm-jwtsessionhmac-key openidm-aes
         openidm-localhost selfservice openidm-ec)
step "keytool -list"
"${KT[@]}" -list | tee "$OUT/keytool-list.txt" || fail "keytool -list"
for alias in "${ALIASES[@]}"; do
  grep -q "^$alias," "$OUT/keytool-list.txt" || fail "keytool -list does not show $alias"
done
grep -q "^openidm-localhost, PrivateKeyEntry" "$OUT/keytool-list.txt" || fail "openidm-localhost is not a PrivateKeyEntry"
grep -q "^openidm-sym-default, SecretKeyEntry" "$OUT/keytool-list.txt" || fail "openidm-sym-default is not a SecretKeyEntry"

step "keytool -exportcert and import into a file truststore"
for alias in openidm-localhost selfservice openidm-ec; do
  "${KT[@]}" -exportcert -rfc -alias "$alias" -file "$OUT/$alias.crt" || fail "exportcert $alias"
  openssl x509 -in "$OUT/$alias.crt" -noout -subject
  openssl verify -CAfile "$OUT/$alias.crt" "$OUT/$alias.crt" || fail "self-signed $alias does not verify"
  openssl x509 -in "$OUT/$alias.crt" -pubkey -noout >"$OUT/$alias.pub.pem"
done
rm -f "$OUT/truststore.p12"
keytool -importcert -noprompt -alias openidm-localhost -file "$OUT/openidm-localhost.crt" \
  -keystore "$OUT/truststore.p12" -storetype PKCS12 -storepass changeit || fail "importcert"
keytool -list -keystore "$OUT/truststore.p12" -storetype PKCS12 -storepass changeit |
  grep -q '^openidm-localhost, .*trustedCertEntry' || fail "truststore does not hold openidm-localhost"

step "Java program: KeyStore.load lists every alias"
"${JC[@]}" list "${ALIASES[@]}" | tee "$OUT/list.txt" || fail "KeyStore.load / aliases"
step "Java program: Signature, KeyPairGenerator, Mac, Cipher"
"${JC[@]}" crypto "$OUT" | tee "$OUT/crypto.txt" || fail "crypto"
printf 'hsmux java client test message' >"$OUT/message.txt"

# ---- every Java key on every member, directly --------------------------------------------------
member() {  # member LETTER ARGS...: pkcs11-tool logged in on member-LETTER
  local m="$1"; shift
  pkcs11-tool --module "$SOFTHSM_LIB" --token-label "member-$m" --login --pin "$MEMBER_PIN" "$@"
}
step "keys on each member (pkcs11-tool directly on SoftHSM)"
for m in a b c; do
  member "$m" --list-objects >"$OUT/member-$m.objects" 2>&1 || fail "list objects on member-$m"
done
# "Secret Key Object; GENERIC length 32" / "Private Key Object; RSA 2048 bits" headers, then
# "  label:  ALIAS": the class of each labelled object.
classes_of() {  # classes_of FILE LABEL -> sorted object kinds with that label
  awk -v want="$2" '
    /^[A-Za-z].* Object/ { kind = $0; sub(/;.*/, "", kind) }
    /^  label:/ { l = $0; sub(/^  label:[ \t]*/, "", l); if (l == want) print kind }' "$1" | sort | xargs
}
for alias in "${ALIASES[@]}"; do
  ref="$(classes_of "$OUT/member-a.objects" "$alias")"
  [ -n "$ref" ] || fail "$alias not found on member-a (see $OUT/member-a.objects)"
  for m in b c; do
    got="$(classes_of "$OUT/member-$m.objects" "$alias")"
    [ "$got" = "$ref" ] || fail "$alias: member-a has [$ref], member-$m has [$got]"
  done
  echo "$alias on member-a, member-b, member-c: $ref"
done
for alias in openidm-sym-default openidm-selfservice-key openidm-jwtsessionhmac-key openidm-aes; do
  [ "$(classes_of "$OUT/member-a.objects" "$alias")" = "Secret Key Object" ] || fail "$alias is not a secret key on the members"
done
# P11KeyStore labels the certificate with the alias and gives the private key (no label) and the
# certificate CKA_ID = the alias's bytes.
hexid() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }
ids_of() {  # ids_of FILE HEXID -> sorted object kinds with that CKA_ID
  awk -v want="$2" '
    /^[A-Za-z].* Object/ { kind = $0; sub(/;.*/, "", kind) }
    /^  ID:/ { i = $0; sub(/^  ID:[ \t]*/, "", i); if (i == want) print kind }' "$1" | sort | xargs
}
for alias in openidm-localhost selfservice openidm-ec; do
  for m in a b c; do
    got="$(ids_of "$OUT/member-$m.objects" "$(hexid "$alias")")"
    [ "$got" = "Certificate Object Private Key Object" ] ||
      fail "$alias: objects with CKA_ID '$alias' on member-$m: [$got], want a certificate and a private key"
  done
  echo "$alias: certificate and private key (CKA_ID $(hexid "$alias")) on member-a, member-b, member-c"
done

step "by function on each member: HMAC-SHA256 equal to Java's"
# SunPKCS11 gives secret keys a label (the alias) but no CKA_ID, and pkcs11-tool --sign selects
# a key by CKA_ID only (without --id it takes the first secret key it finds). So each member is
# checked through a SunPKCS11 config that names the member's SoftHSM slot directly, and the
# member's own KeyStore finds the key by its label.
HMAC_ALIASES=(openidm-sym-default openidm-selfservice-key openidm-jwtsessionhmac-key)
printf '%s\n' "$MEMBER_PIN" >"$OUT/member-pin"; chmod 600 "$OUT/member-pin"
for m in a b c; do
  slot="$(softhsm2-util --show-slots | awk -v want="member-$m" '
    /^Slot [0-9]+/ { slot = $2 } /^[[:space:]]*Label:/ { l = $0; sub(/^[[:space:]]*Label:[[:space:]]*/, "", l);
    sub(/[[:space:]]+$/, "", l); if (l == want) print slot }')"
  [ -n "$slot" ] || fail "no SoftHSM slot for member-$m"
  printf 'name = member-%s\nlibrary = %s\nslot = %s\n' "$m" "$SOFTHSM_LIB" "$slot" >"$OUT/member-$m.cfg"
  java -cp "$OUT/classes" HsmuxJavaClient "$OUT/member-$m.cfg" "$OUT/member-pin" mac "$OUT" "$m" \
    "${HMAC_ALIASES[@]}" >/dev/null || fail "HMAC on member-$m (SunPKCS11 directly on SoftHSM slot $slot)"
done
for alias in "${HMAC_ALIASES[@]}"; do
  for m in a b c; do
    cmp -s "$OUT/$alias.mac" "$OUT/$alias.mac.$m" || fail "$alias: member-$m's HMAC differs from the one made through hsmux"
  done
  echo "$alias: HMAC-SHA256 identical through hsmux and on member-a, -b, -c ($(od -An -tx1 "$OUT/$alias.mac" | tr -d ' \n' | cut -c1-16)...)"
done

step "by function on each member: RSA and ECDSA signatures verify with the certificate"
openssl dgst -sha256 -binary -out "$OUT/message.sha256" "$OUT/message.txt"
for m in a b c; do
  for alias in openidm-localhost selfservice; do
    member "$m" --sign -m SHA256-RSA-PKCS --type privkey --id "$(hexid "$alias")" -i "$OUT/message.txt" \
      -o "$OUT/$alias.sig.$m" >/dev/null 2>"$OUT/sign.err" || { cat "$OUT/sign.err" >&2; fail "RSA sign $alias on member-$m"; }
    openssl dgst -sha256 -verify "$OUT/$alias.pub.pem" -signature "$OUT/$alias.sig.$m" "$OUT/message.txt" \
      >/dev/null || fail "$alias: member-$m's signature does not verify"
    # PKCS#1 v1.5 is deterministic: every replica and Java give the same bytes.
    cmp -s "$OUT/$alias.sig" "$OUT/$alias.sig.$m" || fail "$alias: member-$m's signature differs from Java's"
  done
  member "$m" --sign -m ECDSA --type privkey --id "$(hexid openidm-ec)" --signature-format openssl \
    -i "$OUT/message.sha256" -o "$OUT/openidm-ec.sig.$m" >/dev/null 2>"$OUT/sign.err" ||
    { cat "$OUT/sign.err" >&2; fail "ECDSA sign on member-$m"; }
  openssl dgst -sha256 -verify "$OUT/openidm-ec.pub.pem" -signature "$OUT/openidm-ec.sig.$m" \
    "$OUT/message.txt" >/dev/null || fail "openidm-ec: member-$m's signature does not verify"
  echo "member-$m: RSA (openidm-localhost, selfservice) and ECDSA (openidm-ec) signatures verify"
done

# ---- agent outage -------------------------------------------------------------------------------
step "agent outage inside one JVM"
STATE="$OUT/outage"
rm -rf "$STATE"; mkdir -p "$STATE"
"${JC[@]}" outage "$STATE" >"$OUT/outage.txt" 2>&1 &
JAVA=$!
wait_file() {
  local i
  for ((i = 0; i < 1200; i++)); do
    [ -e "$1" ] && return 0
    kill -0 "$JAVA" 2>/dev/null || { cat "$OUT/outage.txt" >&2; fail "the Java program ended early"; }
    sleep 0.1
  done
  fail "timed out waiting for $1"
}
wait_file "$STATE/kill-agent"
kill -TERM "$HSMUX_AGENT_PID"
for ((i = 0; i < 100; i++)); do kill -0 "$HSMUX_AGENT_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$HSMUX_AGENT_PID" 2>/dev/null && fail "the agent did not stop"
touch "$STATE/killed"
wait_file "$STATE/start-agent"
$HSMUX_AGENT_START >"$W/hsmuxd-restart.log" 2>&1 &
NEW_AGENT=$!
for ((i = 0; i < 300; i++)); do
  grep -q '^hsmuxd: serving on ' "$W/hsmuxd-restart.log" && break
  kill -0 "$NEW_AGENT" 2>/dev/null || { cat "$W/hsmuxd-restart.log" >&2; fail "restarted agent exited"; }
  sleep 0.1
done
grep -q '^hsmuxd: serving on ' "$W/hsmuxd-restart.log" || fail "restarted agent not ready"
touch "$STATE/restarted"
rc=0; wait "$JAVA" || rc=$?
cat "$OUT/outage.txt"
[ "$rc" -eq 0 ] || fail "outage (exit $rc)"
echo "outage result: $(cat "$STATE/result")"
echo "java_test: OK"

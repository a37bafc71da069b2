#!/usr/bin/env bash
# TLS policy of the agent's listener (DESIGN §6, issue 7 item 3): TLS 1.2 or
# later only, a client certificate required, and a new server certificate
# written over the old files is served within the reload interval (10 s)
# without a restart. Run under with_agent.sh.
set -euo pipefail
W="$HSMUX_TEST_DIR"
P="$W/pki"
ADDR="127.0.0.1:$HSMUX_AGENT_PORT"
fail() { echo "tls: FAIL: $*" >&2; echo "tls: 0 passed, 1 failed"; exit 1; }
serial_seen() {
  openssl s_client -connect "$ADDR" -servername localhost -cert "$P/client.pem" -key "$P/client.key" \
    -CAfile "$P/ca.pem" </dev/null 2>/dev/null | openssl x509 -noout -serial 2>/dev/null || true
}

if openssl s_client -connect "$ADDR" -tls1_1 -cert "$P/client.pem" -key "$P/client.key" \
    -CAfile "$P/ca.pem" </dev/null 2>/dev/null | grep -q 'BEGIN CERTIFICATE'; then
  fail "a TLS 1.1 handshake succeeded"
fi
proto="$(openssl s_client -brief -connect "$ADDR" -cert "$P/client.pem" -key "$P/client.key" \
  -CAfile "$P/ca.pem" </dev/null 2>&1 | sed -n 's/^Protocol version: *//p' | head -n1 || true)"
case "$proto" in TLSv1.2|TLSv1.3) ;; *) fail "negotiated '$proto'" ;; esac

before="$(serial_seen)"
[ -n "$before" ] || fail "no server certificate seen"
# A new server certificate from the same CA, written over the old files.
openssl ecparam -name prime256v1 -genkey -noout -out "$W/new-server.key" 2>/dev/null
openssl req -new -sha256 -key "$W/new-server.key" -subj "/O=hsmux test/CN=hsmuxd" -out "$W/new.csr"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\nbasicConstraints=CA:FALSE\n' >"$W/new.ext"
openssl x509 -req -sha256 -days 2 -set_serial 0x7e57 -in "$W/new.csr" -CA "$P/ca.pem" \
  -CAkey "$P/ca.key" -extfile "$W/new.ext" -out "$W/new-server.pem" 2>/dev/null
cp "$W/new-server.key" "$P/server.key.tmp" && mv "$P/server.key.tmp" "$P/server.key"
cp "$W/new-server.pem" "$P/server.pem.tmp" && mv "$P/server.pem.tmp" "$P/server.pem"
after=""
for _ in $(seq 1 30); do
  sleep 1
  after="$(serial_seen)"
  [ "$after" = "serial=7E57" ] && break
done
[ "$after" = "serial=7E57" ] || fail "new certificate not served after 30 s (before: $before, now: $after)"
# The module still works against the new certificate.
pkcs11-tool --module "$HSMUX_MODULE" --login --pin "$(head -n1 "$W/secrets/client-pin")" \
  --generate-random 16 >/dev/null || fail "module call after the reload"
echo "tls: 1 passed, 0 failed"

#!/usr/bin/env bash
# Makes a throw-away test PKI for hsmux with the openssl CLI (never commit it).
#
#   scripts/make-test-pki.sh DIR
#
# Writes into DIR/pki/ (DIR is the same work directory the other scripts take):
#   ca.pem ca.key                  test CA (ECDSA P-256), trusted by agent and module
#   server.pem server.key          hsmuxd: CN=hsmuxd, SAN DNS:localhost, IP:127.0.0.1, serverAuth
#   client.pem client.key          CN=client-1, clientAuth
#   client-2.pem client-2.key      CN=client-2, clientAuth (a second identity)
#   rogue-ca.pem rogue-ca.key      an unrelated CA, trusted by nobody
#   rogue-client.pem rogue-client.key  CN=client-1 issued by the rogue CA (must be rejected)
#   expired-client.pem expired-client.key  CN=client-1 from the test CA, valid from two days
#                                  ago until yesterday (expired: must be rejected)
# Private keys are mode 600. Existing files in DIR/pki are replaced.
set -euo pipefail

usage() { echo "usage: $0 DIR" >&2; exit 2; }
[ "$#" -eq 1 ] || usage
[ -n "$1" ] || usage

mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
PKI="$DIR/pki"
DAYS="${HSMUX_PKI_DAYS:-30}"

command -v openssl >/dev/null || { echo "make-test-pki: openssl not found (run scripts/install-deps.sh)" >&2; exit 1; }

umask 077   # keys are never readable by others, not even for a moment
mkdir -p "$PKI"
chmod 700 "$PKI"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

newkey() {  # newkey FILE
  rm -f "$1"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
    -pkeyopt ec_param_enc:named_curve -out "$1" 2>/dev/null
  chmod 600 "$1"
}

serial() { echo "0x$(openssl rand -hex 16)"; }

make_ca() {  # make_ca NAME CN
  local name="$1" cn="$2"
  newkey "$PKI/$name.key"
  cat >"$TMP/$name.ext" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
O = hsmux test
CN = $cn
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
  openssl req -new -x509 -sha256 -days "$DAYS" -set_serial "$(serial)" \
    -key "$PKI/$name.key" -config "$TMP/$name.ext" -out "$PKI/$name.pem"
}

# make_leaf NAME CN EKU ISSUER [SAN]
make_leaf() {
  local name="$1" cn="$2" eku="$3" issuer="$4" san="${5:-}"
  newkey "$PKI/$name.key"
  openssl req -new -sha256 -key "$PKI/$name.key" -subj "/O=hsmux test/CN=$cn" \
    -out "$TMP/$name.csr"
  {
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyAgreement"
    echo "extendedKeyUsage = $eku"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid, issuer"
    if [ -n "$san" ]; then echo "subjectAltName = $san"; fi
  } >"$TMP/$name.ext"
  openssl x509 -req -sha256 -days "$DAYS" -set_serial "$(serial)" \
    -in "$TMP/$name.csr" -CA "$PKI/$issuer.pem" -CAkey "$PKI/$issuer.key" \
    -extfile "$TMP/$name.ext" -out "$PKI/$name.pem" 2>/dev/null
}

make_ca ca "hsmux test CA"
make_leaf server hsmuxd serverAuth ca "DNS:localhost, IP:127.0.0.1"
make_leaf client client-1 clientAuth ca
make_leaf client-2 client-2 clientAuth ca
make_ca rogue-ca "hsmux rogue CA"
make_leaf rogue-client client-1 clientAuth rogue-ca

# make_expired NAME CN: a client certificate from the test CA whose validity
# ended yesterday. `openssl x509 -req` (OpenSSL 3.0) cannot put a notAfter in
# the past after a notBefore; `openssl ca` takes both dates.
make_expired() {
  local name="$1" cn="$2"
  newkey "$PKI/$name.key"
  openssl req -new -sha256 -key "$PKI/$name.key" -subj "/O=hsmux test/CN=$cn" \
    -out "$TMP/$name.csr"
  mkdir -p "$TMP/ca-db"
  : >"$TMP/ca-db/index.txt"
  cat >"$TMP/$name.cnf" <<CNF
[ca]
default_ca = test_ca
[test_ca]
database = $TMP/ca-db/index.txt
new_certs_dir = $TMP/ca-db
default_md = sha256
policy = any_name
unique_subject = no
rand_serial = yes
copy_extensions = none
[any_name]
O = optional
CN = supplied
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
CNF
  openssl ca -batch -notext -config "$TMP/$name.cnf" -extensions leaf \
    -cert "$PKI/ca.pem" -keyfile "$PKI/ca.key" -in "$TMP/$name.csr" -out "$PKI/$name.pem" \
    -startdate "$(date -u -d '-2 days' +%Y%m%d%H%M%SZ)" \
    -enddate "$(date -u -d '-1 day' +%Y%m%d%H%M%SZ)" >/dev/null 2>&1
}
make_expired expired-client client-1

# Certificates are public; keys stay 600.
chmod 644 "$PKI"/*.pem
chmod 755 "$PKI"

# Self-check: every leaf chains to its own CA for its purpose, and the rogue does not chain to ours.
openssl verify -x509_strict -purpose sslserver -CAfile "$PKI/ca.pem" "$PKI/server.pem" >/dev/null
openssl verify -x509_strict -purpose sslclient -CAfile "$PKI/ca.pem" "$PKI/client.pem" "$PKI/client-2.pem" >/dev/null
openssl verify -x509_strict -purpose sslclient -CAfile "$PKI/rogue-ca.pem" "$PKI/rogue-client.pem" >/dev/null
if openssl verify -CAfile "$PKI/ca.pem" "$PKI/rogue-client.pem" >/dev/null 2>&1; then
  echo "make-test-pki: rogue client unexpectedly chains to the test CA" >&2
  exit 1
fi
# The expired client chains to the test CA and fails for its dates only.
openssl verify -x509_strict -purpose sslclient -no_check_time -CAfile "$PKI/ca.pem" \
  "$PKI/expired-client.pem" >/dev/null
expired_check="$(openssl verify -CAfile "$PKI/ca.pem" "$PKI/expired-client.pem" 2>&1 || true)"
case "$expired_check" in
  *'certificate has expired'*) ;;
  *) echo "make-test-pki: expired-client.pem is not seen as expired" >&2; exit 1 ;;
esac
echo "make-test-pki: wrote $PKI" >&2

#!/usr/bin/env bash
# Runs packaging/tests/module_host (a C host exporting its own grpc_init, SSL_CTX_new, ...)
# against the agent of tests/e2e/with_agent.sh, with COPIES copies of the module under
# different paths in one process, and with OPENSSL_CONF naming a config that loads an
# OpenSSL engine (the static module must not load it).
#
#   with_agent.sh BUILD WORK -- packaging/tests/module_host_test.sh HOST COPIES
set -euo pipefail
[ "$#" -eq 2 ] || { echo "usage: $0 HOST COPIES" >&2; exit 2; }
HOST="$1"
COPIES="$2"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
: "${HSMUX_MODULE:?run under tests/e2e/with_agent.sh}" "${HSMUX_TEST_DIR:?}"
mods=()
for i in $(seq 1 "$COPIES"); do
  mkdir -p "$HSMUX_TEST_DIR/copy$i"
  cp "$HSMUX_MODULE" "$HSMUX_TEST_DIR/copy$i/libhsmux-pkcs11.so"
  mods+=("$HSMUX_TEST_DIR/copy$i/libhsmux-pkcs11.so")
done
# The packaged OpenSSL example, pointing MODULE_PATH at this module: with config loading on,
# OpenSSL would map Debian's engines-3/pkcs11.so and with it the system libcrypto.
sed "s|^MODULE_PATH = .*|MODULE_PATH = ${mods[0]}|" "$REPO/packaging/examples/openssl-hsmux.cnf" \
  >"$HSMUX_TEST_DIR/openssl.cnf"
if [ ! -r /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so ]; then
  echo "module_host_test: note: libengine-pkcs11-openssl missing; the OpenSSL config check is weaker" >&2
fi
OPENSSL_CONF="$HSMUX_TEST_DIR/openssl.cnf" "$HOST" "${mods[@]}"

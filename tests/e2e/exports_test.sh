#!/usr/bin/env bash
# The module exports exactly the C_* functions of the function table and
# nothing else (no gRPC, protobuf, OpenSSL or C++ symbols leak into hosts).
#
#   tests/e2e/exports_test.sh BUILD_DIR
set -euo pipefail
[ "$#" -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MODULE="$1/module/libhsmux-pkcs11.so"
TABLE="$REPO/proto/wire/function_table.h"
[ -r "$MODULE" ] || { echo "exports_test: $MODULE not built" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Rows look like "  X(12, SetPIN, (...".
grep -oE '^[[:space:]]*X\([0-9]+, [A-Za-z0-9_]+,' "$TABLE" |
  sed -E 's/^[[:space:]]*X\([0-9]+, ([A-Za-z0-9_]+),/C_\1/' | sort >"$TMP/expected"
n="$(wc -l <"$TMP/expected")"
[ "$n" -eq 68 ] || { echo "exports_test: expected 68 rows in $TABLE, found $n" >&2; exit 1; }
[ -z "$(uniq -d "$TMP/expected")" ] || { echo "exports_test: duplicate table rows" >&2; exit 1; }

# Every defined dynamic symbol, whatever its kind (functions, data, version nodes).
nm -D --defined-only "$MODULE" | awk '{print $NF}' | sed 's/@.*//' | sort >"$TMP/actual"

if ! diff -u "$TMP/expected" "$TMP/actual" >"$TMP/diff"; then
  echo "exports_test: exported symbols differ from the function table (-expected +actual):" >&2
  cat "$TMP/diff" >&2
  exit 1
fi
echo "exports_test: OK, exactly the $n C_* functions of the table"

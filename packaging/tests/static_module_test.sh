#!/usr/bin/env bash
# The self-contained module (HSMUX_STATIC_MODULE=ON) needs nothing but the C and C++ runtime:
# its DT_NEEDED entries and everything ldd resolves are libc, libm, libstdc++, libgcc_s and the
# dynamic loader; no gRPC, protobuf, abseil, OpenSSL, yaml-cpp or zlib symbol is imported.
#
#   packaging/tests/static_module_test.sh MODULE
set -euo pipefail
[ "$#" -eq 1 ] || { echo "usage: $0 MODULE" >&2; exit 2; }
MODULE="$1"
[ -r "$MODULE" ] || { echo "static_module_test: $MODULE not found" >&2; exit 1; }
ALLOWED='^(linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libstdc\+\+\.so\.6|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2|/lib64/ld-linux-x86-64\.so\.2)$'
fail=0

needed="$(readelf -dW "$MODULE" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
while read -r lib; do
  [ -n "$lib" ] || continue
  if ! grep -Eq "$ALLOWED" <<<"$lib"; then echo "static_module_test: DT_NEEDED $lib" >&2; fail=1; fi
done <<<"$needed"

resolved="$(ldd "$MODULE" | awk '{print $1}')"
while read -r lib; do
  [ -n "$lib" ] || continue
  if ! grep -Eq "$ALLOWED" <<<"$lib"; then echo "static_module_test: ldd shows $lib" >&2; fail=1; fi
done <<<"$resolved"
if ldd "$MODULE" | grep -q 'not found'; then echo "static_module_test: unresolved library" >&2; fail=1; fi

# Strong undefined dynamic symbols may only come from those libraries (glibc/libstdc++
# versions). Weak ones are left out: the usual _ITM_*/__gmon_start__, and the thread_local
# wrappers (_ZTH*) the compiler references weakly for gRPC/abseil TLS variables that need none.
bad_undef="$(nm -D --undefined-only "$MODULE" | awk '$1 == "U" {print $2}' |
  grep -Ev '@(GLIBC|GLIBCXX|CXXABI|GCC)_[0-9.]+$' || true)"
if [ -n "$bad_undef" ]; then
  echo "static_module_test: undefined symbols from outside the C/C++ runtime:" >&2
  echo "$bad_undef" | head -n 20 >&2
  fail=1
fi
# Every load-time binding flag the notes ask for.
flags="$(readelf -dW "$MODULE")"
for f in 'BIND_NOW|NOW' 'NODELETE' 'SYMBOLIC'; do
  grep -Eq "$f" <<<"$flags" || { echo "static_module_test: dynamic section lacks $f" >&2; fail=1; }
done
[ "$fail" -eq 0 ] || exit 1
echo "static_module_test: OK: needs only $(echo $needed | tr ' ' ',')"

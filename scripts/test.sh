#!/usr/bin/env bash
# hsmux tests: install dependencies, build with tests, run CTest, then run the quick-start
# demo end to end against the tree just built. Exits non-zero if anything fails.
#
#   bash scripts/test.sh
#
# Then the suite again under ASan + UBSan (build-asan/) and the fuzzers (scripts/fuzz.sh).
#
# Environment: HSMUX_BUILD_DIR (default build), HSMUX_BUILD_TYPE (default RelWithDebInfo),
# HSMUX_SKIP_SANITIZERS=1 to leave out the sanitizer and fuzzing steps (on by default).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BUILD="${HSMUX_BUILD_DIR:-build}"
case "$BUILD" in /*) ;; *) BUILD="$REPO/$BUILD" ;; esac
export HSMUX_BUILD_DIR="$BUILD"
BUILD_TYPE="${HSMUX_BUILD_TYPE:-RelWithDebInfo}"

echo "== test: install dependencies"
bash "$REPO/scripts/install-deps.sh"

# The shipped module is the self-contained static build (packaging/static-module.cmake); its
# PIC abseil/re2/protobuf are built once from the Debian sources and cached in the build dir.
echo "== test: static dependencies of the module"
STATIC_MODULE=OFF
t0=$(date +%s)
if bash "$REPO/scripts/build-static-deps.sh" "$BUILD/static-deps"; then
  STATIC_MODULE=ON
else
  echo "test: WARNING: build-static-deps failed; building the shared-gRPC module instead" >&2
fi
echo "== test: static dependencies took $(( $(date +%s) - t0 )) s (HSMUX_STATIC_MODULE=$STATIC_MODULE)"

echo "== test: configure ($BUILD, $BUILD_TYPE)"
cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DHSMUX_BUILD_TESTS=ON \
  -DCMAKE_INSTALL_PREFIX=/usr -DHSMUX_STATIC_MODULE="$STATIC_MODULE" \
  -DHSMUX_STATIC_DEPS="$BUILD/static-deps"

echo "== test: build"
cmake --build "$BUILD" -j2

failed=()

echo "== test: ctest"
if ! ctest --test-dir "$BUILD" --output-on-failure --timeout 600 --no-tests=error; then
  failed+=("ctest")
fi

# Proves the README's quick start in CI, against the tree built above.
echo "== test: quick start end to end"
if ! bash "$REPO/scripts/quickstart.sh" --no-build --work-dir "$REPO/out/ci-quickstart"; then
  failed+=("quickstart")
fi

# ASan + UBSan (issue 7 item 4): the same suite again, built with
# -DHSMUX_SANITIZE=ON in its own directory. Every process writes its
# sanitizer reports to $ASAN_LOGS (log_path), so a report from hsmuxd or a
# helper process fails the step even when its test would not notice; UBSan
# reports are made fatal (halt_on_error) for the same reason.
#
# Left out: tests whose host process is not built by us, as an ASan module
# cannot be loaded into an uninstrumented program (the ASan runtime must
# come first) and preloading libasan into Java, pkcs11-tool or GnuTLS would
# test those hosts more than hsmux:
#   clients_java                    Java SunPKCS11 (JVM)
#   clients_openssl                 openssl + libengine-pkcs11-openssl
#   clients_pkcs11_tool             OpenSC pkcs11-tool
#   clients_p11tool                 GnuTLS p11tool
#   clients_password_safe           its C program is built by the script with cc, unsanitized,
#                                   and it also drives pkcs11-tool
#   e2e_surface_pkcs11_tool_compare pkcs11-tool --test through the module
#   e2e_pin_lockout                 drives the module through pkcs11-tool
#   e2e_allowlist, e2e_tls,         start pkcs11-tool on the module (allow-list, TLS reload,
#   e2e_limits                      other processes served during a session flood)
# Everything else (unit tests, wire codecs with SoftHSM known answers, the
# GoogleTest e2e programs, HA and group tests, bench_smoke) runs: those
# programs, hsmuxd, hsmuxctl, the module and testwrap are all ours.
ASAN_EXCLUDE='^(clients_.*|e2e_surface_pkcs11_tool_compare|e2e_pin_lockout|e2e_allowlist|e2e_tls|e2e_limits)$'
# On by default (issue 7 item 4); HSMUX_SKIP_SANITIZERS=1 leaves them out
# for a quick local run.
if [ "${HSMUX_SKIP_SANITIZERS:-0}" != 1 ]; then
  ASAN_BUILD="$REPO/build-asan"
  ASAN_LOGS="$REPO/out/asan-logs"
  echo "== test: ASan + UBSan build ($ASAN_BUILD)"
  rm -rf "$ASAN_LOGS"
  mkdir -p "$ASAN_LOGS"
  if cmake -S "$REPO" -B "$ASAN_BUILD" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DHSMUX_BUILD_TESTS=ON \
       -DHSMUX_SANITIZE=ON >/dev/null &&
     cmake --build "$ASAN_BUILD" -j2 >"$REPO/out/asan-build.log" 2>&1; then
    echo "== test: ctest under ASan + UBSan (excluding $ASAN_EXCLUDE)"
    # fast_unwind_on_malloc=0: Debian's libraries have no frame pointers, so
    # the fast unwinder stops inside them and lsan.supp could not match.
    if ! ASAN_OPTIONS="log_path=$ASAN_LOGS/asan:log_exe_name=1:fast_unwind_on_malloc=0:${HSMUX_ASAN_EXTRA_OPTIONS:-}" \
         UBSAN_OPTIONS="log_path=$ASAN_LOGS/ubsan:print_stacktrace=1:halt_on_error=1" \
         LSAN_OPTIONS="suppressions=$REPO/scripts/lsan.supp:print_suppressions=0" \
         ctest --test-dir "$ASAN_BUILD" --output-on-failure --timeout 900 --no-tests=error \
           -E "$ASAN_EXCLUDE"; then
      failed+=("ctest-asan")
    fi
    if compgen -G "$ASAN_LOGS/*" >/dev/null; then
      echo "test: sanitizer reports in $ASAN_LOGS:" >&2
      for f in "$ASAN_LOGS"/*; do echo "---- $f" >&2; head -n 60 "$f" >&2; done
      failed+=("sanitizer-reports")
    fi
  else
    tail -n 40 "$REPO/out/asan-build.log" >&2
    failed+=("asan-build")
  fi

  # libFuzzer targets: a minimum number of executions each on the checked-in
  # corpora, and coverage (scripts/fuzz.sh).
  echo "== test: fuzzing"
  if ! bash "$REPO/scripts/fuzz.sh"; then
    failed+=("fuzz")
  fi
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "test: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test: OK"

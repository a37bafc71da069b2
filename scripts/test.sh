#!/usr/bin/env bash
# hsmux tests: install dependencies, build with tests, run CTest, then run the quick-start
# demo end to end against the tree just built. Exits non-zero if anything fails.
#
#   bash scripts/test.sh
#
# Environment: HSMUX_BUILD_DIR (default build), HSMUX_BUILD_TYPE (default RelWithDebInfo).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BUILD="${HSMUX_BUILD_DIR:-build}"
case "$BUILD" in /*) ;; *) BUILD="$REPO/$BUILD" ;; esac
export HSMUX_BUILD_DIR="$BUILD"
BUILD_TYPE="${HSMUX_BUILD_TYPE:-RelWithDebInfo}"

echo "== test: install dependencies"
bash "$REPO/scripts/install-deps.sh"

echo "== test: configure ($BUILD, $BUILD_TYPE)"
cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DHSMUX_BUILD_TESTS=ON

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

if [ "${#failed[@]}" -gt 0 ]; then
  echo "test: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test: OK"

#!/usr/bin/env bash
# Builds and runs hsmux's libFuzzer targets (fuzz/), then reports coverage.
#
#   bash scripts/fuzz.sh
#
# 1. Configures build-fuzz/ with clang, -DHSMUX_FUZZ=ON and our own code
#    instrumented (-fsanitize=fuzzer-no-link,address,undefined); builds the
#    five targets.
# 2. Runs each target on a copy of its checked-in seed corpus
#    (fuzz/corpus/<target>/, never modified) for FUZZ_RUNS executions, with
#    FUZZ_MAX_TIME seconds as a cap. Fails on any crash, leak, timeout or
#    sanitizer report, and if a target ran fewer than FUZZ_MIN_RUNS
#    executions.
# 3. Builds a second copy (build-fuzz-cov/, -fprofile-instr-generate
#    -fcoverage-mapping, no ASan), replays every corpus (seeds plus what the
#    run found), and prints llvm-cov's summary over proto/wire, the agent's
#    request path and both config loaders.
#
# Environment: FUZZ_RUNS (default 20000), FUZZ_MIN_RUNS (default FUZZ_RUNS),
# FUZZ_MAX_TIME (seconds per target, default 300), FUZZ_TARGETS (default all
# five), FUZZ_JOBS (build parallelism, default 2), FUZZ_NO_COVERAGE=1 to
# skip step 3, FUZZ_KEEP=1 to keep the work directory (crash inputs, logs).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BUILD="$REPO/build-fuzz"
COV_BUILD="$REPO/build-fuzz-cov"
RUNS="${FUZZ_RUNS:-20000}"
MIN_RUNS="${FUZZ_MIN_RUNS:-$RUNS}"
MAX_TIME="${FUZZ_MAX_TIME:-300}"
JOBS="${FUZZ_JOBS:-2}"
TARGETS=(${FUZZ_TARGETS:-fuzz_attribute_codec fuzz_mechanism_codec fuzz_agent_request fuzz_agent_config fuzz_module_config})

for tool in clang clang++ llvm-profdata llvm-cov softhsm2-util; do
  command -v "$tool" >/dev/null || { echo "fuzz: $tool not found (run scripts/install-deps.sh)" >&2; exit 1; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/hsmux-fuzz.XXXXXX")"
cleanup() {
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then echo "fuzz: work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# The agent target's SoftHSM token and the config targets' input files go here.
export TMPDIR="$WORK/tmp"
mkdir -p "$TMPDIR"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
echo "== fuzz: configure $BUILD (clang, ASan + UBSan, fuzzer instrumentation)"
CC=clang CXX=clang++ cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DHSMUX_FUZZ=ON -DHSMUX_BUILD_TESTS=OFF \
  -DCMAKE_C_FLAGS="$SAN -fsanitize=fuzzer-no-link" \
  -DCMAKE_CXX_FLAGS="$SAN -fsanitize=fuzzer-no-link" \
  -DCMAKE_EXE_LINKER_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="$SAN" >/dev/null
echo "== fuzz: build ${TARGETS[*]}"
cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]}" >"$WORK/build.log" 2>&1 \
  || { tail -n 60 "$WORK/build.log" >&2; echo "fuzz: build failed" >&2; exit 1; }

# Debian's libraries are not instrumented. Leak checking stays on: a leak
# in our code is a finding like any other.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
declare -A EXECS
for t in "${TARGETS[@]}"; do
  corpus="$WORK/corpus/$t"
  mkdir -p "$corpus" "$WORK/artifacts/$t"
  cp "$REPO/fuzz/corpus/$t/"* "$corpus/"
  max_len=4096
  [ "$t" = fuzz_agent_request ] && max_len=8192
  echo "== fuzz: $t ($(ls "$corpus" | wc -l) seeds, -runs=$RUNS, cap ${MAX_TIME}s)"
  start=$SECONDS
  set +e
  "$BUILD/fuzz/$t" -runs="$RUNS" -max_total_time="$MAX_TIME" -max_len="$max_len" \
    -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$WORK/artifacts/$t/" "$corpus" >"$WORK/$t.log" 2>&1
  rc=$?
  set -e
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$t.log" | grep -o '[0-9]*$' | tail -n1)"
  execs="${execs:-0}"
  EXECS[$t]=$execs
  cov="$(grep -o 'cov: [0-9]* ft: [0-9]*' "$WORK/$t.log" | tail -n1)"
  echo "   $t: exit $rc, $execs executions in $((SECONDS - start))s, $cov, corpus $(ls "$corpus" | wc -l) files"
  if [ "$rc" -ne 0 ] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$WORK/$t.log"; then
    echo "---- $t: last lines of its log ----" >&2
    grep -nE 'ERROR:|runtime error:|SUMMARY:|Test unit written' "$WORK/$t.log" | head -n 20 >&2 || true
    tail -n 40 "$WORK/$t.log" >&2
    failed+=("$t")
    FUZZ_KEEP=1
  elif [ "$execs" -lt "$MIN_RUNS" ]; then
    echo "fuzz: $t ran $execs executions, fewer than the minimum $MIN_RUNS (cap ${MAX_TIME}s reached)" >&2
    failed+=("$t")
  fi
done

if [ "${FUZZ_NO_COVERAGE:-0}" != 1 ]; then
  COV="-fprofile-instr-generate -fcoverage-mapping"
  echo "== fuzz: coverage build $COV_BUILD"
  CC=clang CXX=clang++ cmake -S "$REPO" -B "$COV_BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DHSMUX_FUZZ=ON -DHSMUX_FUZZ_COVERAGE=ON -DHSMUX_BUILD_TESTS=OFF \
    -DCMAKE_C_FLAGS="$COV" -DCMAKE_CXX_FLAGS="$COV" \
    -DCMAKE_EXE_LINKER_FLAGS="$COV" -DCMAKE_SHARED_LINKER_FLAGS="$COV" >/dev/null
  cmake --build "$COV_BUILD" -j"$JOBS" --target "${TARGETS[@]}" >"$WORK/build-cov.log" 2>&1 \
    || { tail -n 60 "$WORK/build-cov.log" >&2; echo "fuzz: coverage build failed" >&2; exit 1; }
  objects=()
  for t in "${TARGETS[@]}"; do
    # Replays each corpus once (-runs=0 runs every input and stops).
    LLVM_PROFILE_FILE="$WORK/prof/$t-%p.profraw" \
      "$COV_BUILD/fuzz/$t" -runs=0 "$WORK/corpus/$t" >"$WORK/$t.cov.log" 2>&1 \
      || { echo "fuzz: $t replay failed" >&2; tail -n 20 "$WORK/$t.cov.log" >&2; failed+=("$t-replay"); }
    if [ "${#objects[@]}" -eq 0 ]; then objects+=("$COV_BUILD/fuzz/$t"); else objects+=(-object "$COV_BUILD/fuzz/$t"); fi
  done
  llvm-profdata merge -sparse "$WORK"/prof/*.profraw -o "$WORK/fuzz.profdata"
  echo "== fuzz: coverage of the fuzzed code (corpus replay: seeds + this run's finds)"
  llvm-cov report "${objects[@]}" -instr-profile="$WORK/fuzz.profdata" \
    "$REPO"/proto/wire/attribute_codec.cc "$REPO"/proto/wire/attribute_kinds.cc \
    "$REPO"/proto/wire/mechanism_codec.cc "$REPO"/proto/wire/errors.cc \
    "$REPO"/agent/call_context.cc "$REPO"/agent/dispatch.cc "$REPO"/agent/handlers_token.cc \
    "$REPO"/agent/handlers_objects.cc "$REPO"/agent/handlers_crypto.cc \
    "$REPO"/agent/config.cc "$REPO"/module/module_config.cc \
    | sed "s|$REPO/||"
fi

echo "== fuzz: executions: $(for t in "${TARGETS[@]}"; do printf '%s=%s ' "$t" "${EXECS[$t]}"; done)"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (crash inputs and logs in $WORK)" >&2
  exit 1
fi
echo "fuzz: OK"

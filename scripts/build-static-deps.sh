#!/usr/bin/env bash
# Builds PIC static abseil, re2, protobuf and yaml-cpp from the Debian source packages of the
# exact versions installed, for the self-contained module (HSMUX_STATIC_MODULE, see
# ../shared/notes/module-build.md §1). Debian's own libprotobuf.a, libre2.a and some
# libabsl_*.a use local-exec TLS and cannot go into a shared object; Debian's abseil uses
# the inline namespace absl::debian3, so an upstream abseil would not match its gRPC.
#
#   scripts/build-static-deps.sh [PREFIX]      (default: build/static-deps)
#
# Installs PREFIX/lib/*.a. Cached per package: one is rebuilt only if PREFIX/.stamp-NAME does
# not name the installed version. The sources are fetched with `apt-get source` through a private
# sources.list under PREFIX.src/ (deb-src lines made from the mirrors in /etc/apt); the
# system's apt configuration is never touched. Needs dpkg-dev, perl, python3, unicode-data
# (scripts/install-deps.sh). Uses -j${HSMUX_JOBS:-2}.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${1:-$REPO/build/static-deps}"
mkdir -p "$(dirname "$PREFIX")"
PREFIX="$(cd "$(dirname "$PREFIX")" && pwd)/$(basename "$PREFIX")"
SRC="$PREFIX.src"
JOBS="${HSMUX_JOBS:-2}"

say() { echo "build-static-deps: $*" >&2; }
fail() { say "$*"; exit 1; }

# The source version of each installed -dev package (binNMU suffixes such as +b1 removed).
srcver() { dpkg-query -W -f='${source:Version}' "$1" 2>/dev/null || fail "$1 is not installed"; }
# name, the -dev package whose version is matched
COMPONENTS=(abseil:libabsl-dev re2:libre2-dev protobuf:libprotobuf-dev yaml-cpp:libyaml-cpp-dev)
todo=()
fetch=()
for c in "${COMPONENTS[@]}"; do
  name="${c%%:*}"
  ver="$(srcver "${c#*:}")"
  if [ -f "$PREFIX/.stamp-$name" ] && [ "$(cat "$PREFIX/.stamp-$name")" = "$ver" ]; then continue; fi
  todo+=("$name")
  fetch+=("$name=$ver")
done
if [ "${#todo[@]}" -eq 0 ]; then
  say "cached: $PREFIX ($(cd "$PREFIX" && for f in .stamp-*; do printf '%s=%s ' "${f#.stamp-}" "$(cat "$f")"; done))"
  exit 0
fi
for tool in dpkg-source cmake perl python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (run scripts/install-deps.sh)"
done
[ -r /usr/share/unicode/CaseFolding.txt ] || fail "unicode-data not installed (run scripts/install-deps.sh)"

start=$(date +%s)
rm -rf "$SRC"
mkdir -p "$PREFIX/lib"
mkdir -p "$SRC/apt/lists/partial" "$SRC/apt/cache/archives/partial" "$SRC/apt/sources.list.d"

# deb-src lines for every "deb" mirror/suite with component main that apt already uses
# (one-line sources.list and deb822 .sources files alike).
python3 - "$SRC/apt/sources.list" <<'PY'
import glob, os, sys
out = []
def add(uri, suites):
    for s in suites:
        if s.startswith("bookworm"):
            line = f"deb-src {uri} {s} main"
            if line not in out:
                out.append(line)
files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
for f in files:
    if not os.path.isfile(f):
        continue
    for line in open(f):
        w = line.split("#", 1)[0].split()
        if len(w) >= 4 and w[0] == "deb":
            if w[1].startswith("["):
                while not w[1].endswith("]"):
                    w.pop(1)
                w.pop(1)
            if "main" in w[3:]:
                add(w[1], [w[2]])
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(f).read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.split()
        if "deb" in fields.get("types", []) and "main" in fields.get("components", []):
            for uri in fields.get("uris", []):
                add(uri, fields.get("suites", []))
if not out:
    sys.exit("no Debian bookworm mirror found in /etc/apt")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
say "private sources.list: $(tr '\n' ';' <"$SRC/apt/sources.list")"

APT_OPTS=(
  -o "Dir::Etc::SourceList=$SRC/apt/sources.list"
  -o "Dir::Etc::SourceParts=$SRC/apt/sources.list.d"
  -o "Dir::State::Lists=$SRC/apt/lists"
  -o "Dir::Cache=$SRC/apt/cache"
  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
  -o "APT::Sandbox::User=$(id -un)"
  -o "Debug::NoLocking=1"
)
apt-get "${APT_OPTS[@]}" -qq update >&2 || fail "apt-get update (private sources.list) failed"
(
  cd "$SRC"
  apt-get "${APT_OPTS[@]}" -qq source "${fetch[@]}" >&2
) || fail "apt-get source failed"
fetched=$(date +%s)
say "fetched sources in $((fetched - start)) s"

srcdir() {  # srcdir NAME -> the unpacked source tree
  local d
  d="$(find "$SRC" -maxdepth 1 -mindepth 1 -type d -name "$1-*" | head -n1)"
  [ -n "$d" ] || fail "no unpacked source for $1 in $SRC"
  echo "$d"
}

COMMON=(
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DBUILD_SHARED_LIBS=OFF
  -DCMAKE_CXX_STANDARD=17 -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_INSTALL_LIBDIR=lib
  -DCMAKE_C_FLAGS="-fPIC -O2" -DCMAKE_CXX_FLAGS="-fPIC -O2"
)
G=()
if command -v ninja >/dev/null; then G=(-G Ninja); fi

# build NAME SRCDIR TARGET [CMAKE ARGS...] -- configure, build, install. With TARGET "all" the
# project's install rules run; otherwise only that target is built and its lib<name>.a copied (the module
# compiles against the system's headers of the same version).
build() {
  local name="$1" dir="$2" target="$3"
  shift 3
  local t0
  t0=$(date +%s)
  cmake "${G[@]}" -S "$dir" -B "$SRC/build-$name" "${COMMON[@]}" "$@" >"$SRC/$name.log" 2>&1 ||
    { tail -n 30 "$SRC/$name.log" >&2; fail "$name: configure failed"; }
  if [ "$target" = all ]; then
    cmake --build "$SRC/build-$name" -j"$JOBS" >>"$SRC/$name.log" 2>&1 ||
      { tail -n 30 "$SRC/$name.log" >&2; fail "$name: build failed"; }
    cmake --install "$SRC/build-$name" >>"$SRC/$name.log" 2>&1 ||
      { tail -n 30 "$SRC/$name.log" >&2; fail "$name: install failed"; }
  else
    cmake --build "$SRC/build-$name" -j"$JOBS" --target "$target" >>"$SRC/$name.log" 2>&1 ||
      { tail -n 30 "$SRC/$name.log" >&2; fail "$name: build failed"; }
    mkdir -p "$PREFIX/lib"
    local lib="lib${target#lib}.a"
    install -m 0644 "$SRC/build-$name/$lib" "$PREFIX/lib/$lib"
  fi
  say "$name: built in $(( $(date +%s) - t0 )) s"
}

wanted() { [[ " ${todo[*]} " == *" $1 "* ]]; }
stamp() { srcver "$2" >"$PREFIX/.stamp-$1"; }

if wanted abseil; then
  ABSL_DIR="$(srcdir abseil)"
  grep -q 'ABSL_OPTION_INLINE_NAMESPACE_NAME debian3' "$ABSL_DIR/absl/base/options.h" ||
    fail "abseil source lacks Debian's debian3 inline namespace (patches not applied?)"
  rm -f "$PREFIX"/lib/libabsl_*.a
  build abseil "$ABSL_DIR" all -DABSL_PROPAGATE_CXX_STD=ON -DBUILD_TESTING=OFF -DABSL_BUILD_TESTING=OFF
  stamp abseil libabsl-dev
fi

if wanted re2; then
  RE2_DIR="$(srcdir re2)"
  # The dfsg tarball drops the generated Unicode tables; regenerate them as debian/rules does.
  (
    cd "$RE2_DIR"
    [ -s re2/perl_groups.cc ] || perl re2/make_perl_groups.pl >re2/perl_groups.cc
    [ -s re2/unicode_casefold.cc ] || python3 re2/make_unicode_casefold.py >re2/unicode_casefold.cc
    [ -s re2/unicode_groups.cc ] || python3 re2/make_unicode_groups.py >re2/unicode_groups.cc
  ) >"$SRC/re2-tables.log" 2>&1 || { cat "$SRC/re2-tables.log" >&2; fail "re2: could not regenerate tables"; }
  build re2 "$RE2_DIR" all -DRE2_BUILD_TESTING=OFF
  stamp re2 libre2-dev
fi

if wanted protobuf; then
  PB_DIR="$(srcdir protobuf)"
  PB_CMAKE="$PB_DIR"
  [ -f "$PB_DIR/CMakeLists.txt" ] || PB_CMAKE="$PB_DIR/cmake"
  build protobuf "$PB_CMAKE" libprotobuf -Dprotobuf_BUILD_TESTS=OFF \
    -Dprotobuf_BUILD_PROTOC_BINARIES=OFF -Dprotobuf_BUILD_LIBPROTOC=OFF -Dprotobuf_WITH_ZLIB=ON \
    -Dprotobuf_BUILD_SHARED_LIBS=OFF
  stamp protobuf libprotobuf-dev
fi

if wanted yaml-cpp; then
  build yaml-cpp "$(srcdir yaml-cpp)" yaml-cpp -DYAML_CPP_BUILD_TESTS=OFF -DYAML_CPP_BUILD_TOOLS=OFF \
    -DYAML_CPP_BUILD_CONTRIB=ON -DYAML_BUILD_SHARED_LIBS=OFF
  stamp yaml-cpp libyaml-cpp-dev
fi

for a in libprotobuf.a libre2.a libabsl_base.a libyaml-cpp.a; do
  [ -f "$PREFIX/lib/$a" ] || fail "$PREFIX/lib/$a missing after build"
done
# None of them may keep local-exec TLS relocations (the reason for this rebuild).
if readelf -rW "$PREFIX"/lib/*.a 2>/dev/null | grep -q 'R_X86_64_TPOFF32'; then
  fail "an archive in $PREFIX/lib still has R_X86_64_TPOFF32 relocations (not PIC)"
fi
# The sources and object trees are not needed any more.
rm -rf "$SRC"
say "done in $(( $(date +%s) - start )) s: ${todo[*]} in $PREFIX"

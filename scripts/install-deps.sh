#!/usr/bin/env bash
# Installs every Debian package hsmux needs to build, run and test.
# Used by the README quick start and by .ci/run; safe to run again.
set -euo pipefail
PKGS=(
  build-essential cmake pkg-config ninja-build
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libssl-dev openssl libgtest-dev libgmock-dev
  libyaml-cpp-dev libsqlite3-dev libp11-kit-dev p11-kit prometheus-cpp-dev
  softhsm2 opensc gnutls-bin python3
  openjdk-17-jdk-headless libengine-pkcs11-openssl libp11-kit0
  dpkg-dev unicode-data
  # Fuzzing and coverage (scripts/fuzz.sh): clang, the libFuzzer and sanitizer
  # runtimes, llvm-profdata / llvm-cov.
  clang libclang-rt-14-dev llvm
)
# dpkg-dev: apt-get source and dpkg-source (scripts/build-static-deps.sh), dpkg-shlibdeps
# (cpack); unicode-data: re2's Unicode tables. systemd only for systemd-analyze (the unit test).
if ! command -v systemd-analyze >/dev/null 2>&1; then PKGS+=(systemd); fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all packages present"
fi

#!/usr/bin/env bash
# Builds the Debian package (cpack -G DEB), unpacks it into a scratch root (dpkg -x), starts
# the agent FROM THE INSTALLED FILES with the installed example config (its paths and port
# pointed at a scratch state dir, test PKI and SoftHSM tokens), checks its systemd readiness
# notification, and drives it with pkcs11-tool through the installed module: list slots, log
# in (with the example's demo PIN 1234), generate random bytes.
#
#   packaging/tests/package_test.sh BUILD_DIR WORK_DIR [static]
# With "static", the installed module must also be the self-contained one.
set -euo pipefail
[ "$#" -ge 2 ] || { echo "usage: $0 BUILD_DIR WORK_DIR [static]" >&2; exit 2; }
BUILD="$(cd "$1" && pwd)"
WORK="$2"
STATIC="${3:-}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
say() { echo "package_test: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

prefix="$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$BUILD/CMakeCache.txt")"
if [ "$prefix" != /usr ]; then
  say "SKIP: the build's CMAKE_INSTALL_PREFIX is $prefix; the package wants /usr"
  exit 77
fi
for tool in cpack dpkg-deb pkcs11-tool softhsm2-util python3; do
  command -v "$tool" >/dev/null || fail "$tool missing (scripts/install-deps.sh)"
done
rm -rf "$WORK"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

# 1. The package.
t0=$(date +%s)
(cd "$BUILD" && cpack -G DEB -B "$WORK/cpack" >"$WORK/cpack.log" 2>&1) ||
  { tail -n 40 "$WORK/cpack.log" >&2; fail "cpack -G DEB failed"; }
DEB="$(ls "$WORK"/cpack/hsmux_*.deb 2>/dev/null | head -n1)"
[ -n "$DEB" ] || fail "no hsmux_*.deb in $WORK/cpack"
say "built $(basename "$DEB") ($(du -h "$DEB" | cut -f1)) in $(( $(date +%s) - t0 )) s"
dpkg-deb -I "$DEB" >"$WORK/control.txt"
grep -q '^ Package: hsmux$' "$WORK/control.txt" || fail "package name is not hsmux"
depends="$(sed -n 's/^ Depends: //p' "$WORK/control.txt")"
[[ "$depends" == *libc6* ]] || fail "Depends was not computed (shlibdeps): '$depends'"
say "Depends: $depends"
dpkg-deb --ctrl-tarfile "$DEB" | tar -tf - >"$WORK/control.list"
for f in conffiles postinst; do grep -qx "./$f" "$WORK/control.list" || fail "control.tar lacks $f"; done
conffiles="$(dpkg-deb --info "$DEB" conffiles)"
for f in /etc/hsmux/hsmuxd.yaml.example /etc/hsmux/module.conf.example; do
  grep -qx "$f" <<<"$conffiles" || fail "$f is not a conffile"
done
dpkg-deb --info "$DEB" postinst | grep -q 'systemd-sysusers hsmux.conf' || fail "postinst does not make the user"
for f in postinst prerm postrm; do
  dpkg-deb --info "$DEB" "$f" | sh -n || fail "$f: shell syntax"
done

# 2. Unpacked into a scratch root.
ROOT="$WORK/root"
dpkg-deb -x "$DEB" "$ROOT"
MULTIARCH="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
MODULE="$ROOT/usr/lib/$MULTIARCH/pkcs11/libhsmux-pkcs11.so"
for f in "$MODULE" "$ROOT/usr/sbin/hsmuxd" "$ROOT/usr/bin/hsmuxctl" \
         "$ROOT/usr/lib/systemd/system/hsmuxd.service" "$ROOT/usr/lib/sysusers.d/hsmux.conf" \
         "$ROOT/etc/hsmux/hsmuxd.yaml.example" "$ROOT/etc/hsmux/module.conf.example" \
         "$ROOT/usr/share/doc/hsmux/examples/hsmux.module"; do
  [ -e "$f" ] || fail "not in the package: ${f#"$ROOT"}"
done
[ ! -e "$ROOT/usr/share/p11-kit/modules/hsmux.module" ] || fail "the p11-kit module file is installed active"
if [ "$STATIC" = static ]; then
  bash "$REPO/packaging/tests/static_module_test.sh" "$MODULE" || fail "the packaged module is not self-contained"
fi

# 3. The installed example configs, adapted to this scratch setup.
bash "$REPO/scripts/make-test-pki.sh" "$WORK" >/dev/null
eval "$(bash "$REPO/scripts/make-softhsm-tokens.sh" "$WORK" | grep '^export ')"
cp "$WORK/secrets/member-pin" "$WORK/secrets/pin-a"
cp "$WORK/secrets/member-pin" "$WORK/secrets/pin-b"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
sed -e "s|/etc/hsmux/tls/|$WORK/pki/|" -e "s|/etc/hsmux/secrets/|$WORK/secrets/|" \
    -e "s|^state_dir: /var/lib/hsmux|state_dir: $WORK/state|" \
    -e "s|^listen: 127.0.0.1:7443|listen: 127.0.0.1:$PORT|" \
    "$ROOT/etc/hsmux/hsmuxd.yaml.example" >"$WORK/hsmuxd.yaml"
sed -e "s|\"hsmux-agent.example:7443\"|\"localhost:$PORT\"|" \
    -e "s|/etc/hsmux/ca.pem|$WORK/pki/ca.pem|" -e "s|/etc/hsmux/client.pem|$WORK/pki/client.pem|" \
    -e "s|/etc/hsmux/client.key|$WORK/pki/client.key|" \
    -e "s|/var/log/hsmux/module.log|$WORK/module.log|" \
    "$ROOT/etc/hsmux/module.conf.example" >"$WORK/module.conf"
chmod 600 "$WORK/hsmuxd.yaml" "$WORK/module.conf"
# Every path the example names (outside comments) was replaced.
if grep -nE '^[^#]*(/etc/hsmux|/var/lib/hsmux|/var/log/hsmux|example:7443)' "$WORK/hsmuxd.yaml" "$WORK/module.conf"; then
  fail "an example path was not adapted (above)"
fi
"$ROOT/usr/bin/hsmuxctl" check-config --config "$WORK/hsmuxd.yaml" >&2 || fail "installed hsmuxctl rejects the example"

# 4. The installed agent, with a systemd-style notification socket.
NOTIFY="$WORK/notify.sock"
python3 - "$NOTIFY" "$WORK/notify.out" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(120)
try:
    msg = s.recv(4096)
except socket.timeout:
    msg = b"TIMEOUT"
open(sys.argv[2], "wb").write(msg)
PY
LISTENER=$!
for _ in $(seq 1 50); do [ -S "$NOTIFY" ] && break; sleep 0.1; done
NOTIFY_SOCKET="$NOTIFY" "$ROOT/usr/sbin/hsmuxd" --config "$WORK/hsmuxd.yaml" >"$WORK/hsmuxd.log" 2>&1 &
AGENT=$!
cleanup() {
  kill "$AGENT" 2>/dev/null || true
  wait "$AGENT" 2>/dev/null || true
  kill "$LISTENER" 2>/dev/null || true
  wait "$LISTENER" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  [ -s "$WORK/notify.out" ] && break
  kill -0 "$AGENT" 2>/dev/null || { cat "$WORK/hsmuxd.log" >&2; fail "installed hsmuxd exited early"; }
  sleep 0.1
done
[ "$(cat "$WORK/notify.out" 2>/dev/null)" = "READY=1" ] ||
  { cat "$WORK/hsmuxd.log" >&2; fail "no READY=1 on \$NOTIFY_SOCKET (got '$(cat "$WORK/notify.out" 2>/dev/null)')"; }
grep -q '^hsmuxd: serving on ' "$WORK/hsmuxd.log" || fail "READY=1 before 'serving on'"
say "installed hsmuxd serving on 127.0.0.1:$PORT, READY=1 received"

# 5. pkcs11-tool through the installed module.
export HSMUX_CONFIG="$WORK/module.conf"
P11=(pkcs11-tool --module "$MODULE")
"${P11[@]}" --list-slots >"$WORK/slots.txt" 2>&1 || { cat "$WORK/slots.txt" >&2; fail "--list-slots"; }
grep -q 'hsmux-demo' "$WORK/slots.txt" || { cat "$WORK/slots.txt" >&2; fail "token hsmux-demo not listed"; }
"${P11[@]}" --slot 1 --login --pin 1234 --list-objects >"$WORK/login.txt" 2>&1 ||
  { cat "$WORK/login.txt" >&2; fail "log in with the example's PIN"; }
if "${P11[@]}" --slot 1 --login --pin 4321 --list-objects >"$WORK/badlogin.txt" 2>&1; then
  fail "a wrong PIN was accepted"
fi
grep -q 'CKR_PIN_INCORRECT' "$WORK/badlogin.txt" || { cat "$WORK/badlogin.txt" >&2; fail "wrong PIN: not CKR_PIN_INCORRECT"; }
"${P11[@]}" --slot 1 --generate-random 32 --output-file "$WORK/random.bin" >/dev/null 2>&1 ||
  fail "--generate-random"
[ "$(stat -c %s "$WORK/random.bin")" = 32 ] || fail "random: not 32 bytes"
say "OK: installed module lists hsmux-demo, logs in with the example PIN, refuses a wrong one"

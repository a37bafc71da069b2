#!/usr/bin/env bash
# Per-identity allow-lists (DESIGN §2, issue 7 item 3): client-2 may use keys
# labelled "app-*" and the mechanisms CKM_EC_KEY_PAIR_GEN and CKM_ECDSA only;
# everything else is absent for it. Run under with_agent.sh.
set -euo pipefail
W="$HSMUX_TEST_DIR"
M="$HSMUX_MODULE"
PIN="$(head -n1 "$W/secrets/client-pin")"
PIN2="$(head -n1 "$W/secrets/client-2-pin")"
fail() { echo "allowlist: FAIL: $*" >&2; echo "allowlist: 0 passed, 1 failed"; exit 1; }

# Restart the agent with client-2's allow-lists.
python3 - "$W/hsmuxd.yaml" <<'PY'
import sys
p = sys.argv[1]
lines = open(p).read().split("\n")
out, in_client2 = [], False
for line in lines:
    if line.startswith("  - common_name: "):
        in_client2 = line.strip().endswith("client-2")
    if in_client2 and line.startswith("      - {slot_id: 1, pin_hash:"):
        line = line.rstrip("}") + ', allowed_keys: ["app-*"], allowed_mechanisms: [CKM_EC_KEY_PAIR_GEN, CKM_ECDSA]}'
    out.append(line)
open(p, "w").write("\n".join(out))
PY
kill "$HSMUX_AGENT_PID"; wait "$HSMUX_AGENT_PID" 2>/dev/null || true
$HSMUX_AGENT_START >"$W/allowlist-agent.log" 2>&1 &
AGENT=$!
trap 'kill $AGENT 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q '^hsmuxd: serving on' "$W/allowlist-agent.log" && break; sleep 0.1; done
grep -q '^hsmuxd: serving on' "$W/allowlist-agent.log" || fail "agent did not restart: $(tail -3 "$W/allowlist-agent.log")"

sed "s#/client.pem#/client-2.pem#; s#/client.key#/client-2.key#" "$HSMUX_CONFIG" >"$W/module-2.yaml"
c1() { pkcs11-tool --module "$M" "$@" 2>&1; }
c2() { HSMUX_CONFIG="$W/module-2.yaml" pkcs11-tool --module "$M" "$@" 2>&1; }

c1 --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 --id 31 --label app-ec >/dev/null
c1 --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 --id 32 --label other-ec >/dev/null
c1 --login --pin "$PIN" --list-objects | grep -q 'label: *other-ec' || fail "client-1 lost other-ec"
objs="$(c2 --login --pin "$PIN2" --list-objects)"
echo "$objs" | grep -q 'label: *app-ec' || fail "client-2 does not see app-ec"
echo "$objs" | grep -q 'other-ec' && fail "client-2 sees other-ec"
mechs="$(c2 -M)"
echo "$mechs" | grep -q 'ECDSA' || fail "client-2 lacks ECDSA"
echo "$mechs" | grep -q 'RSA' && fail "client-2 sees RSA mechanisms"
echo hello >"$W/msg"; openssl dgst -sha256 -binary "$W/msg" >"$W/msg.sha"
c2 --login --pin "$PIN2" --sign -m ECDSA --label app-ec -i "$W/msg.sha" -o "$W/sig" >/dev/null \
  || fail "client-2 cannot sign with app-ec"
# client-1's key outside client-2's list cannot be used by client-2, named by
# its ID (pkcs11-tool picks the signing key by --id, not by --label); client-1
# still can.
if c2 --login --pin "$PIN2" --sign -m ECDSA --id 32 -i "$W/msg.sha" -o "$W/sig2" >/dev/null; then
  fail "client-2 signed with other-ec (by ID)"
fi
c1 --login --pin "$PIN" --sign -m ECDSA --id 32 -i "$W/msg.sha" -o "$W/sig1" >/dev/null \
  || fail "client-1 cannot sign with other-ec"
out="$(c2 --login --pin "$PIN2" --keypairgen --key-type EC:prime256v1 --id 33 --label bad-ec || true)"
echo "$out" | grep -q CKR_TEMPLATE_INCONSISTENT || fail "client-2 made a key outside its allow-list"
# RSA key generation is not in client-2's list: pkcs11-tool finds no such
# mechanism (or the agent answers CKR_MECHANISM_INVALID); no key is made.
if c2 --login --pin "$PIN2" --keypairgen --key-type rsa:2048 --id 34 --label app-rsa >/dev/null; then
  fail "client-2 generated an RSA key"
fi
c1 --login --pin "$PIN" --list-objects | grep -q 'app-rsa' && fail "an RSA key was made for client-2"
echo "allowlist: 1 passed, 0 failed"

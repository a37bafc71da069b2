#!/usr/bin/env bash
# No PIN or key value may appear in any log, the audit log or the state
# database (issue 7 item 2): run a scenario through hsmux with known PINs and
# a known key value, then search every file the agent and the module wrote
# for them, raw, hex (both cases) and base64.  Run under with_agent.sh.
set -euo pipefail
W="$HSMUX_TEST_DIR"
M="$HSMUX_MODULE"
PIN="$(head -n1 "$W/secrets/client-pin")"
MEMBER_PIN="$(head -n1 "$W/secrets/member-pin")"
NEW_PIN="changed-$RANDOM$RANDOM"
p() { pkcs11-tool --module "$M" "$@" >/dev/null 2>&1 || true; }

# A known AES key value, written as a token key and used.
KEY="$W/known-aes.bin"
python3 -c 'import os,sys; sys.stdout.buffer.write(os.urandom(32))' >"$KEY"
p --login --pin "$PIN" --write-object "$KEY" --type secrkey --key-type AES:32 --id 7001 \
  --label secret-scan --usage-decrypt
p --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 --id 7002 --label secret-scan-ec
echo hello >"$W/msg"
p --login --pin "$PIN" --sign -m ECDSA --id 7002 -i "$W/msg" -o "$W/sig"
p --login --pin wrong-pin-1234 --list-objects
p --login --pin "$PIN" --change-pin --new-pin "$NEW_PIN"
p --login --pin "$NEW_PIN" --change-pin --new-pin "$PIN"
p --login --pin "$PIN" --list-objects
# Make sure the agent flushed its state: the module log and agent log are
# appended synchronously; SQLite is durable per transaction.
sleep 1

python3 - "$W" "$KEY" "$PIN" "$MEMBER_PIN" "$NEW_PIN" <<'PY'
import base64, glob, os, sys
work, keyfile, *pins = sys.argv[1:]
key = open(keyfile, "rb").read()
secrets = {"client PIN": pins[0].encode(), "member PIN": pins[1].encode(),
           "changed PIN": pins[2].encode(), "AES key value": key}
forms = {}
for name, raw in secrets.items():
    forms[name + " (raw)"] = raw
    forms[name + " (hex)"] = raw.hex().encode()
    forms[name + " (HEX)"] = raw.hex().upper().encode()
    forms[name + " (base64)"] = base64.b64encode(raw).rstrip(b"=")
# Everything the agent and the module wrote: logs, audit log, state database
# (with its WAL), the module log. Not the test's own secret files.
files = [f for pat in ("*.log", "state/*", "state/**/*") for f in glob.glob(os.path.join(work, pat), recursive=True)]
files = [f for f in files if os.path.isfile(f) and not f.endswith(".sock")]
found = 0
for f in sorted(set(files)):
    data = open(f, "rb").read()
    for name, needle in forms.items():
        if len(needle) >= 6 and needle in data:
            print(f"FOUND {name} in {f}")
            found += 1
print(f"searched {len(set(files))} files for {len(forms)} forms of {len(secrets)} secrets")
if found:
    print("secrets scan: 0 passed, 1 failed")
    sys.exit(1)
print("secrets scan: 1 passed, 0 failed")
PY

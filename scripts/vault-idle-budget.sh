#!/usr/bin/env bash
# Measures the Vault requests an idle plugin sends, in real time, with serve's defaults for the
# vault backend: a dev Vault (the test suite's build, integration/servers/build.sh) with a file
# audit device, a renewable one-hour token with the least-privilege policy and Vault's default
# policy (as an AppRole login gives), and kms-plugin beside no traffic after one Encrypt and
# Decrypt. Status polls are left out: Status answers from memory and never reaches Vault.
# Usage: scripts/vault-idle-budget.sh [MINUTES]   (default 30). Prints the requests by path.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
servers=${KMS_PLUGIN_SERVERS_DIR:-$HOME/.cache/kms-plugin/servers}
bash integration/servers/build.sh vault
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
bash scripts/build.sh "$work/kms-plugin" kms-plugin
bash scripts/build.sh "$work/kmsctl" kmsctl

port=18299
export VAULT_ADDR=http://127.0.0.1:$port VAULT_TOKEN=budget-root
"$servers/vault" server -dev -dev-root-token-id=$VAULT_TOKEN -dev-listen-address=127.0.0.1:$port >"$work/vault.log" 2>&1 &
for _ in $(seq 100); do "$servers/vault" status >/dev/null 2>&1 && break; sleep 0.2; done
v() { "$servers/vault" "$@" >/dev/null; }
v audit enable file file_path="$work/audit.log"
v secrets enable transit
v write -f transit/keys/budget
"$work/kmsctl" policy --vault-transit-key budget >"$work/policy.hcl"
v policy write kms-plugin "$work/policy.hcl"
"$servers/vault" token create -policy=kms-plugin -policy=default -ttl=1h -renewable=true -field=token >"$work/token"
chmod 600 "$work/token"

"$work/kms-plugin" --listen "$work/kms.sock" --health-addr 127.0.0.1:0 --backend vault \
  --vault-transit-key budget --vault-token-file "$work/token" >"$work/plugin.log" 2>&1 &
for _ in $(seq 100); do [ -S "$work/kms.sock" ] && break; sleep 0.2; done
"$work/kmsctl" load --socket "$work/kms.sock" --op mix --concurrency 1 --duration 1s >/dev/null
sleep 5 # the start-up checks and the first proof are done: count from here
start=$(grep -c '"type":"request"' "$work/audit.log")
echo "counting Vault requests for $minutes minutes of an idle plugin..." >&2
sleep $((minutes * 60))
tail -n +1 "$work/audit.log" | grep '"type":"request"' | tail -n +$((start + 1)) |
  sed -E 's/.*"operation":"([a-z]+)".*"path":"([^"]+)".*/\1 \2/' | sort | uniq -c | sort -rn
total=$(( $(grep -c '"type":"request"' "$work/audit.log") - start ))
echo "total: $total requests in $minutes minutes ($(( total * 60 / minutes )) an hour)"

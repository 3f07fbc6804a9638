#!/usr/bin/env bash
# Builds the real servers the integration tests run (etcd, Vault, kube-apiserver, and kubelet,
# containerd and its runc shim for the static-pod test), each from its own small Go module, and
# caches the binaries by the hash of that module's files; installs swtpm (Debian's package) when
# missing. kubelet's module pins the same k8s.io/kubernetes version as kube-apiserver's;
# containerd's shim the same containerd version.
# Usage: build.sh [etcd|vault|kube-apiserver|kubelet|containerd|containerd-shim-runc-v2|swtpm ...]
#   (default: all seven)
# Prints nothing but progress on stderr; the binaries land in $KMS_PLUGIN_SERVERS_DIR
# (default ~/.cache/kms-plugin/servers), where integration/harness finds them.
set -euo pipefail

# deploy/systemd's tests check the unit with systemd-analyze (verify, security --offline=true):
# Debian's systemd package has it. It is installed when missing and this runs as root.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "build.sh: installing Debian's systemd package for systemd-analyze" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >&2 ||
      { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >&2; }
  else
    echo "build.sh: systemd-analyze is missing (Debian package: systemd); install it as root: apt-get install systemd" >&2
    exit 1
  fi
fi

here=$(cd "$(dirname "$0")" && pwd)
out=${KMS_PLUGIN_SERVERS_DIR:-$HOME/.cache/kms-plugin/servers}
mkdir -p "$out"
servers=("$@")
[ ${#servers[@]} -gt 0 ] || servers=(etcd vault kube-apiserver kubelet containerd containerd-shim-runc-v2 swtpm)

# swtpm, a software TPM 2.0 for the tests of --vault-keep-memory tpm, is Debian's package, not a
# Go module: installed when missing (as root), else named.
ensure_swtpm() {
  if command -v swtpm >/dev/null; then
    echo "build.sh: swtpm installed at $(command -v swtpm)" >&2
    return
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "build.sh: swtpm is missing and this is not root: apt-get install -y swtpm swtpm-tools" >&2
    exit 1
  fi
  echo "build.sh: installing swtpm from Debian's packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y swtpm swtpm-tools >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y swtpm swtpm-tools >&2; }
}

for s in "${servers[@]}"; do
  if [ "$s" = swtpm ]; then
    ensure_swtpm
    continue
  fi
  dir=$here/$s
  [ -f "$dir/go.mod" ] || { echo "build.sh: unknown server $s" >&2; exit 2; }
  hash=$(cat "$dir/go.mod" "$dir/main.go" | sha256sum | cut -c1-12)
  bin=$out/$s-$hash
  # One builder at a time per server, so parallel callers never build twice.
  exec 9>"$out/$s.lock"
  flock 9
  if [ -x "$bin" ]; then
    echo "build.sh: $s cached at $bin" >&2
  else
    echo "build.sh: building $s (first run only; Vault and kube-apiserver take several minutes)" >&2
    start=$(date +%s)
    (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
    mv "$bin.tmp" "$bin"
    echo "build.sh: built $s in $(( $(date +%s) - start ))s" >&2
  fi
  ln -sfn "$bin" "$out/$s"
  flock -u 9
done

#!/usr/bin/env bash
# The one build of the plugin binary, used by the Dockerfile and by operators alike: static
# (no cgo, so it runs in an empty root filesystem), -trimpath (no build paths in the binary),
# stripped, with the version baked in for `kms-plugin --version`.
# Usage: scripts/build.sh [OUTPUT]   (default ./kms-plugin)
# VERSION sets the version (default: `git describe`, or "dev" outside a git checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-kms-plugin}
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
if ! [[ $version =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]]; then
  echo "build.sh: VERSION $version: want letters, digits and . _ + -" >&2
  exit 2
fi
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "$out" ./cmd/kms-plugin

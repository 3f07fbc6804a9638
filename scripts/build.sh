#!/usr/bin/env bash
# The one build of the binaries, used by the Dockerfile and by operators alike: static
# (no cgo, so it runs in an empty root filesystem), -trimpath (no build paths in the binary),
# stripped, with the version baked in for `--version`.
# Usage: scripts/build.sh [OUTPUT [COMMAND]]
#   COMMAND is kms-plugin (the serving daemon, the default) or kmsctl (the operator's tools);
#   OUTPUT defaults to ./COMMAND.
# VERSION sets the version (default: `git describe`, or "dev" outside a git checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
command=${2:-kms-plugin}
case $command in
  kms-plugin | kmsctl) ;;
  *) echo "build.sh: COMMAND $command: want kms-plugin or kmsctl" >&2; exit 2 ;;
esac
out=${1:-$command}
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
if ! [[ $version =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]]; then
  echo "build.sh: VERSION $version: want letters, digits and . _ + -" >&2
  exit 2
fi
# grpcnotrace drops grpc's x/net/trace, whose html/template keeps the linker from removing
# unused methods: the serving binary is 12.9 MB with it, 16.7 MB without (docs/performance.md).
CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags "-s -w -X main.version=${version}" -o "$out" "./cmd/${command}"

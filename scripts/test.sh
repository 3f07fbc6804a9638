#!/usr/bin/env bash
# The whole test suite, from a clean clone: builds the real servers the integration tests run
# (etcd, Vault, kube-apiserver; cached after the first run, which takes about 20 minutes on
# 2 cores), then vets and runs every test with the race detector.
# Extra arguments go to `go test` (for example: scripts/test.sh -run TestRoundTrip).
set -euo pipefail
cd "$(dirname "$0")/.."

bash integration/servers/build.sh
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...
# Every test that needs a real server runs: a missing binary fails instead of skipping.
export KMS_PLUGIN_REQUIRE_SERVERS=1
go test -race -timeout 60m "$@" ./...

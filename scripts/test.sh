#!/usr/bin/env bash
# The whole test suite, from a clean clone: builds the real servers the integration tests run
# (etcd, Vault, kube-apiserver, kubelet, containerd; cached after the first run, which takes
# about 22 minutes on 2 cores), then vets and runs every test with the race detector (the plugin's module, then the
# nested deploy/monitoring/check module), then runs each fuzz target
# for 20 s.
# Extra arguments go to `go test` (for example: scripts/test.sh -run TestRoundTrip).
set -euo pipefail
cd "$(dirname "$0")/.."

# The image and kubelet tests (deploy/image_test.go, integration/kubelet_test.go) build the
# Dockerfile with buildah and run containers with runc and gcc's static pause: Debian's
# packages, installed here when missing (as root, on Debian), or the run stops naming them.
missing=()
for tool in buildah runc gcc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y buildah runc gcc libc6-dev ||
      { apt-get update && apt-get install -y buildah runc gcc libc6-dev; }
  else
    echo "test.sh: missing ${missing[*]}: install Debian's buildah, runc and gcc (as root) and run again" >&2
    exit 1
  fi
fi
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
# deploy/monitoring/check is a module of its own (it needs Prometheus' PromQL parser and rule
# engine, which stay out of the plugin's go.mod), so ./... above does not enter it: the alert rules
# and the dashboard checked against Prometheus' parser and a running plugin's /metrics, and the
# alerts evaluated through a Vault outage.
(cd deploy/monitoring/check && go vet ./... && go test -race -timeout 10m "$@" ./...)

# Then each fuzz target for a short bounded run, so that new divergences from the apiserver's
# parsers are caught (the checked-in corpora already ran above as regression cases). Targets are
# found by name, so a new one is included without editing this script. The budget is a count of
# executions (about 10 to 20 s each on 2 cores), not a duration: Go 1.26's fuzz coordinator can
# report a spurious "context deadline exceeded" when a -fuzztime duration ends while a worker is
# busy (go.dev/issue/75804, fixed in Go 1.27), and a count has no deadline to race.
fuzz_files=$(grep -rlE --include='*_test.go' --exclude-dir=testdata '^func Fuzz[A-Za-z0-9_]*\(' . | sort) ||
  { echo "no fuzz targets found" >&2; exit 1; }
for file in $fuzz_files; do
  for target in $(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/p' "$file"); do
    echo "fuzzing $target for 30000 executions"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime 30000x "./$(dirname "${file#./}")"
  done
done

#!/usr/bin/env bash
# The one build of the binaries, used by the Dockerfile and by operators alike: static
# (no cgo, so it runs in an empty root filesystem), -trimpath and -buildvcs=false (no build
# paths and no VCS stamp in the binary, so that the same commit gives the same bytes in any
# directory, inside the image build, where .git is not in the context, or outside), stripped,
# with the version and commit baked in for `--version`.
# Usage: scripts/build.sh [OUTPUT [COMMAND]]
#   COMMAND is kms-plugin (the serving daemon, the default) or kmsctl (the operator's tools);
#   OUTPUT defaults to ./COMMAND.
# Usage: scripts/build.sh --release DIR
#   Both binaries into DIR, a CycloneDX SBOM of each (DIR/NAME.cdx.json, read from the binary's
#   own module list by cyclonedx-gomod) and DIR/SHA256SUMS over all of them (docs/security.md).
# Usage: scripts/build.sh --image-sbom IMAGE OUTPUT [NAME]
#   A CycloneDX SBOM of a built image, by syft: the packages in the image's files and the
#   module list of each Go binary in it. IMAGE is what syft reads: oci-archive:FILE,
#   docker-archive:FILE, docker:NAME (a local daemon's image), registry:NAME@sha256:...; the
#   SBOM names the image by its manifest digest when IMAGE is an archive or a digest
#   reference (a tag wins over the digest in syft), and by NAME (default: IMAGE).
# Paths are relative to the current directory. VERSION sets the version (default:
# `git describe`, or "dev" outside a git checkout); COMMIT the commit (default:
# `git rev-parse HEAD`, or "unknown" outside a git checkout).
set -euo pipefail
# The SBOM tools, run at pinned versions through the Go module proxy (checked by go.sum's
# checksum database like any module).
cyclonedx_gomod=github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@v1.10.0
syft_version=v1.57.2
syft=github.com/anchore/syft/cmd/syft@$syft_version

if [ "${1:-}" = --image-sbom ]; then
  usage="build.sh --image-sbom IMAGE OUTPUT [NAME]"
  image=${2:?$usage} output=${3:?$usage} name=${4:-$2}
  # Run where the caller is, so that relative paths mean what they say. No update check (a
  # release machine may have no internet); the version stamped as syft's own release does,
  # so that the SBOM names the tool that made it; the source named by NAME, not by a path of
  # the build machine. The first run builds syft (a few minutes); go run caches it.
  SYFT_CHECK_FOR_APP_UPDATE=false go run -ldflags "-X main.version=$syft_version" "$syft" \
    scan "$image" --quiet --source-name "$name" --output "cyclonedx-json=$output"
  exit 0
fi

# OUTPUT and DIR are the caller's, resolved before moving to the checkout's root.
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
if [ "${1:-}" = --release ]; then
  set -- --release "$(absolute "${2:?build.sh --release DIR}")"
elif [ $# -gt 0 ]; then
  set -- "$(absolute "$1")" "${@:2}"
fi
caller=$PWD
cd "$(dirname "$0")/.."

# A fallback is said out loud (as image.sh does): a binary stamped "unknown" cannot be checked
# against its commit.
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null)} ||
  { version=dev; echo "build.sh: WARNING: no VERSION and no git describe: stamping version dev" >&2; }
commit=${COMMIT:-$(git rev-parse HEAD 2>/dev/null)} ||
  { commit=unknown; echo "build.sh: WARNING: no COMMIT and git rev-parse failed (not a checkout, or git's safe.directory): stamping commit unknown" >&2; }
for v in "VERSION $version" "COMMIT $commit"; do
  if ! [[ ${v#* } =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]]; then
    echo "build.sh: $v: want letters, digits and . _ + -" >&2
    exit 2
  fi
done

build() { # OUTPUT COMMAND
  # grpcnotrace drops grpc's x/net/trace, whose html/template keeps the linker from removing
  # unused methods: the serving binary was 12.9 MB with it, 16.7 MB without (docs/performance.md).
  CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -buildvcs=false \
    -ldflags "-s -w -X main.version=${version} -X main.commit=${commit}" -o "$1" "./cmd/$2"
}

if [ "${1:-}" = --release ]; then
  dir=${2:?build.sh --release DIR}
  mkdir -p "$dir"
  for command in kms-plugin kmsctl; do
    build "$dir/$command" "$command"
    # -noserial -notimestamp: the SBOM is a function of the binary, so it is reproducible too.
    go run "$cyclonedx_gomod" bin -json -noserial -notimestamp -version "$version" \
      -output "$dir/$command.cdx.json" "$dir/$command"
  done
  (cd "$dir" && sha256sum kms-plugin kmsctl kms-plugin.cdx.json kmsctl.cdx.json > SHA256SUMS)
  exit 0
fi

command=${2:-kms-plugin}
case $command in
  kms-plugin | kmsctl) ;;
  *) echo "build.sh: COMMAND $command: want kms-plugin or kmsctl" >&2; exit 2 ;;
esac
build "${1:-$caller/$command}" "$command"

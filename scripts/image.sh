#!/usr/bin/env bash
# Builds the kms-plugin image from the Dockerfile with buildah, as a release is built
# (--timestamp 0 and the version and commit as build arguments: the same commit on the same
# base images gives the same layers), and saves it as an OCI archive, ready for
# `ctr -n k8s.io images import` on a node.
# Usage: scripts/image.sh [--local-bases] [--sbom] ARCHIVE
#   --local-bases  no registry needed: the Dockerfile's two base images are first made from
#                  this machine (local_bases below) and passed as BUILD_IMAGE and BASE_IMAGE.
#                  Without it, buildah pulls the published bases (golang, distroless static);
#                  the digests it built on are printed, for the release notes.
#   --sbom         also the image's SBOM (scripts/build.sh --image-sbom): ARCHIVE without
#                  its .tar, plus .cdx.json.
# ARCHIVE is relative to the current directory. Environment: VERSION and COMMIT as for
# scripts/build.sh; IMAGE, the image's name (default localhost/kms-plugin:VERSION, the name
# deploy/static-pod/ uses for v0.1.0); BUILDAH_STORAGE, global buildah options (the tests pass
# a store of their own: --root, --runroot, --storage-driver); HOST_GOCACHE=1 mounts this
# machine's Go build cache into the build stage (the same bytes, sooner). Needs root and
# Debian's buildah (apt-get install buildah).
set -euo pipefail

local_bases=false sbom=false
while [ $# -gt 1 ]; do
  case $1 in
    --local-bases) local_bases=true ;;
    --sbom) sbom=true ;;
    *) echo "image.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
usage="usage: scripts/image.sh [--local-bases] [--sbom] ARCHIVE"
archive=${1:?$usage}
case $archive in
  -*) echo "image.sh: $usage" >&2; exit 2 ;;
  /*) ;;
  *) archive=$PWD/$archive ;;
esac
cd "$(dirname "$0")/.."
command -v buildah >/dev/null || { echo "image.sh: buildah is not installed (apt-get install buildah)" >&2; exit 1; }

# The version and commit that --version will print: a fallback is said out loud, since a
# release stamped "unknown" cannot be checked against its commit.
if [ -z "${VERSION:-}" ]; then
  VERSION=$(git describe --tags --always --dirty 2>/dev/null) ||
    { VERSION=dev; echo "image.sh: WARNING: no VERSION and no git describe: stamping version dev" >&2; }
fi
if [ -z "${COMMIT:-}" ]; then
  COMMIT=$(git rev-parse HEAD 2>/dev/null) ||
    { COMMIT=unknown; echo "image.sh: WARNING: no COMMIT and git rev-parse failed (not a checkout, or git's safe.directory): stamping commit unknown" >&2; }
fi
image=${IMAGE:-localhost/kms-plugin:$VERSION}
if ! [[ ${image##*:} =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
  echo "image.sh: image tag ${image##*:} is not a valid tag (letters, digits, _ . -): set IMAGE" >&2
  exit 2
fi

# buildah with the caller's store. chroot isolation: RUN steps need no user namespace, and a
# container runtime's default rlimits may exceed this machine's hard ones.
export BUILDAH_ISOLATION=chroot
# shellcheck disable=SC2086 # BUILDAH_STORAGE is a list of options
bah() { buildah ${BUILDAH_STORAGE:-} "$@"; }

# What a failed run leaves is removed: the temp directory and any working container.
tmp=$(mktemp -d)
containers=()
cleanup() {
  for c in "${containers[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
new_container() { # from scratch; sets ctr
  ctr=$(bah from scratch)
  containers+=("$ctr")
}

build_image=localhost/kms-plugin-local/golang:local
base_image=localhost/kms-plugin-local/static:nonroot

# local_bases makes two stand-ins from this machine's files, committed with --timestamp 0 so
# that the same machine makes the same layers:
# - build_image for golang:GO_VERSION: the Go toolchain here (`go env GOROOT`, which must be
#   the Dockerfile's GO_VERSION, the release's), bash and the few programs build.sh runs, with
#   their libraries. It has no network: GOPROXY=off, and the build mounts this machine's module
#   cache (filled first by `go mod download`), where go only verifies what go.sum lists.
# - base_image for distroless static nonroot: CA certificates (Debian's ca-certificates),
#   passwd and group with root and nonroot (65532, home /home/nonroot), nsswitch.conf, /tmp;
#   no shell.
local_bases() {
  local want have rootfs=$tmp/build base=$tmp/base bin lib libs
  want=go$(sed -n 's/^ARG GO_VERSION=//p' Dockerfile)
  have=$(go env GOVERSION)
  if [ "$want" != "$have" ]; then
    echo "image.sh: --local-bases: this machine's Go is $have, the Dockerfile builds with $want." >&2
    echo "  Run with GOTOOLCHAIN=$want (go fetches that release) so that the image's binary is the release's." >&2
    exit 1
  fi
  [ -f /etc/ssl/certs/ca-certificates.crt ] ||
    { echo "image.sh: no /etc/ssl/certs/ca-certificates.crt (apt-get install ca-certificates)" >&2; exit 1; }

  for bin in /bin/bash /bin/sh /usr/bin/dirname /usr/bin/env; do
    libs=$(ldd "$bin") || { echo "image.sh: ldd $bin failed" >&2; exit 1; }
    for lib in "$bin" $(grep -o '/[^ ]* (0x' <<<"$libs" | cut -d' ' -f1); do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
  done
  mkdir -p "$rootfs/etc" "$rootfs/root" "$rootfs/tmp"
  chmod 0700 "$rootfs/root" && chmod 1777 "$rootfs/tmp"
  echo 'root:x:0:0:root:/root:/bin/bash' > "$rootfs/etc/passwd"
  echo 'root:x:0:' > "$rootfs/etc/group"
  new_container
  bah copy "$ctr" "$rootfs/" / >/dev/null
  bah copy "$ctr" "$(go env GOROOT)" /usr/local/go >/dev/null
  bah config --env PATH=/usr/local/go/bin:/usr/local/bin:/usr/bin:/bin --env GOPATH=/go \
    --env HOME=/root --env GOTOOLCHAIN=local --env GOPROXY=off --env GOFLAGS=-mod=readonly "$ctr"
  bah commit --quiet --rm --timestamp 0 "$ctr" "$build_image" >/dev/null

  mkdir -p "$base/etc/ssl/certs" "$base/tmp" "$base/home" "$tmp/home/nonroot"
  chmod 1777 "$base/tmp" && chmod 0755 "$base/home" && chmod 0700 "$tmp/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$base/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$base/etc/group"
  echo 'hosts: files dns' > "$base/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$base/etc/ssl/certs/"
  chmod 0644 "$base"/etc/passwd "$base"/etc/group "$base"/etc/nsswitch.conf "$base"/etc/ssl/certs/ca-certificates.crt
  new_container
  bah copy "$ctr" "$base/" / >/dev/null
  # buildah copy makes files root's unless told: nonroot's home (0700) is nonroot's. Copied as
  # the content of a directory, so that its mode is kept and /home stays root's.
  bah copy --chown 65532:65532 "$ctr" "$tmp/home/" /home/ >/dev/null
  bah commit --quiet --rm --timestamp 0 "$ctr" "$base_image" >/dev/null
}

args=(bud --isolation chroot --timestamp 0 --layers=false
  --build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT" --tag "$image")
if $local_bases; then
  local_bases
  go mod download
  args+=(--pull-never --build-arg "BUILD_IMAGE=$build_image" --build-arg "BASE_IMAGE=$base_image"
    --volume "$(go env GOMODCACHE):/go/pkg/mod")
fi
if [ "${HOST_GOCACHE:-}" = 1 ]; then
  args+=(--volume "$(go env GOCACHE):/root/.cache/go-build")
fi
bah "${args[@]}" --file Dockerfile .
rm -f "$archive"
bah push --quiet "$image" "oci-archive:$archive:$image"
echo "image.sh: $image (version $VERSION, commit $COMMIT), ID $(bah inspect --type image --format '{{.FromImageID}}' "$image"), in $archive"
if ! $local_bases; then
  for name in $(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile); do
    case $name in
      '${BUILD_IMAGE}') name=$(sed -n 's/^ARG BUILD_IMAGE=//p' Dockerfile) ;;
      '${BASE_IMAGE}') name=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile) ;;
    esac
    name=${name//\$\{GO_VERSION\}/$(sed -n 's/^ARG GO_VERSION=//p' Dockerfile)}
    echo "image.sh: built on $name@$(bah inspect --type image --format '{{.FromImageDigest}}' "$name")"
  done
fi
if $sbom; then
  bash scripts/build.sh --image-sbom "oci-archive:$archive" "${archive%.tar}.cdx.json" "$image"
  echo "image.sh: SBOM in ${archive%.tar}.cdx.json"
fi

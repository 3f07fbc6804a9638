#!/usr/bin/env bash
# Builds the kms-plugin image from the Dockerfile with buildah, as a release is built
# (--timestamp 0 and the version and commit as build arguments: the same commit gives the same
# layers), and saves it as an OCI archive, ready for `ctr -n k8s.io images import` on a node.
# Usage: scripts/image.sh [--local-bases] [--sbom] ARCHIVE
#   --local-bases  no registry needed: the Dockerfile's two base images are first made from
#                  this machine (local_bases below) and passed as BUILD_IMAGE and BASE_IMAGE.
#                  Without it, buildah pulls the published bases (golang, distroless static).
#   --sbom         also the image's SBOM (scripts/build.sh --image-sbom): ARCHIVE without
#                  its .tar, plus .cdx.json.
# Environment: VERSION and COMMIT as for scripts/build.sh; IMAGE, the image's name (default
# localhost/kms-plugin:VERSION, the name deploy/static-pod/ uses for v0.1.0); BUILDAH_STORAGE,
# global buildah options (the tests pass a store of their own: --root, --runroot,
# --storage-driver); HOST_GOCACHE=1 mounts this machine's Go build cache into the build stage
# (the same bytes, sooner). Needs root and Debian's buildah (apt-get install buildah).
set -euo pipefail
cd "$(dirname "$0")/.."

local_bases=false sbom=false
while [ $# -gt 1 ]; do
  case $1 in
    --local-bases) local_bases=true ;;
    --sbom) sbom=true ;;
    *) echo "image.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
archive=${1:?usage: scripts/image.sh [--local-bases] [--sbom] ARCHIVE}
case $archive in
  -*) echo "image.sh: usage: scripts/image.sh [--local-bases] [--sbom] ARCHIVE" >&2; exit 2 ;;
esac
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
commit=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
image=${IMAGE:-localhost/kms-plugin:$version}
command -v buildah >/dev/null || { echo "image.sh: buildah is not installed (apt-get install buildah)" >&2; exit 1; }

# buildah with the caller's store. chroot isolation: RUN steps need no user namespace, and a
# container runtime's default rlimits may exceed this machine's hard ones.
export BUILDAH_ISOLATION=chroot
# shellcheck disable=SC2086 # BUILDAH_STORAGE is a list of options
bah() { buildah ${BUILDAH_STORAGE:-} "$@"; }

build_image=localhost/kms-plugin-local/golang:local
base_image=localhost/kms-plugin-local/static:nonroot

# local_bases makes two stand-ins from this machine's files, committed with --timestamp 0 so
# that the same machine makes the same layers:
# - build_image for golang:GO_VERSION: the Go toolchain here (`go env GOROOT`, the release
#   go.mod asks for), bash and the few programs build.sh runs, with their libraries. It has no
#   network: GOPROXY=off, and the build mounts this machine's module cache (filled first by
#   `go mod download`), where go only verifies what go.sum lists.
# - base_image for distroless static nonroot: CA certificates (Debian's ca-certificates),
#   passwd and group with root and nonroot (65532), nsswitch.conf, /tmp; no shell.
local_bases() {
  local dir rootfs base ctr bin lib
  dir=$(mktemp -d)
  rootfs=$dir/build base=$dir/base
  for bin in /bin/bash /bin/sh /usr/bin/dirname /usr/bin/env; do
    for lib in "$bin" $(ldd "$bin" | grep -o '/[^ ]* (0x' | cut -d' ' -f1); do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
  done
  mkdir -p "$rootfs/etc" "$rootfs/root" "$rootfs/tmp"
  chmod 0700 "$rootfs/root" && chmod 1777 "$rootfs/tmp"
  echo 'root:x:0:0:root:/root:/bin/bash' > "$rootfs/etc/passwd"
  echo 'root:x:0:' > "$rootfs/etc/group"
  ctr=$(bah from scratch)
  bah copy "$ctr" "$rootfs/" / >/dev/null
  bah copy "$ctr" "$(go env GOROOT)" /usr/local/go >/dev/null
  bah config --env PATH=/usr/local/go/bin:/usr/local/bin:/usr/bin:/bin --env GOPATH=/go \
    --env HOME=/root --env GOTOOLCHAIN=local --env GOPROXY=off --env GOFLAGS=-mod=readonly "$ctr"
  bah commit --quiet --rm --timestamp 0 "$ctr" "$build_image" >/dev/null

  mkdir -p "$base/etc/ssl/certs" "$base/tmp" "$base/home/nonroot"
  chmod 1777 "$base/tmp" && chmod 0700 "$base/home/nonroot" && chown 65532:65532 "$base/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$base/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$base/etc/group"
  echo 'hosts: files dns' > "$base/etc/nsswitch.conf"
  [ -f /etc/ssl/certs/ca-certificates.crt ] ||
    { echo "image.sh: no /etc/ssl/certs/ca-certificates.crt (apt-get install ca-certificates)" >&2; exit 1; }
  cp /etc/ssl/certs/ca-certificates.crt "$base/etc/ssl/certs/"
  chmod 0644 "$base"/etc/passwd "$base"/etc/group "$base"/etc/nsswitch.conf "$base"/etc/ssl/certs/ca-certificates.crt
  ctr=$(bah from scratch)
  bah copy "$ctr" "$base/" / >/dev/null
  bah commit --quiet --rm --timestamp 0 "$ctr" "$base_image" >/dev/null
  rm -rf "$dir"
}

args=(bud --isolation chroot --timestamp 0 --layers=false
  --build-arg "VERSION=$version" --build-arg "COMMIT=$commit" --tag "$image")
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
echo "image.sh: $image, ID $(bah inspect --type image --format '{{.FromImageID}}' "$image"), in $archive"
if $sbom; then
  bash scripts/build.sh --image-sbom "oci-archive:$archive" "${archive%.tar}.cdx.json"
  echo "image.sh: SBOM in ${archive%.tar}.cdx.json"
fi

# The kms-plugin image: a static binary on distroless "static" (CA certificates and a nonroot
# user, no shell, no package manager). The binary is built by scripts/build.sh, the same
# script operators use, so the image and a hand build never differ: same flags, same bytes.
#   VERSION=v0.1.0 bash scripts/image.sh [--local-bases] kms-plugin-image.tar    (buildah)
#   docker build --build-arg VERSION=v0.1.0 --build-arg COMMIT=$(git rev-parse HEAD) \
#     -t localhost/kms-plugin:v0.1.0 .
# The base images are build arguments whose defaults are the published ones; with no
# registry, scripts/image.sh --local-bases makes stand-ins from the machine's files, as the
# tests do. deploy/dockerfile_test.go checks this file; deploy/image_test.go builds it twice
# and compares the layers.

ARG GO_VERSION=1.26.8
ARG BUILD_IMAGE=golang:${GO_VERSION}
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# .git is not in the build context: the commit comes in as an argument (build.sh's -buildvcs=false
# keeps the binary free of a VCS stamp either way, so the image's binary is the host build's).
ARG VERSION=dev
ARG COMMIT=unknown
RUN VERSION=${VERSION} COMMIT=${COMMIT} bash scripts/build.sh /out/kms-plugin

FROM ${BASE_IMAGE}
COPY --from=build /out/kms-plugin /kms-plugin
USER 65532:65532
ENTRYPOINT ["/kms-plugin"]

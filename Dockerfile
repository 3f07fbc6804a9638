# The kms-plugin image: a static binary on distroless "static" (CA certificates and a nonroot
# user, no shell, no package manager). The binary is built by scripts/build.sh, the same
# script operators use, so the image and a hand build never differ.
#   docker build --build-arg VERSION=v0.1.0 -t localhost/kms-plugin:v0.1.0 .
# deploy/dockerfile_test.go checks this file and runs the build in an empty root.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN VERSION=${VERSION} bash scripts/build.sh /out/kms-plugin

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kms-plugin /kms-plugin
USER 65532:65532
ENTRYPOINT ["/kms-plugin"]

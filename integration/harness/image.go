package harness

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// PluginImage is the reference deploy/static-pod/ names: the tests tag the image they build
// from the Dockerfile with it, so that the manifests run as shipped.
const PluginImage = "localhost/kms-plugin:v0.1.0"

// ImageStore is a buildah image store of the test's own (vfs storage in a temp dir: no
// overlay mounts to undo, nothing shared with the machine's images), in which the tests build
// the repository's Dockerfile with no registry: the base images are local ones made by
// BuildBaseImages and passed as the Dockerfile's build arguments.
type ImageStore struct {
	root, runroot string
}

// NewImageStore makes an empty store. buildah (Debian's package) must be installed: when it is
// not, the test fails naming it, even when run by hand, since nothing can replace it.
func NewImageStore(t testing.TB) *ImageStore {
	t.Helper()
	if _, err := exec.LookPath("buildah"); err != nil {
		t.Fatalf("buildah is not installed (%v): the image tests build the Dockerfile with it; install Debian's buildah and runc (apt-get install -y buildah runc)", err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the image tests run buildah as root (its vfs store and chroot isolation need it)")
	}
	dir := t.TempDir()
	s := &ImageStore{root: filepath.Join(dir, "root"), runroot: filepath.Join(dir, "runroot")}
	t.Cleanup(func() {
		// buildah's vfs layers are plain directories, but a few are read-only: make them
		// removable for t.TempDir's cleanup.
		_ = exec.Command("chmod", "-R", "u+w", dir).Run()
	})
	return s
}

// Buildah runs buildah on this store and returns its standard output.
func (s *ImageStore) Buildah(t testing.TB, args ...string) string {
	t.Helper()
	out, err := s.command(args...).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("buildah %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	return strings.TrimSpace(string(out))
}

func (s *ImageStore) command(args ...string) *exec.Cmd {
	all := append([]string{"--root", s.root, "--runroot", s.runroot, "--storage-driver", "vfs"}, args...)
	cmd := exec.Command("buildah", all...)
	cmd.Env = append(os.Environ(), "BUILDAH_ISOLATION=chroot")
	return cmd
}

// Base images made by BuildBaseImages.
const (
	// LocalBuildImage stands in for golang:GO_VERSION: the Go toolchain of this machine
	// (/usr/local/go, the release go.mod asks for), bash and the few files the build needs.
	LocalBuildImage = "localhost/kms-plugin-test/golang:local"
	// LocalBaseImage stands in for distroless static nonroot: CA certificates, a passwd and
	// group with root and nonroot (65532), /tmp; no shell.
	LocalBaseImage = "localhost/kms-plugin-test/static:nonroot"
)

// BuildBaseImages makes LocalBuildImage and LocalBaseImage from this machine's files. The
// build image has no network and no proxy: GOPROXY=off, and BuildPluginImage mounts the
// machine's module cache, so `go mod download` only verifies what is there.
func (s *ImageStore) BuildBaseImages(t testing.TB) {
	t.Helper()
	goroot := "/usr/local/go"
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		goroot = strings.TrimSpace(string(out))
	}
	rootfs := filepath.Join(t.TempDir(), "build-rootfs")
	for _, bin := range []string{"/bin/bash", "/bin/sh", "/usr/bin/dirname", "/usr/bin/env"} {
		copyWithLibraries(t, bin, rootfs)
	}
	writeFiles(t, rootfs, map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
		"etc/group":  "root:x:0:\n",
	})
	run.Must(t, os.MkdirAll(filepath.Join(rootfs, "tmp"), 0o1777), "rootfs /tmp")
	run.Must(t, os.MkdirAll(filepath.Join(rootfs, "root"), 0o700), "rootfs /root")
	ctr := s.Buildah(t, "from", "scratch")
	s.Buildah(t, "copy", ctr, rootfs+"/", "/")
	s.Buildah(t, "copy", ctr, goroot, "/usr/local/go")
	s.Buildah(t, "config",
		"--env", "PATH=/usr/local/go/bin:/usr/local/bin:/usr/bin:/bin",
		"--env", "GOPATH=/go", "--env", "HOME=/root", "--env", "GOTOOLCHAIN=local",
		"--env", "GOPROXY=off", "--env", "GOFLAGS=-mod=readonly", ctr)
	s.Buildah(t, "commit", "--rm", ctr, LocalBuildImage)

	base := filepath.Join(t.TempDir(), "base-rootfs")
	writeFiles(t, base, map[string]string{
		"etc/passwd":        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
		"etc/group":         "root:x:0:\nnonroot:x:65532:\n",
		"etc/nsswitch.conf": "hosts: files dns\n",
	})
	certs, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	run.Must(t, err, "CA certificates (Debian's ca-certificates package)")
	writeFiles(t, base, map[string]string{"etc/ssl/certs/ca-certificates.crt": string(certs)})
	run.Must(t, os.MkdirAll(filepath.Join(base, "tmp"), 0o1777), "base /tmp")
	run.Must(t, os.Chmod(filepath.Join(base, "tmp"), 0o1777), "base /tmp")
	run.Must(t, os.MkdirAll(filepath.Join(base, "home", "nonroot"), 0o700), "base home")
	run.Must(t, os.Chown(filepath.Join(base, "home", "nonroot"), 65532, 65532), "base home")
	ctr = s.Buildah(t, "from", "scratch")
	s.Buildah(t, "copy", ctr, base+"/", "/")
	s.Buildah(t, "commit", "--rm", ctr, LocalBaseImage)
}

// copyWithLibraries copies bin, and the shared libraries ldd lists for it, into rootfs at
// their paths (symbolic links resolved: the copy holds the files themselves).
func copyWithLibraries(t testing.TB, bin, rootfs string) {
	t.Helper()
	files := []string{bin}
	out, err := exec.Command("ldd", bin).Output()
	run.Must(t, err, "ldd %s", bin)
	for _, m := range regexp.MustCompile(`(/\S+)\s+\(0x`).FindAllStringSubmatch(string(out), -1) {
		files = append(files, m[1])
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		run.Must(t, err, "reading %s", f)
		dst := filepath.Join(rootfs, f)
		run.Must(t, os.MkdirAll(filepath.Dir(dst), 0o755), "rootfs dir")
		run.Must(t, os.WriteFile(dst, raw, 0o755), "rootfs file")
	}
}

func writeFiles(t testing.TB, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		run.Must(t, os.MkdirAll(filepath.Dir(p), 0o755), "rootfs dir")
		run.Must(t, os.WriteFile(p, []byte(content), 0o644), "rootfs file")
	}
}

// PluginImageOptions say what BuildPluginImage builds.
type PluginImageOptions struct {
	Context string // the build context: a checkout of this repository (its Dockerfile)
	Tag     string // default PluginImage
	Version string // the VERSION build argument
	Commit  string // the COMMIT build argument
	// HostBuildCache mounts the machine's Go build cache into the build stage: the same bytes
	// (the cache is keyed by content), much sooner. The reproducibility test leaves it off,
	// so that its builds start cold.
	HostBuildCache bool
}

// BuildPluginImage builds the repository's Dockerfile as a release is built — buildah with
// --timestamp 0, the version and commit as build arguments — but from the local base images
// and with no registry or proxy (BuildBaseImages first; chroot isolation shares the host's
// network, but the build image sets GOPROXY=off). It returns the image ID.
func (s *ImageStore) BuildPluginImage(t testing.TB, opts PluginImageOptions) string {
	t.Helper()
	if opts.Tag == "" {
		opts.Tag = PluginImage
	}
	modcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	run.Must(t, err, "go env GOMODCACHE")
	// The module cache holds what `go mod download` in the build stage verifies offline.
	dl := exec.Command("go", "mod", "download")
	dl.Dir = opts.Context
	if out, err := dl.CombinedOutput(); err != nil {
		t.Fatalf("go mod download: %v\n%s", err, out)
	}
	args := []string{"bud", "--isolation", "chroot", "--timestamp", "0",
		"--layers=false", "--pull-never",
		"--build-arg", "BUILD_IMAGE=" + LocalBuildImage,
		"--build-arg", "BASE_IMAGE=" + LocalBaseImage,
		"--build-arg", "VERSION=" + opts.Version,
		"--build-arg", "COMMIT=" + opts.Commit,
		"--volume", strings.TrimSpace(string(modcache)) + ":/go/pkg/mod",
		"--tag", opts.Tag, "--file", filepath.Join(opts.Context, "Dockerfile"), opts.Context}
	if opts.HostBuildCache {
		gocache, err := exec.Command("go", "env", "GOCACHE").Output()
		run.Must(t, err, "go env GOCACHE")
		args = append(args[:len(args)-1], "--volume", strings.TrimSpace(string(gocache))+":/root/.cache/go-build", opts.Context)
	}
	cmd := s.command(args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("buildah %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return s.Buildah(t, "inspect", "--type", "image", "--format", "{{.FromImageID}}", opts.Tag)
}

// ImageLayers are the digests of an image's layers in its manifest, base first.
func (s *ImageStore) ImageLayers(t testing.TB, image string) []string {
	t.Helper()
	var m struct {
		Layers []struct{ Digest string } `json:"layers"`
	}
	raw := s.Buildah(t, "inspect", "--type", "image", "--format", "{{.Manifest}}", image)
	run.Must(t, json.Unmarshal([]byte(raw), &m), "image manifest")
	var out []string
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

// ImageSize is the total size of an image's layers, uncompressed, in bytes.
func (s *ImageStore) ImageSize(t testing.TB, image string) int64 {
	t.Helper()
	var m struct {
		Layers []struct{ Size int64 } `json:"layers"`
	}
	raw := s.Buildah(t, "inspect", "--type", "image", "--format", "{{.Manifest}}", image)
	run.Must(t, json.Unmarshal([]byte(raw), &m), "image manifest")
	var n int64
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// ImageFile reads one file of an image's root filesystem.
func (s *ImageStore) ImageFile(t testing.TB, image, path string) []byte {
	t.Helper()
	ctr := s.Buildah(t, "from", "--pull-never", image)
	defer s.Buildah(t, "rm", ctr)
	dir := s.Buildah(t, "mount", ctr) // vfs: a plain directory, nothing mounted
	defer s.Buildah(t, "umount", ctr)
	raw, err := os.ReadFile(filepath.Join(dir, path))
	run.Must(t, err, "%s in %s", path, image)
	return raw
}

// SaveOCIArchive writes image to an OCI archive under name (for `ctr images import`).
func (s *ImageStore) SaveOCIArchive(t testing.TB, image, name, path string) {
	t.Helper()
	s.Buildah(t, "push", image, "oci-archive:"+path+":"+name)
}

package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// PluginImage is the reference deploy/static-pod/ names: the tests tag the image they build
// from the Dockerfile with it, so that the manifests run as shipped.
const PluginImage = "localhost/kms-plugin:v0.1.0"

// ImageStore is a buildah image store of the test's own (vfs storage in a temp dir: no
// overlay mounts to undo, nothing shared with the machine's images), in which the tests build
// the repository's Dockerfile with no registry, as scripts/image.sh --local-bases does for an
// operator.
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

// GlobalArgs are buildah's options for this store, as scripts/image.sh's BUILDAH_STORAGE takes them.
func (s *ImageStore) GlobalArgs() string {
	return strings.Join(s.globalArgs(), " ")
}

func (s *ImageStore) globalArgs() []string {
	return []string{"--root", s.root, "--runroot", s.runroot, "--storage-driver", "vfs"}
}

func (s *ImageStore) command(args ...string) *exec.Cmd {
	all := append(s.globalArgs(), args...)
	cmd := exec.Command("buildah", all...)
	cmd.Env = append(os.Environ(), "BUILDAH_ISOLATION=chroot")
	return cmd
}

// PluginImageOptions say what BuildPluginImage builds.
type PluginImageOptions struct {
	Context string // the build context: a checkout of this repository (its Dockerfile and scripts)
	Tag     string // default PluginImage
	Version string // the VERSION build argument
	Commit  string // the COMMIT build argument
	// Archive is where the OCI archive of the image is written (default: a temp file).
	Archive string
	// SBOM also writes the image's SBOM (image.sh --sbom): Archive without .tar, plus .cdx.json.
	SBOM bool
	// HostBuildCache mounts the machine's Go build cache into the build stage: the same bytes
	// (the cache is keyed by content), much sooner. The reproducibility test leaves it off,
	// so that its builds start cold.
	HostBuildCache bool
}

// BuildPluginImage builds the repository's Dockerfile as an operator without a registry does,
// with the checkout's own scripts/image.sh --local-bases (base images made from this machine,
// no registry or proxy; --timestamp 0, the version and commit as build arguments), into this
// store. It returns the image ID.
func (s *ImageStore) BuildPluginImage(t testing.TB, opts PluginImageOptions) string {
	t.Helper()
	if opts.Tag == "" {
		opts.Tag = PluginImage
	}
	if opts.Archive == "" {
		opts.Archive = filepath.Join(t.TempDir(), "kms-plugin-image.tar")
	}
	args := []string{filepath.Join(opts.Context, "scripts", "image.sh"), "--local-bases"}
	if opts.SBOM {
		args = append(args, "--sbom")
	}
	cmd := exec.Command("bash", append(args, opts.Archive)...)
	cmd.Env = append(os.Environ(), "VERSION="+opts.Version, "COMMIT="+opts.Commit, "IMAGE="+opts.Tag,
		"BUILDAH_STORAGE="+s.GlobalArgs())
	if opts.HostBuildCache {
		cmd.Env = append(cmd.Env, "HOST_GOCACHE=1")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/image.sh --local-bases: %v\n%s", err, out)
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
	var raw []byte
	s.inImage(t, image, func(root string) {
		var err error
		raw, err = os.ReadFile(filepath.Join(root, path))
		run.Must(t, err, "%s in %s", path, image)
	})
	return raw
}

// ImageStat is the owner (uid:gid) and permission bits of a path in image, as "65532:65532 0700".
func (s *ImageStore) ImageStat(t testing.TB, image, path string) string {
	t.Helper()
	var out string
	s.inImage(t, image, func(root string) {
		info, err := os.Lstat(filepath.Join(root, path))
		run.Must(t, err, "%s in %s", path, image)
		st := info.Sys().(*syscall.Stat_t)
		out = fmt.Sprintf("%d:%d %04o", st.Uid, st.Gid, st.Mode&0o7777)
	})
	return out
}

// inImage calls f with the root of image's files.
func (s *ImageStore) inImage(t testing.TB, image string, f func(root string)) {
	t.Helper()
	ctr := s.Buildah(t, "from", "--pull-never", image)
	defer s.Buildah(t, "rm", ctr)
	dir := s.Buildah(t, "mount", ctr) // vfs: a plain directory, nothing mounted
	defer s.Buildah(t, "umount", ctr)
	f(dir)
}

// SaveOCIArchive writes image to an OCI archive under name (for `ctr images import`).
func (s *ImageStore) SaveOCIArchive(t testing.TB, image, name, path string) {
	t.Helper()
	s.Buildah(t, "push", image, "oci-archive:"+path+":"+name)
}

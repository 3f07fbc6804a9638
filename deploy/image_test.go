package deploy_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// copyCheckout copies this checkout's files (tracked and untracked, not ignored: what a clone
// of the commit holds) into a new directory, so that two builds run from different places.
func copyCheckout(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "src")
	list, err := exec.Command("git", "-C", "..", "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	run.Must(t, err, "git ls-files")
	for _, name := range strings.Split(strings.TrimRight(string(list), "\x00"), "\x00") {
		src := filepath.Join("..", name)
		info, err := os.Lstat(src)
		if err != nil || !info.Mode().IsRegular() {
			continue // deleted in the working tree, or not a file
		}
		raw, err := os.ReadFile(src)
		run.Must(t, err, "%s", name)
		run.Must(t, os.MkdirAll(filepath.Dir(filepath.Join(dst, name)), 0o755), "copy")
		run.Must(t, os.WriteFile(filepath.Join(dst, name), raw, info.Mode().Perm()), "copy")
	}
	return dst
}

// The image is built for real from ../Dockerfile with buildah and no registry, twice, from
// two copies of the checkout: the layers are identical, the binary in the image is the one
// scripts/build.sh makes on the host from a third place, and the image is under 20 MB.
func TestImageBuildIsReproducible(t *testing.T) {
	const version, commit = "v9.8.7-test", "0123456789abcdef0123456789abcdef01234567"
	store := harness.NewImageStore(t)

	var ids []string
	var layers [][]string
	archive := filepath.Join(t.TempDir(), "kms-plugin-image.tar") // the first build's, with its SBOM
	for i, tag := range []string{"localhost/kms-plugin:first", "localhost/kms-plugin:second"} {
		opts := harness.PluginImageOptions{Context: copyCheckout(t), Tag: tag, Version: version, Commit: commit}
		if i == 0 {
			opts.Archive, opts.SBOM = archive, true
		}
		ids = append(ids, store.BuildPluginImage(t, opts))
		layers = append(layers, store.ImageLayers(t, tag))
	}
	if !slices.Equal(layers[0], layers[1]) {
		t.Errorf("two builds of one commit give different layers:\n%v\n%v", layers[0], layers[1])
	}
	if ids[0] != ids[1] {
		t.Errorf("two builds of one commit give different image IDs: %s, %s", ids[0], ids[1])
	}
	t.Logf("image %s, layers %v", ids[0], layers[0])

	// The local base is shaped as distroless static nonroot is.
	for path, want := range map[string]string{"home": "0:0 0755", "home/nonroot": "65532:65532 0700", "tmp": "0:0 1777"} {
		if got := store.ImageStat(t, "localhost/kms-plugin:first", path); got != want {
			t.Errorf("/%s in the image: %s, want %s", path, got, want)
		}
	}
	size := store.ImageSize(t, "localhost/kms-plugin:first")
	t.Logf("image size: %d bytes (%.1f MB)", size, float64(size)/1e6)
	if size >= 20e6 {
		t.Errorf("image is %d bytes, want under 20 MB", size)
	}

	// The host build, from this checkout, in the test's own directory, with another GOCACHE
	// state and time: the same bytes as the image's binary.
	hostBin := filepath.Join(t.TempDir(), "kms-plugin")
	build := exec.Command("bash", "../scripts/build.sh", hostBin)
	build.Env = append(os.Environ(), "VERSION="+version, "COMMIT="+commit)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("scripts/build.sh: %v\n%s", err, out)
	}
	host, err := os.ReadFile(hostBin)
	run.Must(t, err, "host binary")
	inImage := store.ImageFile(t, "localhost/kms-plugin:first", "kms-plugin")
	if !bytes.Equal(host, inImage) {
		t.Errorf("the image's /kms-plugin (%d bytes) differs from scripts/build.sh's (%d bytes)", len(inImage), len(host))
	}
	out, err := exec.Command(hostBin, "--version").Output()
	if want := "kms-plugin version " + version + " (commit " + commit + ", go"; err != nil || !strings.HasPrefix(string(out), want) {
		t.Errorf("--version: %v, printed %q, want %q...", err, out, want)
	}

	checkImageSBOM(t, archive, "localhost/kms-plugin:first", hostBin)
}

// checkImageSBOM checks the SBOM that scripts/image.sh --sbom made beside archive against the
// image and its binary: it names the image (its name, not a path of the build machine, and
// its manifest digest) and the tool that made it,
// and lists every module that the binary's own build information lists (go version -m), at
// the same version.
func checkImageSBOM(t *testing.T, archive, image, bin string) {
	t.Helper()
	sbom := strings.TrimSuffix(archive, ".tar") + ".cdx.json"
	var bom struct {
		BOMFormat string `json:"bomFormat"`
		Metadata  struct {
			Tools struct {
				Components []struct{ Name, Version string }
			}
			Component struct{ Type, Name, Version string }
		}
		Components []struct{ Name, Version string }
	}
	raw, err := os.ReadFile(sbom)
	run.Must(t, err, "image SBOM")
	run.Must(t, json.Unmarshal(raw, &bom), "image SBOM")
	digest := ociManifestDigest(t, archive)
	if c := bom.Metadata.Component; bom.BOMFormat != "CycloneDX" || c.Type != "container" || c.Name != image || c.Version != digest {
		t.Errorf("image SBOM: format %q, component %+v, want the container %s at its manifest digest %s", bom.BOMFormat, c, image, digest)
	}
	if len(bom.Metadata.Tools.Components) != 1 || bom.Metadata.Tools.Components[0].Name != "syft" || bom.Metadata.Tools.Components[0].Version != "v1.57.2" {
		t.Errorf("image SBOM's tools: %+v, want syft v1.57.2", bom.Metadata.Tools.Components)
	}
	listed := map[string]string{}
	for _, c := range bom.Components {
		listed[c.Name] = c.Version
	}
	info, err := exec.Command("go", "version", "-m", bin).Output()
	run.Must(t, err, "go version -m")
	deps := 0
	for _, line := range strings.Split(string(info), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "dep" {
			deps++
			if listed[f[1]] != f[2] {
				t.Errorf("image SBOM lists %s at %q, the binary has %s", f[1], listed[f[1]], f[2])
			}
		}
	}
	if deps == 0 {
		t.Fatalf("go version -m lists no module of the binary:\n%s", info)
	}
	t.Logf("image SBOM: %d components, %d modules of the binary; image %s", len(bom.Components), deps, digest)
}

// ociManifestDigest is the digest of the one image manifest in an OCI archive.
func ociManifestDigest(t *testing.T, archive string) string {
	t.Helper()
	f, err := os.Open(archive)
	run.Must(t, err, "OCI archive")
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		run.Must(t, err, "index.json in %s", archive)
		if h.Name != "index.json" {
			continue
		}
		var index struct{ Manifests []struct{ Digest string } }
		run.Must(t, json.NewDecoder(tr).Decode(&index), "index.json")
		if len(index.Manifests) != 1 {
			t.Fatalf("index.json lists %d manifests, want 1", len(index.Manifests))
		}
		return index.Manifests[0].Digest
	}
}

// scripts/build.sh --release, run from two copies of the checkout, gives the same files — the
// binaries, their CycloneDX SBOMs, SHA256SUMS — and the checksums and SBOMs are what they say.
func TestReleaseIsReproducible(t *testing.T) {
	const version, commit = "v9.8.7-test", "0123456789abcdef0123456789abcdef01234567"
	var sums []string
	var dirs []string
	for range 2 {
		src, out := copyCheckout(t), t.TempDir()
		build := exec.Command("bash", filepath.Join(src, "scripts/build.sh"), "--release", out)
		build.Env = append(os.Environ(), "VERSION="+version, "COMMIT="+commit)
		if msg, err := build.CombinedOutput(); err != nil {
			t.Fatalf("scripts/build.sh --release: %v\n%s", err, msg)
		}
		raw, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
		run.Must(t, err, "SHA256SUMS")
		sums, dirs = append(sums, string(raw)), append(dirs, out)
	}
	if sums[0] != sums[1] {
		t.Errorf("two release builds of one commit differ:\n%s\n%s", sums[0], sums[1])
	}
	check := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
	check.Dir = dirs[0]
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("sha256sum --check: %v\n%s", err, out)
	}
	for _, name := range []string{"kms-plugin", "kmsctl"} {
		if !strings.Contains(sums[0], "  "+name+"\n") || !strings.Contains(sums[0], "  "+name+".cdx.json\n") {
			t.Errorf("SHA256SUMS lacks %s or its SBOM:\n%s", name, sums[0])
		}
		var bom struct {
			BOMFormat string `json:"bomFormat"`
			Metadata  struct {
				Component struct{ Name, Version string }
			}
			Components []struct{ Name, Version string }
		}
		raw, err := os.ReadFile(filepath.Join(dirs[0], name+".cdx.json"))
		run.Must(t, err, "SBOM")
		run.Must(t, json.Unmarshal(raw, &bom), "SBOM %s", name)
		if bom.BOMFormat != "CycloneDX" || bom.Metadata.Component.Version != version {
			t.Errorf("%s SBOM: format %q, component %+v", name, bom.BOMFormat, bom.Metadata.Component)
		}
		// The SBOM lists the binary's modules: grpc is in both.
		if !slices.ContainsFunc(bom.Components, func(c struct{ Name, Version string }) bool { return c.Name == "google.golang.org/grpc" }) {
			t.Errorf("%s SBOM does not list google.golang.org/grpc among %d components", name, len(bom.Components))
		}
	}
}

// scripts/image.sh --local-bases refuses a Go other than the Dockerfile's GO_VERSION, before
// building anything: the image's binary would not be the release's (docs/security.md).
func TestImageScriptRefusesAnotherGo(t *testing.T) {
	store := harness.NewImageStore(t) // fails the test, naming buildah, where it is missing
	realGo, err := exec.LookPath("go")
	run.Must(t, err, "go")
	bin := t.TempDir()
	fake := "#!/bin/sh\nif [ \"$1 $2\" = \"env GOVERSION\" ]; then echo go1.20.0; exit 0; fi\nexec " + realGo + " \"$@\"\n"
	run.Must(t, os.WriteFile(filepath.Join(bin, "go"), []byte(fake), 0o755), "fake go")
	archive := filepath.Join(t.TempDir(), "image.tar")
	cmd := exec.Command("bash", "../scripts/image.sh", "--local-bases", archive)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "VERSION=v0.0.1", "COMMIT=unknown",
		"BUILDAH_STORAGE="+store.GlobalArgs())
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "this machine's Go is go1.20.0, the Dockerfile builds with go1.") {
		t.Fatalf("image.sh with go1.20.0: %v\n%s", err, out)
	}
	if _, err := os.Stat(archive); !os.IsNotExist(err) {
		t.Errorf("image.sh wrote %s after refusing: %v", archive, err)
	}
	if images := store.Buildah(t, "images", "--quiet"); images != "" {
		t.Errorf("image.sh built images after refusing:\n%s", images)
	}
}

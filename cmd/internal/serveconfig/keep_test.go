package serveconfig

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/integration/harness/swtpm"
	"github.com/kmsplugin/kms-plugin/plugin/keep"
)

// kmsctl doctor's preflight of the kept state and serve's start give one verdict.
func TestKeepPreflightAgreesWithServe(t *testing.T) {
	if err := keep.OnTmpfs("/dev/shm"); err != nil {
		t.Fatalf("this test needs a tmpfs at /dev/shm: %v", err)
	}
	shm, err := os.MkdirTemp("/dev/shm", "keep-preflight")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	openShm := filepath.Join(shm, "open")
	os.Mkdir(openShm, 0o755)
	openDisk := t.TempDir()
	os.Chmod(openDisk, 0o777)
	tpm := swtpm.Start(t)
	for _, c := range []struct {
		name   string
		args   []string
		accept bool
	}{
		{"off", nil, true},
		{"tmpfs, new directory", []string{"--vault-keep-memory=tmpfs", "--vault-keep-memory-dir=" + filepath.Join(shm, "new", "state")}, true},
		{"tmpfs, on disk", []string{"--vault-keep-memory=tmpfs", "--vault-keep-memory-dir=" + filepath.Join(t.TempDir(), "state")}, false},
		{"tmpfs, readable by others", []string{"--vault-keep-memory=tmpfs", "--vault-keep-memory-dir=" + openShm}, false},
		{"tpm", []string{"--vault-keep-memory=tpm", "--vault-tpm-device=" + tpm.Device, "--vault-keep-memory-dir=" + filepath.Join(t.TempDir(), "state")}, true},
		{"tpm, no device", []string{"--vault-keep-memory=tpm", "--vault-tpm-device=/nonexistent/tpmrm0", "--vault-keep-memory-dir=" + t.TempDir()}, false},
		{"tpm, directory others write in", []string{"--vault-keep-memory=tpm", "--vault-tpm-device=" + tpm.Device, "--vault-keep-memory-dir=" + openDisk}, false},
		{"tpm, grace 0", []string{"--vault-keep-memory=tpm", "--vault-tpm-device=" + tpm.Device, "--vault-memory-grace=0"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := &Vault{}
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			b.AddFlags(fs)
			if err := fs.Parse(c.args); err != nil {
				t.Fatal(err)
			}
			_, doctorErr := b.KeepPreflight(fs)
			serveErr := b.keep.problems(fs, b.memory)
			if serveErr == nil {
				var store keep.Store
				store, serveErr = b.keep.open()
				if c, ok := store.(interface{ Close() error }); ok {
					c.Close()
				}
			}
			if (serveErr == nil) != c.accept || (doctorErr == nil) != c.accept {
				t.Fatalf("serve: %v; doctor: %v; want accepted %v", serveErr, doctorErr, c.accept)
			}
		})
	}
}

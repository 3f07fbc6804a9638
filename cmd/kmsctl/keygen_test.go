package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

func TestKeygen(t *testing.T) {
	keys := filepath.Join(plugintest.ShortTempDir(t), "keys.yaml")
	out := runKmsctl(t, "keygen", "--localaes-key-file", keys)
	if !strings.Contains(out, "localaes:key1:") {
		t.Fatalf("keygen output %q", out)
	}
	runKmsctl(t, "keygen", "--localaes-key-file", keys, "--name", "later")
	runKmsctl(t, "keygen", "--localaes-key-file", keys, "--name", "now", "--write")
	raw, _ := os.ReadFile(keys)
	names := []string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, "name:") {
			names = append(names, strings.TrimSpace(strings.SplitN(line, "name:", 2)[1]))
		}
	}
	if strings.Join(names, ",") != "now,key1,later" {
		t.Fatalf("key order %v, want now,key1,later", names)
	}
	if info, _ := os.Stat(keys); info.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", info.Mode())
	}
}

func runKmsctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runCLI(args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

// keygen on a key file whose lock another writer holds says what it waits for, and fails with
// an error once the bound passes, instead of hanging.
func TestKeygenWaitsForTheLockWithinABound(t *testing.T) {
	keys := filepath.Join(plugintest.ShortTempDir(t), "keys.yaml")
	runKmsctl(t, "keygen", "--localaes-key-file", keys)
	lock, err := os.OpenFile(keys+".lock", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer func(wait time.Duration) { keygenLockWait = wait }(keygenLockWait)
	keygenLockWait = 50 * time.Millisecond
	out, err := runCLI("keygen", "--localaes-key-file", keys)
	if err == nil || !strings.Contains(err.Error(), keys+".lock: still held by pid") {
		t.Fatalf("keygen while another writer holds the lock: %v; want an error naming the lock and its holder", err)
	}
	if !strings.Contains(out, "waiting for the lock on "+keys+".lock, held by pid") || !strings.Contains(out, "giving up after 50ms") {
		t.Fatalf("keygen did not say what it waits for: %q", out)
	}
}

// keygen refuses a lock file that others may write, as it refuses such a key file.
func TestKeygenRefusesABadLockFile(t *testing.T) {
	keys := filepath.Join(plugintest.ShortTempDir(t), "keys.yaml")
	runKmsctl(t, "keygen", "--localaes-key-file", keys)
	if err := os.Chmod(keys+".lock", 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI("keygen", "--localaes-key-file", keys); err == nil || !strings.Contains(err.Error(), keys+".lock has mode 0666") || !strings.Contains(err.Error(), "chmod 600 "+keys+".lock") {
		t.Fatalf("keygen with a 0666 lock file: %v; want it refused with the fix", err)
	}
}

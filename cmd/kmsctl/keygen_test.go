package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/internal/plugintest"
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

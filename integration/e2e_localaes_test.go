package integration

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// TestLocalAES runs every scenario with the localaes backend: plugins share one key file,
// and rotation is `kmsctl keygen --write` then SIGHUP.
func TestLocalAES(t *testing.T) {
	t.Parallel()
	runScenarios(t, newLocalAES)
}

type localAES struct{ keyFile string }

func newLocalAES(t *testing.T) kekBackend {
	l := &localAES{keyFile: filepath.Join(t.TempDir(), "keys.yaml")}
	keygen(t, l.keyFile)
	return l
}

func (l *localAES) pluginArgs() []string {
	return []string{"--backend=localaes", "--localaes-key-file=" + l.keyFile}
}

func (l *localAES) rotate(t *testing.T, plugins ...*harness.Plugin) string {
	t.Helper()
	id := keygen(t, l.keyFile, "--write")
	for _, p := range plugins {
		p.Reload(t)
		p.WaitKeyID(t, id)
	}
	return id
}

var addedKey = regexp.MustCompile(`^added key (\S+) to `)

// keygen adds a key to the key file with `kmsctl keygen` and returns its id.
func keygen(t *testing.T, keyFile string, args ...string) string {
	t.Helper()
	out, err := exec.Command(harness.KmsctlBinary(t), append([]string{"keygen", "--localaes-key-file", keyFile}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kmsctl keygen: %v: %s", err, out)
	}
	m := addedKey.FindSubmatch(out)
	if m == nil {
		t.Fatalf("kmsctl keygen said %q", out)
	}
	return string(m[1])
}

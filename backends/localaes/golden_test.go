package localaes_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/kektest"
)

// Golden files: envelopes written by released versions of the plugin under the keys of
// testdata/golden/keys.yaml, a key file used by this test only (never shown in docs, deploy or
// the README, whose keys the loader refuses). Every later version must still decrypt every
// envelope in testdata/golden/envelopes.json. New entries are added, never changed, by
//
//	KMS_PLUGIN_WRITE_GOLDEN=<label> go test ./backends/localaes -run TestGolden
//
// which creates the key file if there is none (two keys, so that a non-first key is covered
// too) and appends an envelope under each key, labelled written_by=<label>.
const goldenDir = "testdata/golden"

var goldenEnvelopes = filepath.Join(goldenDir, "envelopes.json")

// openGoldenKeys copies the checked-in key file to a private file (git keeps mode 0644, which
// the loader refuses) and opens it.
func openGoldenKeys(t *testing.T) *localaes.KEK {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(goldenDir, "keys.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := localaes.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGolden(t *testing.T) {
	if label := os.Getenv("KMS_PLUGIN_WRITE_GOLDEN"); label != "" {
		writeGolden(t, label)
		return
	}
	envs := kektest.ReadGolden(t, goldenEnvelopes)
	if len(envs) == 0 {
		t.Fatal("no golden envelopes in " + goldenEnvelopes)
	}
	s := dek.NewSealer(openGoldenKeys(t))
	for _, e := range envs {
		e.Check(t, s)
	}
}

func writeGolden(t *testing.T, label string) {
	keys := filepath.Join(goldenDir, "keys.yaml")
	if _, err := os.Stat(keys); os.IsNotExist(err) {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"golden-old", "golden-write"} {
			if _, err := localaes.AddKey(keys, name, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	envs := kektest.ReadGolden(t, goldenEnvelopes)
	k := openGoldenKeys(t)
	s := dek.NewSealer(k)
	for _, id := range k.KeyIDs() {
		envs = append(envs, kektest.Seal(t, s, label, id, ""))
	}
	kektest.WriteGolden(t, goldenEnvelopes, envs)
}

package localaes_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/dek"
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

type goldenEnvelope struct {
	WrittenBy  string `json:"written_by"`
	KeyID      string `json:"key_id"`
	Plaintext  string `json:"plaintext"`  // base64
	Ciphertext string `json:"ciphertext"` // base64 of the plugin's Encrypt response
}

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
	var envs []goldenEnvelope
	raw, err := os.ReadFile(filepath.Join(goldenDir, "envelopes.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &envs); err != nil || len(envs) == 0 {
		t.Fatalf("golden envelopes: %v (%d)", err, len(envs))
	}
	s := dek.NewSealer(openGoldenKeys(t))
	for _, e := range envs {
		ct, _ := base64.StdEncoding.DecodeString(e.Ciphertext)
		want, _ := base64.StdEncoding.DecodeString(e.Plaintext)
		got, id, err := s.Decrypt(context.Background(), ct)
		if err != nil || !bytes.Equal(got, want) || id != e.KeyID {
			t.Errorf("envelope written by %s under %s: Decrypt = %q, %q, %v; want %q", e.WrittenBy, e.KeyID, got, id, err, want)
		}
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
	var envs []goldenEnvelope
	if raw, err := os.ReadFile(filepath.Join(goldenDir, "envelopes.json")); err == nil {
		if err := json.Unmarshal(raw, &envs); err != nil {
			t.Fatal(err)
		}
	}
	k := openGoldenKeys(t)
	s := dek.NewSealer(k)
	for _, id := range k.KeyIDs() {
		plain := []byte(label + " golden envelope under " + id)
		ct, err := s.Encrypt(context.Background(), id, plain)
		if err != nil {
			t.Fatal(err)
		}
		envs = append(envs, goldenEnvelope{WrittenBy: label, KeyID: id,
			Plaintext: base64.StdEncoding.EncodeToString(plain), Ciphertext: base64.StdEncoding.EncodeToString(ct)})
	}
	j, err := json.MarshalIndent(envs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(goldenDir, "envelopes.json"), append(j, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

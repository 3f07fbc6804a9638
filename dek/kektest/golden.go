package kektest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
)

// Golden is one envelope that a released version of the plugin wrote, kept in a backend's
// testdata so that every later version must still decrypt it. New ones are appended, never
// changed (KMS_PLUGIN_WRITE_GOLDEN=<label> in each backend's golden test).
type Golden struct {
	WrittenBy  string `json:"written_by"` // the plugin version (commit) that wrote it
	KeyID      string `json:"key_id"`     // the key id the envelope carries, as written
	Plaintext  string `json:"plaintext"`  // base64
	Ciphertext string `json:"ciphertext"` // base64 of the plugin's Encrypt response
	Note       string `json:"note,omitempty"`
}

// Seal encrypts a plaintext naming label and keyID with s and returns it as a Golden.
func Seal(t *testing.T, s *dek.Sealer, label, keyID, note string) Golden {
	t.Helper()
	plain := []byte(label + " golden envelope under " + keyID)
	ct, err := s.Encrypt(context.Background(), keyID, plain)
	if err != nil {
		t.Fatal(err)
	}
	return Golden{WrittenBy: label, KeyID: keyID, Note: note,
		Plaintext: base64.StdEncoding.EncodeToString(plain), Ciphertext: base64.StdEncoding.EncodeToString(ct)}
}

// Check decrypts g with s and reports a wrong plaintext or key id; it returns the ciphertext.
func (g Golden) Check(t *testing.T, s *dek.Sealer) []byte {
	t.Helper()
	ct, _ := base64.StdEncoding.DecodeString(g.Ciphertext)
	want, _ := base64.StdEncoding.DecodeString(g.Plaintext)
	got, id, err := s.Decrypt(context.Background(), ct)
	if err != nil || !bytes.Equal(got, want) || id != g.KeyID {
		t.Errorf("envelope written by %s under %s: Decrypt = %q, %q, %v; want %q", g.WrittenBy, g.KeyID, got, id, err, want)
	}
	return ct
}

// ReadGolden reads the envelopes of path; none when it does not exist.
func ReadGolden(t *testing.T, path string) []Golden {
	t.Helper()
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var envs []Golden
	if err := json.Unmarshal(raw, &envs); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return envs
}

// WriteGolden writes envs to path, creating its directory.
func WriteGolden(t *testing.T, path string, envs []Golden) {
	t.Helper()
	j, err := json.MarshalIndent(envs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(j, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

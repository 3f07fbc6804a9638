package localaes_test

import (
	"encoding/base64"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
)

// base64Secret matches standard base64 of 32 bytes: 43 characters and one '='.
var base64Secret = regexp.MustCompile(`[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=`)

// Every 32-byte secret shown in the docs and examples is refused as a key: a new example key
// fails this test until its fingerprint is added to publishedKeys (published.go).
func TestEveryPublishedKeyIsListed(t *testing.T) {
	found := map[string]string{} // secret -> where
	for _, root := range []string{"../../docs", "../../deploy", "../../README.md"} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if d.Name() == "go.sum" {
				return nil // module checksums (h1:<base64 of SHA-256>), not example keys
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, s := range base64Secret.FindAllString(string(raw), -1) {
				if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) == localaes.KeySize {
					found[s] = strings.TrimPrefix(path, "../../")
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(found) == 0 {
		t.Fatal("no example key found in docs/ or deploy/: is the scan broken?")
	}
	for secret, where := range found {
		path := writeKeys(t, localaes.FileKey{Name: "example", Secret: secret})
		_, err := localaes.Open(path)
		if err == nil || !strings.Contains(err.Error(), "published") {
			t.Errorf("the key shown in %s is accepted (%v): add its fingerprint to publishedKeys in published.go", where, err)
		}
	}
}

// A published key is refused also behind a good one, and on reload.
func TestPublishedKeyRefusedAnywhereInTheFile(t *testing.T) {
	good := make([]byte, localaes.KeySize)
	good[0] = 1
	path := writeKeys(t,
		localaes.FileKey{Name: "mine", Secret: base64.StdEncoding.EncodeToString(good)},
		localaes.FileKey{Name: "old", Secret: base64.StdEncoding.EncodeToString([]byte("REPLACE-ME-with-32-random-bytes!"))})
	if _, err := localaes.Open(path); err == nil || !strings.Contains(err.Error(), "keys[1] (old)") {
		t.Fatalf("err = %v", err)
	}
}

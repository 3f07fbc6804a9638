package encryptionconfig_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	apiconfig "k8s.io/apiserver/pkg/server/options/encryptionconfig"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
)

// FuzzParse feeds arbitrary files to our loader and to kube-apiserver's. Ours must never
// panic, and must accept exactly the files the apiserver accepts (kms providers aside: the
// apiserver dials them while loading, and refuses v1 by default).
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Add([]byte("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: [{resources: ['*.*'], providers: [{identity: {}}]}]"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := encryptionconfig.Parse(data)
		if err == nil {
			c.Close()
		}
		if bytes.Contains(data, []byte("kms")) {
			return
		}
		path := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		_, refErr := apiconfig.LoadEncryptionConfig(ctx, path, false, "fuzz")
		if (err == nil) != (refErr == nil) {
			t.Fatalf("ours: %v; apiserver: %v", err, refErr)
		}
	})
}

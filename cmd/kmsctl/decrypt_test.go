package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/storage/providers"
	"github.com/kmsplugin/kms-plugin/storage/storedobject"
)

func runWithStdin(stdin []byte, args ...string) ([]byte, error) {
	var out bytes.Buffer
	root := newRootCommand()
	root.SetIn(bytes.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.Bytes(), err
}

func writeEncConfig(t *testing.T, providersYAML string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "enc.yaml")
	body := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n" + providersYAML
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

const secretManifest = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: prod}\ndata: {password: aHVudGVyMg==}\n"

func TestEncryptDecryptCommands(t *testing.T) {
	key := "/registry/secrets/prod/db"
	gcm := writeEncConfig(t, "      - aesgcm: {keys: [{name: k1, secret: "+b64("0123456789abcdef0123456789abcdef")+"}]}\n      - identity: {}\n")
	value, err := runWithStdin([]byte(secretManifest), "encrypt", "--encryption-config", gcm, "--etcd-key", key, "--input", "yaml")
	if err != nil || !bytes.HasPrefix(value, []byte("k8s:enc:aesgcm:v1:k1:")) {
		t.Fatalf("encrypt: %v, %q", err, value)
	}
	// etcdctl get --print-value-only adds a newline.
	out, err := runWithStdin(append(bytes.Clone(value), '\n'), "decrypt", "--encryption-config", gcm, "--etcd-key", key, "-o", "json")
	if err != nil || !strings.Contains(string(out), `"password": "aHVudGVyMg=="`) {
		t.Fatalf("decrypt -o json: %v\n%s", err, out)
	}
	raw, err := runWithStdin(value, "decrypt", "--encryption-config", gcm, "--etcd-key", key)
	if err != nil || !bytes.HasPrefix(raw, []byte("k8s\x00")) {
		t.Fatalf("decrypt: %v, %q", err, raw)
	}

	for name, tc := range map[string]struct {
		config, etcdKey string
		value           []byte
		want            string
	}{
		"provider not configured": {writeEncConfig(t, "      - secretbox: {keys: [{name: s1, secret: "+b64(strings.Repeat("s", 32))+"}]}\n"),
			key, value, `the value starts "k8s:enc:aesgcm:v1:k1:"; configured providers: k8s:enc:secretbox:v1`},
		"key not configured": {writeEncConfig(t, "      - aesgcm: {keys: [{name: k2, secret: "+b64("0123456789abcdef")+"}]}\n"),
			key, value, `configured aesgcm keys: k2`},
		"wrong key": {writeEncConfig(t, "      - aesgcm: {keys: [{name: k1, secret: "+b64("fedcba9876543210")+"}]}\n"),
			key, value, "failed authentication"},
		"moved":                              {gcm, "/registry/secrets/prod/other", value, "failed authentication"},
		"corrupted":                          {gcm, key, append(bytes.Clone(value[:len(value)-1]), value[len(value)-1]^1), "failed authentication"},
		"truncated":                          {gcm, key, value[:30], "malformed"},
		"plaintext config refuses encrypted": {writeEncConfig(t, "      - identity: {}\n"), key, value, "k8s:enc:aesgcm:v1:k1:"},
		"unknown resource":                   {gcm, "/registry/widgets/x", value, "pass --resource"},
		"not under /registry":                {gcm, "/other/secrets/x", value, "pass --resource"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := runWithStdin(tc.value, "decrypt", "--encryption-config", tc.config, "--etcd-key", tc.etcdKey)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
}

// aescbc is not authenticated: under a wrong key a value passes the padding check about once
// in 256 tries. decrypt must refuse that garbage rather than print it as the object.
func TestDecryptRefusesAESCBCGarbage(t *testing.T) {
	right, _ := providers.NewAESCBC([]byte("0123456789abcdef"))
	wrong, _ := providers.NewAESCBC([]byte("fedcba9876543210"))
	plain, err := storedobject.Encode([]byte(secretManifest))
	if err != nil {
		t.Fatal(err)
	}
	var value []byte
	for i := 0; value == nil; i++ {
		if i > 100000 {
			t.Fatal("no value with valid padding under the wrong key")
		}
		v, _ := right.Encrypt(context.Background(), nil, plain, nil)
		if _, err := wrong.Decrypt(context.Background(), v, nil); err == nil {
			value = append([]byte("k8s:enc:aescbc:v1:k1:"), v...)
		}
	}
	config := writeEncConfig(t, "      - aescbc: {keys: [{name: k1, secret: "+b64("fedcba9876543210")+"}]}\n")
	out, err := runWithStdin(value, "decrypt", "--encryption-config", config, "--etcd-key", "/registry/secrets/prod/db")
	if err == nil || !strings.Contains(err.Error(), "not a stored Kubernetes object") {
		t.Fatalf("decrypt of aescbc garbage: %v, %d bytes out", err, len(out))
	}
}

func TestValueCommandsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"decrypt"},
		{"decrypt", "--encryption-config", "/nonexistent", "--etcd-key", "/registry/secrets/a/b"},
		{"decrypt", "--encryption-config", "x", "--etcd-key", "/registry/secrets/a/b", "-o", "xml"},
		{"encrypt", "--encryption-config", "x", "--etcd-key", "/registry/secrets/a/b", "--input", "xml"},
	} {
		if _, err := runWithStdin([]byte("k8s\x00x"), args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	// Raw input to encrypt must be a stored object, not a manifest by mistake.
	config := writeEncConfig(t, "      - identity: {}\n")
	if _, err := runWithStdin([]byte(secretManifest), "encrypt", "--encryption-config", config, "--etcd-key", "/registry/secrets/a/b"); err == nil || !strings.Contains(err.Error(), "--input yaml") {
		t.Errorf("raw manifest: %v", err)
	}

}

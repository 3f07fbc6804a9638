package providers_test

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

var writeGolden = flag.Bool("write-golden", false, "write testdata/golden/local-providers.json anew (only for a new format)")

// goldenValue is one etcd value as this version wrote it.
type goldenValue struct {
	Provider  string `json:"provider"`
	EtcdKey   string `json:"etcdKey"`
	Plaintext string `json:"plaintext"`
	Value     []byte `json:"value"`
}

const goldenFile = "testdata/golden/local-providers.json"

// Values that an earlier version wrote with each of the apiserver's local providers still
// decrypt, byte for byte, with the keys in testdata/golden/encryption-config.yaml: a later
// version may never lose the ability to read them (docs/disaster-recovery.md has the table).
func TestGoldenLocalProviderValues(t *testing.T) {
	cfg, err := encryptionconfig.Load("testdata/golden/encryption-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	chain := cfg.TransformerFor(encryptionconfig.GroupResource{Resource: "secrets"})
	ctx := context.Background()
	if *writeGolden {
		var out []goldenValue
		for i, l := range chain.Links() {
			name := "identity"
			if parts := strings.Split(l.Prefix, ":"); len(parts) > 2 {
				name = parts[2] // k8s:enc:<provider>:v1:
			}
			key := "/registry/secrets/golden/" + name
			plain := `{"kind":"Secret","apiVersion":"v1","metadata":{"name":"golden"},"data":{"v":"c2VjcmV0"}}`
			value, err := providers.NewChain("provider", chain.Links()[i]).Encrypt(ctx, nil, []byte(plain), []byte(key))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, goldenValue{Provider: l.Prefix, EtcdKey: key, Plaintext: plain, Value: value})
		}
		raw, _ := json.MarshalIndent(out, "", "  ")
		if err := os.WriteFile(goldenFile, append(raw, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(filepath.Clean(goldenFile))
	if err != nil {
		t.Fatal(err)
	}
	var golden []goldenValue
	if err := json.Unmarshal(raw, &golden); err != nil {
		t.Fatal(err)
	}
	if len(golden) != 4 {
		t.Fatalf("%d golden values, want one per provider (aescbc, aesgcm, secretbox, identity)", len(golden))
	}
	for _, g := range golden {
		got, err := chain.Decrypt(ctx, g.Value, []byte(g.EtcdKey))
		if err != nil || string(got) != g.Plaintext {
			t.Errorf("golden %q value: %q, %v", g.Provider, got, err)
		}
	}
}

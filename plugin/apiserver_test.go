package plugin_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
)

// The apiserver's own code path: kube-apiserver's encryption-config loader and its KMS v2
// and v1 envelope transformers, talking to the plugin over its socket, write a value and read
// it back. Recent apiservers refuse KMS v1 unless the KMSv1 feature gate is on; the loader
// checks utilfeature.DefaultFeatureGate, so the v1 case turns it on there.
func TestAPIServerTransformerRoundTrip(t *testing.T) {
	for _, api := range []string{"v2", "v1"} {
		t.Run(api, func(t *testing.T) {
			if api == "v1" {
				featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.KMSv1, true)
			}
			p := startPlugin(t)
			config := filepath.Join(t.TempDir(), "encryption.yaml")
			os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms:
          apiVersion: %s
          name: ourplugin
          endpoint: unix://%s
          timeout: 3s
      - identity: {}
`, api, p.socket)), 0o600)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			loaded, err := encryptionconfig.LoadEncryptionConfig(ctx, config, false, "test-apiserver")
			if err != nil {
				t.Fatal(err)
			}
			tr := loaded.Transformers[schema.GroupResource{Resource: "secrets"}]
			if tr == nil {
				t.Fatal("no transformer for secrets")
			}
			etcdKey := value.DefaultContext("/registry/secrets/default/s1")
			plain := []byte("k8s\x00 a Secret as the apiserver would store it")

			// Until its first Status and Encrypt, the v2 transformer has no DEK seed; it retries.
			var stored []byte
			deadline := time.Now().Add(30 * time.Second)
			for {
				stored, err = tr.TransformToStorage(ctx, plain, etcdKey)
				if err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("TransformToStorage: %v", err)
			}
			if prefix := "k8s:enc:kms:" + api + ":ourplugin:"; !bytes.HasPrefix(stored, []byte(prefix)) {
				t.Fatalf("stored value starts %q, want %q", stored[:min(len(stored), 40)], prefix)
			}
			if bytes.Contains(stored, plain) {
				t.Fatal("plaintext stored")
			}
			got, stale, err := tr.TransformFromStorage(ctx, stored, etcdKey)
			if err != nil || stale || !bytes.Equal(got, plain) {
				t.Fatalf("TransformFromStorage = %q, stale %v, %v", got, stale, err)
			}
			// The etcd key is authenticated data: the value does not read under another key.
			if _, _, err := tr.TransformFromStorage(ctx, stored, value.DefaultContext("/registry/secrets/default/s2")); err == nil {
				t.Fatal("value read under another etcd key")
			}
			for _, hc := range loaded.HealthChecks {
				if err := hc.Check(httptest.NewRequest("GET", "/readyz", nil)); err != nil {
					t.Fatalf("apiserver health check %s: %v", hc.Name(), err)
				}
			}
		})
	}
}

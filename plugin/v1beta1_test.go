package plugin_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	kmsv1 "k8s.io/kms/apis/v1beta1"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/dek"
)

// kube-apiserver's own KMS v1 path (its encryption-config loader with a `kms` provider of
// apiVersion v1, and the v1 envelope transformer over the socket) writes and reads through the
// plugin's v1beta1 service. Recent apiservers refuse KMS v1 unless the KMSv1 feature gate is
// on; the loader checks utilfeature.DefaultFeatureGate, so the test turns it on there.
func TestAPIServerV1TransformerRoundTrip(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.KMSv1, true)
	p := startPlugin(t)
	config := filepath.Join(t.TempDir(), "encryption.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms:
          apiVersion: v1
          name: ourv1plugin
          endpoint: unix://%s
          cachesize: 10
          timeout: 3s
      - identity: {}
`, p.socket)), 0o600)

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
	plain := []byte("k8s\x00 a Secret written by a KMS v1 apiserver")
	stored, err := tr.TransformToStorage(ctx, plain, etcdKey)
	if err != nil {
		t.Fatalf("TransformToStorage: %v", err)
	}
	if !bytes.HasPrefix(stored, []byte("k8s:enc:kms:v1:ourv1plugin:")) || bytes.Contains(stored, plain) {
		t.Fatalf("stored value %q", stored[:min(len(stored), 40)])
	}
	got, stale, err := tr.TransformFromStorage(ctx, stored, etcdKey)
	if err != nil || stale || !bytes.Equal(got, plain) {
		t.Fatalf("TransformFromStorage = %q, stale %v, %v", got, stale, err)
	}
	if _, _, err := tr.TransformFromStorage(ctx, stored, value.DefaultContext("/registry/secrets/default/s2")); err == nil {
		t.Fatal("value read under another etcd key")
	}
	// The v1 probe (an Encrypt and a Decrypt of its own) passes.
	for _, hc := range loaded.HealthChecks {
		if err := hc.Check(httptest.NewRequest("GET", "/readyz", nil)); err != nil {
			t.Fatalf("apiserver health check %s: %v", hc.Name(), err)
		}
	}
}

// Both APIs share one envelope and one set of keys: what one encrypts, the other decrypts.
func TestV1beta1AndV2ShareTheEnvelope(t *testing.T) {
	p := startPlugin(t)
	v1 := dialV1(t, p.socket)
	c := ctx(t)

	ver, err := v1.Version(c, &kmsv1.VersionRequest{Version: "v1beta1"})
	if err != nil || ver.Version != "v1beta1" || ver.RuntimeName != "kms-plugin" {
		t.Fatalf("Version = %+v, %v", ver, err)
	}
	_, err = v1.Version(c, &kmsv1.VersionRequest{Version: "v9"})
	wantCode(t, err, codes.InvalidArgument)

	seed := bytes.Repeat([]byte{7}, 32)
	enc1, err := v1.Encrypt(c, &kmsv1.EncryptRequest{Version: "v1beta1", Plain: seed})
	if err != nil {
		t.Fatal(err)
	}
	dec2, err := p.client.Decrypt(c, &kmsapi.DecryptRequest{Ciphertext: enc1.Cipher})
	if err != nil || !bytes.Equal(dec2.Plaintext, seed) {
		t.Fatalf("v2 Decrypt of a v1beta1 ciphertext: %v", err)
	}
	enc2, err := p.client.Encrypt(c, &kmsapi.EncryptRequest{Plaintext: seed})
	if err != nil {
		t.Fatal(err)
	}
	dec1, err := v1.Decrypt(c, &kmsv1.DecryptRequest{Version: "v1beta1", Cipher: enc2.Ciphertext})
	if err != nil || !bytes.Equal(dec1.Plain, seed) {
		t.Fatalf("v1beta1 Decrypt of a v2 ciphertext: %v", err)
	}

	// Same error codes as v2.
	_, err = v1.Encrypt(c, &kmsv1.EncryptRequest{})
	wantCode(t, err, codes.InvalidArgument)
	_, err = v1.Decrypt(c, &kmsv1.DecryptRequest{Cipher: []byte("not ours")})
	wantCode(t, err, codes.InvalidArgument)
	p.kek.set(fmt.Errorf("vault sealed: %w", dek.ErrUnavailable), 0)
	_, err = v1.Decrypt(c, &kmsv1.DecryptRequest{Cipher: enc2.Ciphertext})
	wantCode(t, err, codes.Unavailable)
}

func dialV1(t *testing.T, socket string) kmsv1.KeyManagementServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kmsv1.NewKeyManagementServiceClient(conn)
}

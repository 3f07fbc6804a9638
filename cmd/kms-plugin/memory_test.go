package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

// vaultPlugin serves the vault backend in process against a real file-storage Vault, with a
// short check interval and the given extra flags.
func vaultPlugin(t *testing.T, v *vaultd.Vault, token string, extra ...string) *servedPlugin {
	t.Helper()
	tokenFile := filepath.Join(plugintest.ShortTempDir(t), "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return serveInProcess(t, append([]string{"--backend", "vault", "--vault-addr", v.Addr, "--vault-transit-key", "kek",
		"--vault-token-file", tokenFile, "--check-interval", "100ms", "--timeout", "1s"}, extra...)...)
}

func vaultWithKey(t *testing.T) (*vaultd.Vault, string) {
	t.Helper()
	v := vaultd.StartVaultFile(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "kek")
	v.WritePolicy(t, "kms", vaultd.TransitPolicy("transit", "kek"))
	return v, v.CreateToken(t, vaultd.TokenOptions{Policies: []string{"kms"}, TTL: "1h", Renewable: true})
}

// Vault stopped: within the grace the plugin keeps Status healthy with its key id, encrypts
// with its local KEK and decrypts from its cache, and says so in /readyz and the metrics;
// past the grace it stops, and says why; Vault back, everything written during the outage reads.
func TestServingFromMemoryThroughAVaultOutage(t *testing.T) {
	v, token := vaultWithKey(t)
	const grace = 6 * time.Second
	p := vaultPlugin(t, v, token, "--vault-memory-grace", grace.String())
	client := kmsapi.NewKeyManagementServiceClient(p.conn)
	health := healthpb.NewHealthClient(p.conn)
	ctx := t.Context()
	before, err := client.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || before.Healthz != "ok" {
		t.Fatalf("Status: %v, %v", before, err)
	}
	enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("seed written before")})
	if err != nil {
		t.Fatal(err)
	}
	if enc.Ciphertext[0] != 2 {
		t.Fatalf("envelope format %d: local KEK mode (2) is the vault backend's default", enc.Ciphertext[0])
	}

	v.Stop(t)
	stopped := time.Now()
	run.Eventually(t, 10*time.Second, "serving from memory", func(context.Context) error {
		_, text := p.get(t, "/metrics")
		if got, _ := metric(text, `kms_plugin_serving_from_memory{backend="vault"}`); got != 1 {
			return fmt.Errorf("kms_plugin_serving_from_memory %v", got)
		}
		return nil
	})
	st, err := client.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st.Healthz != "ok" || st.KeyId != before.KeyId {
		t.Fatalf("Status during the outage: %v, %v; want healthz ok and the same key id", st, err)
	}
	if code, body := p.get(t, "/readyz"); code != 200 || !strings.Contains(body, "serving from memory") {
		t.Fatalf("/readyz during the outage: %d %q", code, body)
	}
	if h, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health during the outage: %v, %v", h, err)
	}
	during, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("seed written during")})
	if err != nil || during.KeyId != before.KeyId {
		t.Fatalf("Encrypt during the outage: %v, %v", during, err)
	}
	for _, c := range [][]byte{enc.Ciphertext, during.Ciphertext} {
		if _, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: c, KeyId: before.KeyId}); err != nil {
			t.Fatalf("Decrypt during the outage: %v", err)
		}
	}
	_, text := p.get(t, "/metrics")
	wantMetric(t, text, `kms_plugin_memory_grace_remaining_seconds{backend="vault"}`, func(v float64) bool { return v > 0 && v <= grace.Seconds() })
	if !strings.Contains(p.log.String(), "SERVING FROM MEMORY") {
		t.Errorf("the log does not say the plugin serves from memory:\n%s", p.log)
	}

	// Past the grace: nothing from memory, and every probe says why.
	time.Sleep(time.Until(stopped.Add(grace)))
	run.Eventually(t, 10*time.Second, "not ready past the grace", func(context.Context) error {
		if code, body := p.get(t, "/readyz"); code != 503 {
			return fmt.Errorf("/readyz %d %q", code, body)
		}
		return nil
	})
	if st, err := client.Status(ctx, &kmsapi.StatusRequest{}); err != nil || st.Healthz == "ok" || st.KeyId != before.KeyId {
		t.Fatalf("Status past the grace: %v, %v; want unhealthy with the same key id", st, err)
	}
	if _, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("x")}); grpcstatus.Code(err) != codes.Unavailable {
		t.Fatalf("Encrypt past the grace: %v, want Unavailable", err)
	}
	if _, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext}); grpcstatus.Code(err) != codes.Unavailable {
		t.Fatalf("Decrypt past the grace: %v, want Unavailable", err)
	}

	// Vault back: what was written during the outage reads, through a fresh plugin too.
	v.Start(t)
	v.Unseal(t)
	run.Eventually(t, 30*time.Second, "ready after Vault is back", func(context.Context) error {
		if code, body := p.get(t, "/readyz"); code != 200 || strings.Contains(body, "memory") {
			return fmt.Errorf("/readyz %d %q", code, body)
		}
		return nil
	})
	fresh := vaultPlugin(t, v, token)
	for _, c := range [][]byte{enc.Ciphertext, during.Ciphertext} {
		if _, err := kmsapi.NewKeyManagementServiceClient(fresh.conn).Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: c}); err != nil {
			t.Fatalf("a fresh plugin after the outage: %v", err)
		}
	}
}

// When Vault answers again, what it refuses stops being served from memory within one check:
// a retired key version, then a revoked token.
func TestVaultRefusalsEndServingFromMemory(t *testing.T) {
	v, token := vaultWithKey(t)
	p := vaultPlugin(t, v, token)
	client := kmsapi.NewKeyManagementServiceClient(p.conn)
	ctx := t.Context()
	old, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("seed under v1")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: old.Ciphertext}); err != nil {
		t.Fatal(err) // now in the cache
	}
	v.RotateKey(t, "transit", "kek")
	run.Eventually(t, 20*time.Second, "the rotation adopted", func(ctx context.Context) error {
		st, err := client.Status(ctx, &kmsapi.StatusRequest{})
		if err != nil || st.KeyId == old.KeyId {
			return fmt.Errorf("Status %v, %v", st, err)
		}
		return nil
	})
	v.SetMinDecryptionVersion(t, "transit", "kek", 2)
	run.Eventually(t, 10*time.Second, "v1 retired, also in memory", func(ctx context.Context) error {
		if _, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: old.Ciphertext}); grpcstatus.Code(err) != codes.FailedPrecondition {
			return fmt.Errorf("Decrypt under the retired version: %v", err)
		}
		return nil
	})

	current, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("seed under v2")})
	if err != nil {
		t.Fatal(err)
	}
	v.RevokeToken(t, token)
	run.Eventually(t, 10*time.Second, "a revoked token ends serving from memory", func(ctx context.Context) error {
		if _, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: current.Ciphertext}); grpcstatus.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("Decrypt with a revoked token: %v", err)
		}
		if _, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("x")}); err == nil {
			return fmt.Errorf("Encrypt with a revoked token succeeded")
		}
		return nil
	})
}

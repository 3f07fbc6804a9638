package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// tokenPlugin starts a plugin on Vault's transit key with a token file holding token, with
// vaultPluginArgs' short intervals; more flags follow them, and win.
func tokenPlugin(t *testing.T, v *harness.Vault, key, token string, more ...string) *harness.Plugin {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return harness.StartPlugin(t, append(vaultPluginArgs(v.Addr, "transit", key, tokenFile), more...)...)
}

// transitVault is a dev Vault with transit key key, its least-privilege policy (named after
// the key) and a token with that policy and Vault's default one, as an AppRole login gives.
func transitVault(t *testing.T, key string) (*harness.Vault, string) {
	t.Helper()
	v := harness.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", key)
	v.WritePolicy(t, key, harness.TransitPolicy("transit", key))
	return v, v.CreateToken(t, harness.TokenOptions{Policies: []string{key, "default"}, TTL: "1h", Renewable: true})
}

// encryptDecrypt makes the plugin hold a DEK seed in its cache and a local KEK, as serving
// an apiserver does, and returns the Encrypt's answer.
func encryptDecrypt(t *testing.T, p *harness.Plugin) *kmsapi.EncryptResponse {
	t.Helper()
	ctx := t.Context()
	enc, err := p.Client().Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("seed-0123456789-0123456789-01234")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Client().Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); err != nil {
		t.Fatal(err)
	}
	return enc
}

// servesNothingFromMemory checks, for a few seconds of checks, that Status is not ok and that
// Encrypt and the Decrypt of enc fail: nothing comes from the DEK cache or the local KEK.
func servesNothingFromMemory(t *testing.T, p *harness.Plugin, enc *kmsapi.EncryptResponse, why string) {
	t.Helper()
	ctx := t.Context()
	for range 5 {
		st, err := p.Status(ctx)
		if err == nil && st.Healthz == "ok" {
			t.Fatalf("%s: Status %v; want unhealthy", why, st)
		}
		if _, err := p.Client().Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("new seed")}); err == nil {
			t.Fatalf("%s: Encrypt succeeded", why)
		}
		if _, err := p.Client().Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); err == nil {
			t.Fatalf("%s: Decrypt of a cached seed succeeded", why)
		}
		time.Sleep(time.Second)
	}
}

// waitUnhealthy waits until Status fails with code, or with codes.OK until it answers with a
// healthz that is not ok.
func waitUnhealthy(t *testing.T, p *harness.Plugin, code codes.Code) {
	t.Helper()
	harness.Eventually(t, 20*time.Second, "Status reporting the refusal", func(ctx context.Context) error {
		st, err := p.Status(ctx)
		switch {
		case code != codes.OK && status.Code(err) != code:
			return fmt.Errorf("Status %v, %v; want it to fail with %s", st, err, code)
		case code != codes.OK:
			return nil
		case err != nil:
			return err
		case st.Healthz == "ok":
			return errors.New("healthz ok")
		}
		return nil
	})
}

// Vault says no, then becomes unreachable: the grace does not re-open. Vault said no, so
// nothing is served from memory until it says yes again (issue 17, item 1). The "no" is a
// revoked token first (seen within a check), then a policy cut, whose check keeps answering
// until Vault stops: a revoked token's re-logins back off, and would hide the outage.
func TestRefusalThenOutageServesNothingFromMemory(t *testing.T) {
	t.Parallel()
	v, revoked := transitVault(t, "refusal")
	p := tokenPlugin(t, v, "refusal", revoked)
	enc := encryptDecrypt(t, p)
	v.RevokeToken(t, revoked)
	waitUnhealthy(t, p, codes.OK)
	servesNothingFromMemory(t, p, enc, "token revoked")

	token := v.CreateToken(t, harness.TokenOptions{Policies: []string{"refusal", "default"}, TTL: "1h", Renewable: true})
	p = tokenPlugin(t, v, "refusal", token, "--vault-capabilities-interval=1s")
	enc = encryptDecrypt(t, p)
	v.WritePolicy(t, "refusal", `path "transit/keys/refusal" { capabilities = ["read"] }`)
	waitUnhealthy(t, p, codes.OK)
	v.Stop(t)
	harness.Eventually(t, 20*time.Second, "the plugin seeing the outage", func(context.Context) error {
		if !p.LogContains("backend unhealthy after refusing") {
			return errors.New("not yet")
		}
		return nil
	})
	servesNothingFromMemory(t, p, enc, "Vault unreachable after refusing")
	if p.LogContains("SERVING FROM MEMORY") {
		t.Fatal("the plugin logged SERVING FROM MEMORY after Vault refused")
	}
}

// A policy cut to "read" on the key, with the token still valid, ends serving from memory
// within --vault-capabilities-interval plus a check, although every key read still works
// (issue 17, item 2).
func TestPolicyCutEndsServingFromMemory(t *testing.T) {
	t.Parallel()
	v, token := transitVault(t, "cut")
	// Proofs every hour: only the capabilities check can notice the cut.
	p := tokenPlugin(t, v, "cut", token, "--vault-capabilities-interval=3s", "--proof-interval=1h")
	enc := encryptDecrypt(t, p)

	v.WritePolicy(t, "cut", `path "transit/keys/cut" { capabilities = ["read"] }`)
	start := time.Now()
	waitUnhealthy(t, p, codes.OK)
	t.Logf("policy cut noticed after %s (capabilities interval 3s, checks every 1s)", time.Since(start).Round(100*time.Millisecond))
	servesNothingFromMemory(t, p, enc, "policy cut to read")
	if !p.LogContains("no longer grant") {
		t.Fatal("the log does not say which capability the policy no longer grants")
	}

	// The policy restored: Vault says yes again, and everything works.
	v.WritePolicy(t, "cut", harness.TransitPolicy("transit", "cut"))
	harness.Eventually(t, 30*time.Second, "healthy again", func(ctx context.Context) error {
		st, err := p.Status(ctx)
		if err != nil || st.Healthz != "ok" {
			return fmt.Errorf("Status %v, %v", st, err)
		}
		_, err = p.Client().Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
		return err
	})
}

// A deleted transit key makes Status fail within a check (so that the apiserver's write DEK
// expires), and one recreated under the same name is adopted at the first check that sees it:
// no Encrypt writes under the old key id after Status moved, and what is written reads back
// in a fresh plugin (issue 17, item 3).
func TestDeletedAndRecreatedKey(t *testing.T) {
	t.Parallel()
	v, token := transitVault(t, "gone")
	p := tokenPlugin(t, v, "gone", token)
	old := encryptDecrypt(t, p)

	v.DeleteKey(t, "transit", "gone")
	waitUnhealthy(t, p, codes.FailedPrecondition)
	servesNothingFromMemory(t, p, old, "key deleted")

	v.CreateKey(t, "transit", "gone")
	var newID string
	harness.Eventually(t, 20*time.Second, "the recreated key adopted", func(ctx context.Context) error {
		st, err := p.Status(ctx)
		if err != nil {
			return err
		}
		if st.KeyId == old.KeyId || st.Healthz != "ok" {
			return fmt.Errorf("Status %v", st)
		}
		newID = st.KeyId
		return nil
	})
	var written []*kmsapi.EncryptResponse
	for range 5 {
		enc, err := p.Client().Encrypt(t.Context(), &kmsapi.EncryptRequest{Plaintext: []byte("after the recreation")})
		if err != nil {
			t.Fatal(err)
		}
		if enc.KeyId != newID {
			t.Fatalf("Encrypt after Status moved to %s answered key id %s", newID, enc.KeyId)
		}
		written = append(written, enc)
	}
	fresh := tokenPlugin(t, v, "gone", token)
	for _, enc := range written {
		got, err := fresh.Client().Decrypt(t.Context(), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
		if err != nil || !bytes.Equal(got.Plaintext, []byte("after the recreation")) {
			t.Fatalf("a fresh plugin reading what was written after the recreation: %v", err)
		}
	}
}

package policy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/backends/vault/policy"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/doctor"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

func TestHCL(t *testing.T) {
	hcl, err := policy.HCL(policy.Options{Mount: "/kv-transit/", Key: "k8s", Namespace: "team-a/", Name: "kms"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"vault policy write -namespace=team-a kms policy.hcl",
		"path \"kv-transit/encrypt/k8s\" {\n  capabilities = [\"update\"]\n}",
		"path \"kv-transit/decrypt/k8s\" {\n  capabilities = [\"update\"]\n}",
		"path \"kv-transit/keys/k8s\" {\n  capabilities = [\"read\"]\n}",
		"path \"auth/token/lookup-self\" {\n  capabilities = [\"read\"]\n}",
		"path \"auth/token/renew-self\" {\n  capabilities = [\"update\"]\n}",
		"path \"sys/capabilities-self\" {\n  capabilities = [\"update\"]\n}",
	} {
		if !strings.Contains(hcl, want) {
			t.Errorf("policy lacks %q:\n%s", want, hcl)
		}
	}
	for _, line := range strings.Split(hcl, "\n") {
		if strings.HasPrefix(line, "path ") && strings.ContainsAny(line, "*+") ||
			strings.Contains(line, "capabilities") && strings.Contains(line, `"create"`) {
			t.Errorf("least privilege never grants create or a wildcard path: %s", line)
		}
	}
	for _, bad := range []policy.Options{{Key: ""}, {Key: "a/b"}, {Key: "*"}, {Key: "k", Mount: "transit\"\n"}, {Key: "k", Namespace: "a+"}} {
		if _, err := policy.HCL(bad); err == nil {
			t.Errorf("HCL(%+v) accepted", bad)
		}
	}
}

// The printed policy is enough for the plugin's real Vault backend to do everything it does:
// check the key, wrap and unwrap, adopt a rotation, unwrap under the old version, renew its
// token; and every rule in it is needed: without any one, something fails.
func TestPolicyInRealVault(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")

	exercise := func(t *testing.T, key string, without string) (step string, err error) {
		v.Write(t, "transit/keys/"+key, nil)
		hcl, herr := policy.HCL(policy.Options{Key: key})
		if herr != nil {
			t.Fatal(herr)
		}
		if without != "" {
			hcl = vaultd.WithoutPolicyPath(t, hcl, without)
		}
		tokenFile := v.PolicyTokenFile(t, key, hcl)
		fake := clock.NewFake(time.Now())
		cfg := vault.Config{Address: v.Addr, Key: key, Auth: &vault.TokenFile{Path: tokenFile}, Clock: fake}
		kek, oerr := vault.Open(cfg)
		if oerr != nil {
			t.Fatal(oerr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		if err := kek.Check(ctx); err != nil {
			return "check", err
		}
		v1 := kek.CurrentID()
		seed := bytes.Repeat([]byte{7}, 32)
		w1, err := kek.Wrap(ctx, v1, seed)
		if err != nil {
			return "wrap", err
		}
		if got, err := kek.Unwrap(ctx, v1, w1); err != nil || !bytes.Equal(got, seed) {
			return "unwrap", fmt.Errorf("%w (plaintext equal: %v)", err, bytes.Equal(got, seed))
		}
		v.RotateKey(t, "transit", key)
		for range 2 { // adopted once two checks agree
			if err := kek.Check(ctx); err != nil {
				return "check after rotation", err
			}
		}
		v2 := kek.CurrentID()
		if v2 == v1 || !strings.HasSuffix(v2, ":v2") {
			return "rotation", fmt.Errorf("key id %s after rotation from %s", v2, v1)
		}
		if _, err := kek.Wrap(ctx, v2, seed); err != nil {
			return "wrap after rotation", err
		}
		if got, err := kek.Unwrap(ctx, v1, w1); err != nil || !bytes.Equal(got, seed) {
			return "unwrap old version", fmt.Errorf("%w", err)
		}
		// Two thirds of the token's TTL later, a check renews it.
		fake.Advance(45 * time.Minute)
		if err := kek.Check(ctx); err != nil {
			return "check at renewal", err
		}
		if tok, err := os.ReadFile(tokenFile); err != nil || !renewed(t, v, string(tok)) {
			return "renew", errors.New("the token was not renewed")
		}
		return "", nil
	}

	t.Run("the whole policy", func(t *testing.T) {
		t.Parallel()
		if step, err := exercise(t, "whole", ""); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	})
	failsAt := map[string]string{
		// The check asks sys/capabilities-self whether the token may encrypt and decrypt.
		"transit/encrypt/%s":     "check",
		"transit/decrypt/%s":     "check",
		"transit/keys/%s":        "check",
		"auth/token/lookup-self": "check", // a supplied token is looked up at login
		"auth/token/renew-self":  "renew",
	}
	for i, rule := range policy.Required("transit", "KEY") {
		t.Run("without "+rule.Path, func(t *testing.T) {
			t.Parallel()
			key := fmt.Sprintf("without-%d", i)
			path := strings.Replace(rule.Path, "KEY", key, 1)
			if rule.DoctorOnly {
				// The server never uses it; doctor cannot check the token without it.
				exerciseDoctor(t, v, key, path)
				return
			}
			want, ok := failsAt[strings.Replace(rule.Path, "KEY", "%s", 1)]
			if !ok {
				t.Fatalf("no expectation for %s", rule.Path)
			}
			step, err := exercise(t, key, path)
			if step != want {
				t.Fatalf("without %s: want a failure at %q, got %q: %v", path, want, step, err)
			}
			if want != "renew" && !errors.Is(err, dek.ErrDenied) {
				t.Errorf("want a denial, got %v", err)
			}
			t.Logf("without %s: %s fails: %v", path, step, err)
		})
	}
}

func exerciseDoctor(t *testing.T, v *vaultd.Vault, key, path string) {
	v.Write(t, "transit/keys/"+key, nil)
	hcl, err := policy.HCL(policy.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := v.PolicyTokenFile(t, key, vaultd.WithoutPolicyPath(t, hcl, path))
	rep := doctor.Report(doctor.Vault(context.Background(), doctor.VaultOptions{
		Config: vault.Config{Address: v.Addr, Key: key, Auth: &vault.TokenFile{Path: tokenFile}}}))
	for _, r := range rep.Find("vault capabilities") {
		if r.Status == doctor.Fail && strings.Contains(r.String(), path) {
			return
		}
	}
	t.Errorf("without %s doctor does not fail its capabilities check: %v", path, rep)
}

// renewed reports whether Vault has renewed the token since it was created.
func renewed(t *testing.T, v *vaultd.Vault, token string) bool {
	s, err := v.LookupToken(token)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := s.Data["last_renewal_time"].(json.Number)
	last, _ := n.Int64()
	return last > 0
}

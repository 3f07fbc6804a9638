package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

func TestServeVault(t *testing.T) {
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "kek")
	v.WritePolicy(t, "kms", vaultd.TransitPolicy("transit", "kek"))
	token := v.CreateToken(t, vaultd.TokenOptions{Policies: []string{"kms"}, TTL: "1h", Renewable: true})
	t.Setenv("VAULT_TOKEN", token)
	t.Setenv("VAULT_SKIP_VERIFY", "true") // ignored: only the documented variables count

	sock := plugintest.ShortTempDir(t) + "/kms.sock"
	_, log := runInProcess(t, "serve", "--listen", sock, "--backend", "vault",
		"--vault-addr", v.Addr, "--vault-transit-key", "kek", "--check-interval", "200ms",
		"--health-addr=") // no fixed HTTP port: other tests may hold it
	st := waitStatus(t, sock)
	if st.Healthz != "ok" || !regexp.MustCompile(`^vault:[0-9a-f]{16}:v1$`).MatchString(st.KeyId) {
		t.Fatalf("Status = %v", st)
	}
	client := plugintest.Client(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seed := bytes.Repeat([]byte{0x5a}, 32)
	enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "1"})
	if err != nil || enc.KeyId != st.KeyId {
		t.Fatalf("Encrypt = %v, %v", enc, err)
	}

	v.RotateKey(t, "transit", "kek")
	run.Eventually(t, 30*time.Second, "key id after rotation", func(ctx context.Context) error {
		st2, err := client.Status(ctx, &kmsapi.StatusRequest{})
		if err == nil && (st2.KeyId == st.KeyId || !strings.HasSuffix(st2.KeyId, ":v2")) {
			return os.ErrNotExist
		}
		return err
	})
	enc2, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "2"})
	if err != nil || !strings.HasSuffix(enc2.KeyId, ":v2") {
		t.Fatalf("Encrypt after rotation = %v, %v", enc2, err)
	}
	for _, e := range []*kmsapi.EncryptResponse{enc, enc2} {
		dec, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Uid: "3"})
		if err != nil || !bytes.Equal(dec.Plaintext, seed) {
			t.Fatalf("Decrypt of %s: %v", e.KeyId, err)
		}
	}
	if strings.Contains(log.String(), token) {
		t.Fatal("the token was logged")
	}
}

// Every --vault-* flag docs/vault.md shows exists.
func TestVaultDocFlagsExist(t *testing.T) {
	raw, err := os.ReadFile("../../docs/vault.md")
	if err != nil {
		t.Fatal(err)
	}
	fs := newServeCommand().Flags()
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`--(vault-[a-z0-9-]+)`).FindAllStringSubmatch(string(raw), -1) {
		if fs.Lookup(m[1]) == nil && !seen[m[1]] {
			t.Errorf("docs/vault.md names --%s, which serve does not have", m[1])
		}
		seen[m[1]] = true
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if strings.HasPrefix(f.Name, "vault-") && !seen[f.Name] {
			t.Errorf("docs/vault.md does not document --%s", f.Name)
		}
	})
}

// TestServeVaultCertAuth runs `serve --backend vault --vault-auth cert` with a combined
// certificate-and-key PEM file laid out like kubelet's kubelet-client-current.pem, against a
// real Vault serving HTTPS whose auth/cert method trusts the certificate's CA.
func TestServeVaultCertAuth(t *testing.T) {
	v := vaultd.StartVaultDevTLS(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "kek")
	v.WritePolicy(t, "kms", vaultd.TransitPolicy("transit", "kek"))
	dir := t.TempDir()
	pki := run.NewTestPKI(t, dir)
	ca, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	v.EnableAuth(t, "cert", "cert")
	v.Write(t, "auth/cert/certs/kms", map[string]any{"certificate": string(ca), "token_policies": "kms", "token_ttl": "1h"})
	var combined []byte
	for _, f := range []string{pki.ClientCert, pki.ClientKey} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		combined = append(combined, b...)
	}
	pemFile := dir + "/kubelet-client-current.pem"
	if err := os.WriteFile(pemFile, combined, 0o600); err != nil {
		t.Fatal(err)
	}

	sock := plugintest.ShortTempDir(t) + "/kms.sock"
	_, log := runInProcess(t, "serve", "--listen", sock, "--backend", "vault",
		"--vault-addr", v.Addr, "--vault-ca-file", v.CAFile, "--vault-transit-key", "kek",
		"--vault-auth", "cert", "--vault-cert-auth-pem", pemFile, "--vault-cert-auth-role", "kms", "--health-addr=")
	st := waitStatus(t, sock)
	if st.Healthz != "ok" || !strings.HasSuffix(st.KeyId, ":v1") {
		t.Fatalf("Status = %v\n%s", st, log.String())
	}
	client := plugintest.Client(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seed := bytes.Repeat([]byte{0x3c}, 32)
	enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "1"})
	if err != nil || enc.KeyId != st.KeyId {
		t.Fatalf("Encrypt = %v, %v", enc, err)
	}
	dec, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "2"})
	if err != nil || !bytes.Equal(dec.Plaintext, seed) {
		t.Fatalf("Decrypt: %v", err)
	}
	if !strings.Contains(log.String(), "method=cert") || strings.Contains(log.String(), "PRIVATE KEY") {
		t.Fatalf("log: want a cert login and no key material:\n%s", log.String())
	}
}

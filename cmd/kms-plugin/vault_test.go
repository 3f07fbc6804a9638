package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/integration/harness"
)

func parseVaultFlags(t *testing.T, args ...string) *vaultBackend {
	t.Helper()
	b := &vaultBackend{}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	b.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVaultConfigFromFlagsAndEnvironment(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	log := slog.New(slog.DiscardHandler)

	b := parseVaultFlags(t, "--vault-transit-key", "k")
	if _, err := b.config(getenv, log); err == nil || !strings.Contains(err.Error(), "--vault-addr") {
		t.Fatalf("no address: %v", err)
	}
	env["VAULT_ADDR"] = "https://env:8200"
	env["VAULT_NAMESPACE"] = "team"
	if _, err := b.config(getenv, log); err == nil || !strings.Contains(err.Error(), "VAULT_TOKEN") {
		t.Fatalf("no token: %v", err)
	}
	env["VAULT_TOKEN"] = "s.env"
	cfg, err := b.config(getenv, log)
	if err != nil || cfg.Address != "https://env:8200" || cfg.Namespace != "team" || cfg.Auth != (vault.StaticToken{Token: "s.env"}) || cfg.Mount != "transit" {
		t.Fatalf("from the environment: %+v, %v", cfg, err)
	}

	b = parseVaultFlags(t, "--vault-addr", "https://flag:8200", "--vault-namespace", "ns", "--vault-transit-key", "k",
		"--vault-transit-mount", "kms", "--vault-token-file", "/run/token")
	cfg, err = b.config(getenv, log)
	if err != nil || cfg.Address != "https://flag:8200" || cfg.Namespace != "ns" || cfg.Mount != "kms" {
		t.Fatalf("flags over the environment: %+v, %v", cfg, err)
	}
	if tf, ok := cfg.Auth.(*vault.TokenFile); !ok || tf.Path != "/run/token" {
		t.Fatalf("--vault-token-file: auth %#v", cfg.Auth)
	}

	b = parseVaultFlags(t, "--vault-transit-key", "k", "--vault-auth", "approle", "--vault-approle-role-id", "r", "--vault-approle-secret-id-file", "/s")
	if cfg, err := b.config(getenv, log); err != nil || cfg.Auth != (vault.AppRole{Mount: "approle", RoleID: "r", SecretIDFile: "/s"}) {
		t.Fatalf("approle: %#v, %v", cfg.Auth, err)
	}
	b = parseVaultFlags(t, "--vault-transit-key", "k", "--vault-auth", "kubernetes", "--vault-kubernetes-role", "kms")
	if cfg, err := b.config(getenv, log); err != nil || cfg.Auth != (vault.Kubernetes{Mount: "kubernetes", Role: "kms", JWTFile: vault.DefaultServiceAccountTokenFile}) {
		t.Fatalf("kubernetes: %#v, %v", cfg.Auth, err)
	}

	for _, bad := range [][]string{
		{"--vault-addr", "https://x"},
		{"--vault-transit-key", "k", "--vault-auth", "ldap"},
		{"--vault-transit-key", "k", "--vault-auth", "approle"},
		{"--vault-transit-key", "k", "--vault-auth", "approle", "--vault-approle-role-id", "r", "--vault-approle-role-id-file", "/r"},
		{"--vault-transit-key", "k", "--vault-auth", "kubernetes"},
	} {
		if _, err := parseVaultFlags(t, bad...).config(getenv, log); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
}

func TestVaultConfigAddressesAndNewAuthMethods(t *testing.T) {
	getenv := func(k string) string { return map[string]string{"VAULT_ADDR": "https://e1:8200, https://e2:8200"}[k] }
	log := slog.New(slog.DiscardHandler)

	b := parseVaultFlags(t, "--vault-addr", "https://a:8200", "--vault-addr", "https://b:8200,https://c:8200",
		"--vault-transit-key", "k", "--vault-auth", "cert", "--vault-cert-auth-pem", "/var/lib/kubelet/pki/kubelet-client-current.pem")
	cfg, err := b.config(getenv, log)
	if err != nil || cfg.Address != "https://a:8200" || strings.Join(cfg.FailoverAddresses, " ") != "https://b:8200 https://c:8200" {
		t.Fatalf("repeated and comma-separated --vault-addr: %q %q, %v", cfg.Address, cfg.FailoverAddresses, err)
	}
	if c, ok := cfg.Auth.(*vault.Cert); !ok || c.Mount != "cert" || c.PEMFile != vault.DefaultKubeletClientPEM || c.Role != "" {
		t.Fatalf("cert auth: %#v", cfg.Auth)
	}
	b = parseVaultFlags(t, "--vault-transit-key", "k", "--vault-auth", "cert", "--vault-cert-auth-cert", "/c", "--vault-cert-auth-key", "/k", "--vault-cert-auth-role", "kms")
	cfg, err = b.config(getenv, log)
	if err != nil || cfg.Address != "https://e1:8200" || len(cfg.FailoverAddresses) != 1 || cfg.FailoverAddresses[0] != "https://e2:8200" {
		t.Fatalf("list in VAULT_ADDR: %q %q, %v", cfg.Address, cfg.FailoverAddresses, err)
	}
	if c, ok := cfg.Auth.(*vault.Cert); !ok || c.CertFile != "/c" || c.KeyFile != "/k" || c.Role != "kms" {
		t.Fatalf("cert auth with two files: %#v", cfg.Auth)
	}
	b = parseVaultFlags(t, "--vault-transit-key", "k", "--vault-auth", "jwt", "--vault-jwt-role", "kms", "--vault-jwt-token-file", "/run/jwt", "--vault-jwt-mount", "oidc")
	if cfg, err := b.config(getenv, log); err != nil {
		t.Fatal(err)
	} else if j, ok := cfg.Auth.(*vault.JWT); !ok || j.Role != "kms" || j.TokenFile != "/run/jwt" || j.Mount != "oidc" {
		t.Fatalf("jwt auth: %#v", cfg.Auth)
	}
	for _, bad := range [][]string{
		{"--vault-transit-key", "k", "--vault-auth", "cert"},
		{"--vault-transit-key", "k", "--vault-auth", "cert", "--vault-cert-auth-pem", "/p", "--vault-cert-auth-cert", "/c", "--vault-cert-auth-key", "/k"},
		{"--vault-transit-key", "k", "--vault-auth", "cert", "--vault-cert-auth-cert", "/c"},
		{"--vault-transit-key", "k", "--vault-auth", "jwt"},
	} {
		if _, err := parseVaultFlags(t, bad...).config(getenv, log); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}

	var tuner monitorTuner = &vaultBackend{}
	if check, proof := tuner.monitorIntervals(); check != time.Minute || proof != 5*time.Minute {
		t.Fatalf("vault's default intervals %s, %s; want 1m, 5m", check, proof)
	}
}

func TestVaultSkipVerifyWarns(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	b := parseVaultFlags(t, "--vault-addr", "https://vault.example:8200", "--vault-transit-key", "k", "--vault-skip-verify")
	t.Setenv("VAULT_TOKEN", "s.x")
	if _, err := b.open(context.Background(), nil, log); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), "NOT verified") {
		t.Fatalf("--vault-skip-verify logged no warning:\n%s", buf.String())
	}
	if strings.Contains(buf.String(), "s.x") {
		t.Fatal("the token was logged")
	}
}

// TestServeVault runs `kms-plugin serve --backend vault` in process against a real Vault, with
// the token from VAULT_TOKEN, and drives it over its socket through a key rotation.
func TestServeVault(t *testing.T) {
	v := harness.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "kek")
	v.WritePolicy(t, "kms", harness.TransitPolicy("transit", "kek"))
	token := v.CreateToken(t, harness.TokenOptions{Policies: []string{"kms"}, TTL: "1h", Renewable: true})
	t.Setenv("VAULT_TOKEN", token)
	t.Setenv("VAULT_SKIP_VERIFY", "true") // ignored: only the documented variables count

	sock := shortDir(t) + "/kms.sock"
	_, log := runInProcess(t, "serve", "--listen", sock, "--backend", "vault",
		"--vault-addr", v.Addr, "--vault-transit-key", "kek", "--check-interval", "200ms",
		"--health-addr=") // no fixed HTTP port: other tests may hold it
	st := waitStatus(t, sock)
	if st.Healthz != "ok" || !regexp.MustCompile(`^vault:[0-9a-f]{16}:v1$`).MatchString(st.KeyId) {
		t.Fatalf("Status = %v", st)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := kmsapi.NewKeyManagementServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seed := bytes.Repeat([]byte{0x5a}, 32)
	enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "1"})
	if err != nil || enc.KeyId != st.KeyId {
		t.Fatalf("Encrypt = %v, %v", enc, err)
	}

	v.RotateKey(t, "transit", "kek")
	harness.Eventually(t, 30*time.Second, "key id after rotation", func(ctx context.Context) error {
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
	v := harness.StartVaultDevTLS(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "kek")
	v.WritePolicy(t, "kms", harness.TransitPolicy("transit", "kek"))
	dir := t.TempDir()
	pki := harness.NewTestPKI(t, dir)
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

	sock := shortDir(t) + "/kms.sock"
	_, log := runInProcess(t, "serve", "--listen", sock, "--backend", "vault",
		"--vault-addr", v.Addr, "--vault-ca-file", v.CAFile, "--vault-transit-key", "kek",
		"--vault-auth", "cert", "--vault-cert-auth-pem", pemFile, "--vault-cert-auth-role", "kms", "--health-addr=")
	st := waitStatus(t, sock)
	if st.Healthz != "ok" || !strings.HasSuffix(st.KeyId, ":v1") {
		t.Fatalf("Status = %v\n%s", st, log.String())
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := kmsapi.NewKeyManagementServiceClient(conn)
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

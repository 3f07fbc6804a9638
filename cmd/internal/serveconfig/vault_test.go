package serveconfig

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/backends/vault"
)

func parseVaultFlags(t *testing.T, args ...string) *Vault {
	t.Helper()
	b := &Vault{}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	b.AddFlags(fs)
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
	if _, err := b.Config(getenv, log); err == nil || !strings.Contains(err.Error(), "--vault-addr") {
		t.Fatalf("no address: %v", err)
	}
	env["VAULT_ADDR"] = "https://env:8200"
	env["VAULT_NAMESPACE"] = "team"
	if _, err := b.Config(getenv, log); err == nil || !strings.Contains(err.Error(), "VAULT_TOKEN") {
		t.Fatalf("no token: %v", err)
	}
	env["VAULT_TOKEN"] = "s.env"
	cfg, err := b.Config(getenv, log)
	if err != nil || cfg.Address != "https://env:8200" || cfg.Namespace != "team" || cfg.Auth != (vault.StaticToken{Token: "s.env"}) || cfg.Mount != "transit" {
		t.Fatalf("from the environment: %+v, %v", cfg, err)
	}

	b = parseVaultFlags(t, "--vault-addr", "https://flag:8200", "--vault-namespace", "ns", "--vault-transit-key", "k",
		"--vault-transit-mount", "kms", "--vault-token-file", "/run/token")
	cfg, err = b.Config(getenv, log)
	if err != nil || cfg.Address != "https://flag:8200" || cfg.Namespace != "ns" || cfg.Mount != "kms" {
		t.Fatalf("flags over the environment: %+v, %v", cfg, err)
	}
	if tf, ok := cfg.Auth.(*vault.TokenFile); !ok || tf.Path != "/run/token" {
		t.Fatalf("--vault-token-file: auth %#v", cfg.Auth)
	}

	b = parseVaultFlags(t, "--vault-transit-key", "k", "--vault-auth", "approle", "--vault-approle-role-id", "r", "--vault-approle-secret-id-file", "/s")
	if cfg, err := b.Config(getenv, log); err != nil || cfg.Auth != (vault.AppRole{Mount: "approle", RoleID: "r", SecretIDFile: "/s"}) {
		t.Fatalf("approle: %#v, %v", cfg.Auth, err)
	}
	b = parseVaultFlags(t, "--vault-transit-key", "k", "--vault-auth", "kubernetes", "--vault-kubernetes-role", "kms")
	if cfg, err := b.Config(getenv, log); err != nil || cfg.Auth != (vault.Kubernetes{Mount: "kubernetes", Role: "kms", JWTFile: vault.DefaultServiceAccountTokenFile}) {
		t.Fatalf("kubernetes: %#v, %v", cfg.Auth, err)
	}

	for _, bad := range [][]string{
		{"--vault-addr", "https://x"},
		{"--vault-transit-key", "k", "--vault-auth", "ldap"},
		{"--vault-transit-key", "k", "--vault-auth", "approle"},
		{"--vault-transit-key", "k", "--vault-auth", "approle", "--vault-approle-role-id", "r", "--vault-approle-role-id-file", "/r"},
		{"--vault-transit-key", "k", "--vault-auth", "kubernetes"},
	} {
		if _, err := parseVaultFlags(t, bad...).Config(getenv, log); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
}

func TestVaultConfigAddressesAndNewAuthMethods(t *testing.T) {
	getenv := func(k string) string { return map[string]string{"VAULT_ADDR": "https://e1:8200, https://e2:8200"}[k] }
	log := slog.New(slog.DiscardHandler)

	b := parseVaultFlags(t, "--vault-addr", "https://a:8200", "--vault-addr", "https://b:8200,https://c:8200",
		"--vault-transit-key", "k", "--vault-auth", "cert", "--vault-cert-auth-pem", "/var/lib/kubelet/pki/kubelet-client-current.pem")
	cfg, err := b.Config(getenv, log)
	if err != nil || cfg.Address != "https://a:8200" || strings.Join(cfg.FailoverAddresses, " ") != "https://b:8200 https://c:8200" {
		t.Fatalf("repeated and comma-separated --vault-addr: %q %q, %v", cfg.Address, cfg.FailoverAddresses, err)
	}
	if c, ok := cfg.Auth.(*vault.Cert); !ok || c.Mount != "cert" || c.PEMFile != vault.DefaultKubeletClientPEM || c.Role != "" {
		t.Fatalf("cert auth: %#v", cfg.Auth)
	}
	b = parseVaultFlags(t, "--vault-transit-key", "k", "--vault-auth", "cert", "--vault-cert-auth-cert", "/c", "--vault-cert-auth-key", "/k", "--vault-cert-auth-role", "kms")
	cfg, err = b.Config(getenv, log)
	if err != nil || cfg.Address != "https://e1:8200" || len(cfg.FailoverAddresses) != 1 || cfg.FailoverAddresses[0] != "https://e2:8200" {
		t.Fatalf("list in VAULT_ADDR: %q %q, %v", cfg.Address, cfg.FailoverAddresses, err)
	}
	if c, ok := cfg.Auth.(*vault.Cert); !ok || c.CertFile != "/c" || c.KeyFile != "/k" || c.Role != "kms" {
		t.Fatalf("cert auth with two files: %#v", cfg.Auth)
	}
	b = parseVaultFlags(t, "--vault-transit-key", "k", "--vault-auth", "jwt", "--vault-jwt-role", "kms", "--vault-jwt-token-file", "/run/jwt", "--vault-jwt-mount", "oidc")
	if cfg, err := b.Config(getenv, log); err != nil {
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
		if _, err := parseVaultFlags(t, bad...).Config(getenv, log); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
}

func TestVaultSkipVerifyWarns(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	b := parseVaultFlags(t, "--vault-addr", "https://vault.example:8200", "--vault-transit-key", "k", "--vault-skip-verify")
	t.Setenv("VAULT_TOKEN", "s.x")
	opened, err := b.Open(context.Background(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	// What serving it takes comes with it: bounded remote calls, memory, its own intervals.
	if !opened.Remote || opened.Memory == nil || opened.Memory.Grace != DefaultGrace ||
		opened.CheckInterval != time.Minute || opened.ProofInterval != 30*time.Minute {
		t.Fatalf("opened vault backend: %+v; want remote, memory with the default grace, 1m and 30m", opened)
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

// --vault-keep-memory's bad combinations fail at start with a message naming the flags.
func TestKeepMemoryFlags(t *testing.T) {
	getenv := func(k string) string {
		return map[string]string{"VAULT_ADDR": "https://v:8200", "VAULT_TOKEN": "s.x"}[k]
	}
	log := slog.New(slog.DiscardHandler)
	base := []string{"--vault-transit-key", "k"}
	t.Setenv("VAULT_ADDR", "https://v:8200") // Open reads its environment
	t.Setenv("VAULT_TOKEN", "s.x")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--vault-keep-memory", "disk"}, "want off, tmpfs or tpm"},
		{[]string{"--vault-keep-memory", "tmpfs", "--vault-memory-grace", "0"}, "--vault-memory-grace above 0"},
		{[]string{"--vault-keep-memory", "tpm", "--vault-tpm-pcrs", "7,99"}, "--vault-tpm-pcrs"},
		{[]string{"--vault-keep-memory", "tpm", "--vault-tpm-nv-index", "x"}, "--vault-tpm-nv-index"},
		{[]string{"--vault-keep-memory", "tmpfs", "--vault-tpm-pcrs", "7"}, "need --vault-keep-memory tpm"},
		{[]string{"--vault-keep-memory-dir", "/run/x"}, "needs --vault-keep-memory tmpfs or tpm"},
		{[]string{"--vault-keep-memory", "tmpfs", "--vault-keep-memory-dir", t.TempDir()}, "not on tmpfs"},
		{[]string{"--vault-keep-memory", "tpm", "--vault-tpm-device", "unix:///nonexistent/tpm.sock", "--vault-keep-memory-dir", t.TempDir()}, "opening the TPM"},
	} {
		b := &Vault{}
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		b.AddFlags(fs)
		if err := fs.Parse(append(base, tc.args...)); err != nil {
			t.Fatal(err)
		}
		_, err := b.Config(getenv, log)
		if err == nil {
			_, err = b.Open(context.Background(), fs, log)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want an error with %q", tc.args, err, tc.want)
		}
	}
	b := parseVaultFlags(t, "--vault-transit-key", "k", "--vault-keep-memory", "tpm", "--vault-tpm-pcrs", "")
	if _, err := b.Config(getenv, log); err != nil {
		t.Fatalf("--vault-tpm-pcrs \"\" (no PCR binding): %v", err)
	}
}

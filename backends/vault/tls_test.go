package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
)

// TestVaultTLS runs the backend against a real Vault serving HTTPS: the CA file, the server
// name and skip-verify do what they say, and an unverified certificate is a clear error.
func TestVaultTLS(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultDevTLS(t)
	v.EnableTransit(t, "transit")
	f := newFixture(t, v)
	ctx := context.Background()
	port := v.Addr[strings.LastIndex(v.Addr, ":")+1:]

	cases := []struct {
		name     string
		edit     func(*Config)
		wantCert bool // want a certificate verification error
	}{
		{"system roots only", func(c *Config) {}, true},
		{"CA file", func(c *Config) { c.CAFile = v.CAFile }, false},
		{"CA file, server name not in the certificate", func(c *Config) { c.CAFile = v.CAFile; c.TLSServerName = "vault.example" }, true},
		{"CA file, address by a name the certificate has", func(c *Config) {
			c.CAFile, c.Address = v.CAFile, "https://localhost:"+port
		}, false},
		{"CA file, IP address verified as localhost", func(c *Config) { c.CAFile = v.CAFile; c.TLSServerName = "localhost" }, false},
		{"skip verify", func(c *Config) { c.SkipVerify = true }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := f.config(t, StaticToken{f.token})
			c.edit(&cfg)
			k, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = k.Check(ctx)
			if c.wantCert {
				if !errors.Is(err, dek.ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
					t.Fatalf("Check = %v; want dek.ErrUnavailable naming the certificate", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			key := bytes.Repeat([]byte{8}, 32)
			w, err := k.Wrap(ctx, k.CurrentID(), key)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := k.Unwrap(ctx, k.CurrentID(), w); err != nil || !bytes.Equal(got, key) {
				t.Fatalf("Unwrap: %v", err)
			}
		})
	}

	t.Run("bad CA or client certificate files", func(t *testing.T) {
		for _, edit := range []func(*Config){
			func(c *Config) { c.CAFile = "/nonexistent/ca.pem" },
			func(c *Config) { c.CAFile = f.v.Process.LogPath }, // not PEM
			func(c *Config) { c.ClientCert, c.ClientKey = v.CAFile, v.CAFile },
			func(c *Config) { c.ClientCert = v.CAFile },
		} {
			cfg := f.config(t, StaticToken{f.token})
			edit(&cfg)
			if _, err := Open(cfg); err == nil {
				t.Errorf("Open(%s) succeeded", fmt.Sprintf("ca=%q cert=%q key=%q", cfg.CAFile, cfg.ClientCert, cfg.ClientKey))
			}
		}
	})
}

// TestVaultClientCertificate: against a Vault listener that requires a client certificate,
// the configured one is presented, and without it Vault cannot be reached.
func TestVaultClientCertificate(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultFileMTLS(t)
	v.EnableTransit(t, "transit")
	f := newFixture(t, v)
	ctx := context.Background()

	cfg := f.config(t, StaticToken{f.token})
	cfg.CAFile, cfg.ClientCert, cfg.ClientKey = v.CAFile, v.ClientCert, v.ClientKey
	k, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mustCheck(t, k)
	if _, err := k.Wrap(ctx, k.CurrentID(), bytes.Repeat([]byte{6}, 32)); err != nil {
		t.Fatal(err)
	}

	cfg.ClientCert, cfg.ClientKey = "", ""
	k, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The words vary with the moment the server's alert lands (TLS 1.3 sends it after the
	// client's handshake finished): "certificate required" or HTTP/2's "client conn could not
	// be established".
	if err := k.Check(ctx); !errors.Is(err, dek.ErrUnavailable) || !strings.Contains(err.Error(), "vault unreachable") {
		t.Fatalf("Check without the client certificate: %v; want dek.ErrUnavailable, vault unreachable", err)
	}
}

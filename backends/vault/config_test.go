package vault

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestEnvironmentIgnored: vault/api reads VAULT_* variables by itself; none may reach a request.
func TestEnvironmentIgnored(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "env-token")
	t.Setenv("VAULT_NAMESPACE", "env-ns")
	t.Setenv("VAULT_HEADERS", `{"X-Env-Header":"yes"}`)
	t.Setenv("VAULT_WRAP_TTL", "5m")
	t.Setenv("VAULT_SKIP_VERIFY", "true")
	t.Setenv("VAULT_MAX_RETRIES", "7")
	t.Setenv("VAULT_CLIENT_TIMEOUT", "1s")
	t.Setenv("HTTPS_PROXY", "http://127.0.0.1:1")
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:1")

	fv := &fakeVault{handler: func(path string, _ map[string]any, _ string) (int, string) {
		if path == "/v1/auth/token/lookup-self" {
			return 200, `{"data":{"ttl":0,"renewable":false}}`
		}
		return 200, `{"initialized":true,"sealed":false,"cluster_id":"c"}`
	}}
	srv := httptest.NewServer(fv)
	defer srv.Close()
	k, err := Open(Config{Address: srv.URL, Key: "k", Auth: StaticToken{"flag-token"}, Retry: RetryPolicy{Attempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	k.Check(context.Background()) // the key read fails on the fake; the requests are what matter
	if len(fv.paths()) == 0 {
		t.Fatal("no request reached the server (a proxy from the environment?)")
	}
	for _, r := range fv.requests {
		if tok := r.header.Get("X-Vault-Token"); tok == "env-token" {
			t.Errorf("%s carried VAULT_TOKEN", r.path)
		}
		for _, h := range []string{"X-Vault-Namespace", "X-Vault-Wrap-Ttl", "X-Env-Header"} {
			if r.header.Get(h) != "" {
				t.Errorf("%s carried %s from the environment", r.path, h)
			}
		}
	}
	if tok := fv.last("/v1/auth/token/lookup-self").header.Get("X-Vault-Token"); tok != "flag-token" {
		t.Errorf("lookup-self token %q, want the configured one", tok)
	}

	// A malformed variable stops the start with an error that names it, never silently.
	t.Run("malformed", func(t *testing.T) {
		t.Setenv("VAULT_MAX_RETRIES", "lots")
		_, err := Open(Config{Address: srv.URL, Key: "k", Auth: StaticToken{"x"}})
		if err == nil || !strings.Contains(err.Error(), "VAULT_* environment variable is malformed") {
			t.Fatalf("Open with a malformed VAULT_MAX_RETRIES: %v", err)
		}
	})

	// VAULT_SKIP_VERIFY must not disable certificate checks.
	tlsSrv := httptest.NewTLSServer(fv)
	defer tlsSrv.Close()
	k, err = Open(Config{Address: tlsSrv.URL, Key: "k", Auth: StaticToken{"flag-token"}, Retry: RetryPolicy{Attempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Check against an untrusted certificate: %v; want a certificate error", err)
	}
}

func TestCleartext(t *testing.T) {
	for addr, want := range map[string]bool{
		"http://127.0.0.1:8200": false, "http://localhost:8200": false, "http://[::1]:8200": false,
		"https://vault.example:8200": false, "http://vault.example:8200": true, "http://10.0.0.5:8200": true,
	} {
		if got := (&Config{Address: addr}).Cleartext(); got != want {
			t.Errorf("Cleartext(%s) = %v, want %v", addr, got, want)
		}
	}
}

// TestConnectionsReused: every call shares one HTTP client whose connections stay open.
func TestConnectionsReused(t *testing.T) {
	fv := &fakeVault{handler: func(path string, _ map[string]any, _ string) (int, string) {
		return 200, `{"data":{"ciphertext":"vault:v1:AAAA"}}` + "\n"
	}}
	srv := httptest.NewUnstartedServer(fv)
	var conns atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	client := testAPIClient(t, srv.URL)
	for i := 0; i < 20; i++ {
		if _, err := client.Logical().WriteWithContext(context.Background(), "transit/encrypt/k", map[string]any{"plaintext": "AAAA"}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Logical().ReadWithContext(context.Background(), "transit/keys/k"); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("40 sequential requests opened %d connections, want 1", n)
	}
}

// An address with credentials is refused, and the error does not repeat the password.
func TestAddressWithCredentialsIsRefused(t *testing.T) {
	for _, cfg := range []Config{
		{Address: "https://admin:hunter2@vault.example:8200", Key: "k", Auth: StaticToken{"x"}},
		{Address: "https://vault-a.example:8200", FailoverAddresses: []string{"https://admin:hunter2@vault-b.example:8200"}, Key: "k", Auth: StaticToken{"x"}},
	} {
		_, err := Open(cfg)
		if err == nil || !strings.Contains(err.Error(), "carries credentials") || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: err = %v", cfg.Address, err)
		}
	}
}

// TestNewClient: a client built from a Config alone fails over as the backend's does, and
// carries the namespace and token it is given and nothing from the environment.
func TestNewClient(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "env-token")
	t.Setenv("VAULT_NAMESPACE", "env-ns")
	fv := &fakeVault{handler: func(string, map[string]any, string) (int, string) { return 200, `{"data":{"ok":true}}` }}
	srv := httptest.NewServer(fv)
	defer srv.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close() // refuses connections from now on
	cfg := Config{Address: down.URL, FailoverAddresses: []string{srv.URL}}

	c, err := NewClient(cfg, "team-a", "hvs.given")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().ReadWithContext(context.Background(), "transit/keys/k"); err != nil {
		t.Fatalf("read with the first address down: %v; want the failover address to answer", err)
	}
	r := fv.last("/v1/transit/keys/k")
	if r.header.Get("X-Vault-Namespace") != "team-a" || r.header.Get("X-Vault-Token") != "hvs.given" {
		t.Errorf("request carried namespace %q and token %q; want team-a and hvs.given",
			r.header.Get("X-Vault-Namespace"), r.header.Get("X-Vault-Token"))
	}

	root, err := NewClient(cfg, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Sys().HealthWithContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h := fv.last("/v1/sys/health").header; h.Get("X-Vault-Namespace") != "" || h.Get("X-Vault-Token") != "" {
		t.Errorf("root-namespace client without a token sent namespace %q, token %q", h.Get("X-Vault-Namespace"), h.Get("X-Vault-Token"))
	}

	if _, err := NewClient(Config{Address: srv.URL, CAFile: filepath.Join(t.TempDir(), "missing.pem")}, "", ""); err == nil {
		t.Error("NewClient with a missing CA file succeeded")
	}
}

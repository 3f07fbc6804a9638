package vault

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// TestTokenLifecycle drives renewal, re-login and login backoff with a fake clock against a
// fake Vault; vault_test.go does the same against a real one.
func TestTokenLifecycle(t *testing.T) {
	var (
		mu         sync.Mutex
		loginFails bool
		renewTTL   = 60
		valid      = map[string]bool{}
		logins     int
	)
	fv := &fakeVault{handler: func(path string, _ map[string]any, token string) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		switch path {
		case "/v1/auth/approle/login":
			if loginFails {
				return 400, `{"errors":["invalid secret id"]}`
			}
			logins++
			tok := "hvs.t" + string(rune('0'+logins))
			valid[tok] = true
			return 200, `{"auth":{"client_token":"` + tok + `","lease_duration":60,"renewable":true}}`
		case "/v1/auth/token/renew-self":
			if !valid[token] {
				return 403, `{"errors":["permission denied"]}`
			}
			return 200, `{"auth":{"client_token":"` + token + `","lease_duration":` + strconv.Itoa(renewTTL) + `,"renewable":true}}`
		case "/v1/auth/token/lookup-self":
			if !valid[token] {
				return 403, `{"errors":["permission denied"]}`
			}
			return 200, `{"data":{"ttl":30,"renewable":true}}`
		}
		return 404, `{"errors":[]}`
	}}
	srv := httptest.NewServer(fv)
	defer srv.Close()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "secret"), "s")
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	k, err := Open(Config{Address: srv.URL, Key: "k", Clock: clk, Retry: RetryPolicy{Attempts: 1},
		Auth: AppRole{RoleID: "r", SecretIDFile: filepath.Join(dir, "secret")}})
	if err != nil {
		t.Fatal(err)
	}
	tk := k.tokens
	ctx := context.Background()
	count := func(path string) int {
		n := 0
		for _, p := range fv.paths() {
			if p == path {
				n++
			}
		}
		return n
	}

	// The phases run in order on one backend, each from the state the one before left: a
	// failed phase stops the test.
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("first login", func(t *testing.T) {
		if _, ok := k.TokenTTL(); ok {
			t.Fatal("TokenTTL before any login")
		}
		if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t1" {
			t.Fatalf("first ensure: token %q, %v", tk.token, err)
		}
	})

	step("no renewal before two thirds of the TTL", func(t *testing.T) {
		clk.Advance(39 * time.Second)
		if ttl, ok := k.TokenTTL(); !ok || ttl != 21*time.Second {
			t.Fatalf("TokenTTL 39 s into a 60 s token = %s, %v", ttl, ok)
		}
		tk.ensure(ctx)
		if n := count("/v1/auth/token/renew-self"); n != 0 {
			t.Fatalf("renewed %d times before two thirds of the TTL", n)
		}
	})

	step("renewal at two thirds of the TTL", func(t *testing.T) {
		clk.Advance(2 * time.Second)
		if err := tk.ensure(ctx); err != nil || count("/v1/auth/token/renew-self") != 1 || tk.token != "hvs.t1" {
			t.Fatalf("at 41s of 60: %v, %d renewals, token %q; want one renewal of the same token", err, count("/v1/auth/token/renew-self"), tk.token)
		}
	})

	// Renewal capped by the max TTL: log in afresh instead of running the token out.
	step("renewal capped by the max TTL logs in afresh", func(t *testing.T) {
		mu.Lock()
		renewTTL = 10
		mu.Unlock()
		clk.Advance(41 * time.Second)
		if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t2" {
			t.Fatalf("near max TTL: token %q, %v; want a new login", tk.token, err)
		}
	})

	// Revoked: a denial flags the token; the next ensure finds it invalid and logs in again.
	step("revoked token logs in again", func(t *testing.T) {
		mu.Lock()
		delete(valid, "hvs.t2")
		mu.Unlock()
		tk.denied.Store(true)
		if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t3" {
			t.Fatalf("after revocation: token %q, %v; want a new login", tk.token, err)
		}
	})

	// A denial with a valid token is the policy's: no login.
	step("denial with a valid token keeps it", func(t *testing.T) {
		tk.denied.Store(true)
		if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t3" {
			t.Fatalf("denial with a valid token: token %q, %v; want no login", tk.token, err)
		}
	})

	step("failing logins back off", func(t *testing.T) {
		mu.Lock()
		delete(valid, "hvs.t3")
		loginFails = true
		mu.Unlock()
		before := count("/v1/auth/approle/login")
		tk.denied.Store(true)
		if err := tk.ensure(ctx); !errors.Is(err, errBadRequest) {
			t.Fatalf("failed login: %v", err)
		}
		tk.denied.Store(true)
		if err := tk.ensure(ctx); err == nil || !strings.Contains(err.Error(), "next approle login attempt") {
			t.Fatalf("login retried at once: %v", err)
		}
		if got := count("/v1/auth/approle/login") - before; got != 1 {
			t.Fatalf("%d login attempts inside the backoff, want 1", got)
		}
	})

	step("login after the backoff", func(t *testing.T) {
		mu.Lock()
		loginFails = false
		mu.Unlock()
		clk.Advance(loginBackoffBase)
		tk.denied.Store(true)
		if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t4" {
			t.Fatalf("after the backoff: token %q, %v", tk.token, err)
		}
	})
}

// A login that could not reach Vault is retried within seconds however often it failed, so that
// Vault's return ends the outage quickly; a refused one (bad credentials) backs off to minutes.
func TestLoginBackoffByCause(t *testing.T) {
	for n := 1; n <= 40; n++ {
		if d := loginBackoff(n, true); d > loginUnreachableMax || d < loginBackoffBase/2 {
			t.Fatalf("unreachable, failure %d: wait %v, want within [%v, %v]", n, d, loginBackoffBase/2, loginUnreachableMax)
		}
	}
	if d := loginBackoff(20, false); d < loginBackoffMax/2 {
		t.Fatalf("refused, failure 20: wait %v, want at least %v", d, loginBackoffMax/2)
	}
}

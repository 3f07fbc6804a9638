package vault

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// Unit tests: pure logic, and the HTTP shape of requests against httptest servers. Every
// behaviour here is also exercised against a real Vault in vault_test.go.

func TestKeyIDFormatAndParse(t *testing.T) {
	kv := keyVersion{lineage: "0123456789abcdef", version: 12}
	if got := kv.String(); got != "vault:0123456789abcdef:v12" {
		t.Fatalf("String = %q", got)
	}
	back, err := parseKeyID(kv.String())
	if err != nil || back != kv {
		t.Fatalf("parseKeyID = %+v, %v", back, err)
	}
	for _, bad := range []string{
		"", "vault:", "vault:0123456789abcdef", "vault:0123456789abcdef:v", "vault:0123456789abcdef:v0",
		"vault:0123456789abcdef:v01", "vault:0123456789abcdef:v-1", "vault:0123456789abcdef:v1x",
		"vault:0123456789ABCDEF:v1", "vault:0123456789abcde:v1", "vault:0123456789abcdef0:v1",
		"vault:0123456789abcdef:v1234567890", "localaes:0123456789abcdef:v1", "vault:0123456789abcdef:1",
	} {
		if _, err := parseKeyID(bad); !errors.Is(err, dek.ErrUnknownKey) {
			t.Errorf("parseKeyID(%q): err = %v, want dek.ErrUnknownKey", bad, err)
		}
	}
}

func TestLineage(t *testing.T) {
	base := lineage("cluster", "", "transit", "k", 1700000000)
	if len(base) != 16 || strings.Trim(base, "0123456789abcdef") != "" {
		t.Fatalf("lineage %q: want 16 hex digits", base)
	}
	if again := lineage("cluster", "", "transit", "k", 1700000000); again != base {
		t.Fatal("lineage is not deterministic")
	}
	for name, other := range map[string]string{
		"cluster":   lineage("cluster2", "", "transit", "k", 1700000000),
		"namespace": lineage("cluster", "ns", "transit", "k", 1700000000),
		"mount":     lineage("cluster", "", "transit2", "k", 1700000000),
		"key":       lineage("cluster", "", "transit", "k2", 1700000000),
		"created":   lineage("cluster", "", "transit", "k", 1700000001),
		"shifted":   lineage("cluster", "", "transitk", "", 1700000000),
	} {
		if other == base {
			t.Errorf("changing the %s keeps the lineage", name)
		}
	}
}

func TestDebounce(t *testing.T) {
	v := func(n int) keyVersion { return keyVersion{lineage: "0123456789abcdef", version: n} }
	other := keyVersion{lineage: "fedcba9876543210", version: 1}
	var d debounce
	steps := []struct {
		seen    keyVersion
		miss    bool
		adopted keyVersion
	}{
		{seen: v(1), adopted: v(1)}, // first sight: adopted at once
		{seen: v(2), adopted: v(1)}, // new version seen once
		{seen: v(1), adopted: v(1)}, // a lagging node: candidate dropped
		{seen: v(2), adopted: v(1)},
		{miss: true, adopted: v(1)}, // a failed check breaks the run
		{seen: v(2), adopted: v(1)},
		{seen: v(2), adopted: v(2)}, // two in a row: adopted
		{seen: v(3), adopted: v(2)},
		{seen: v(4), adopted: v(2)}, // a different candidate starts over
		{seen: v(4), adopted: v(4)},
		{seen: other, adopted: v(4)}, // a new lineage is debounced too
		{seen: other, adopted: other},
	}
	for i, s := range steps {
		if s.miss {
			d.miss()
		} else {
			d.observe(s.seen)
		}
		if d.adopted != s.adopted {
			t.Fatalf("step %d: adopted %v, want %v", i, d.adopted, s.adopted)
		}
	}
}

// recordingClock fires every timer at once and records the waits asked for.
type recordingClock struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (c *recordingClock) Now() time.Time { return time.Now() }
func (c *recordingClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- time.Now()
	return ch
}

func TestRetryPolicy(t *testing.T) {
	policy := RetryPolicy{Attempts: 4, Base: 10 * time.Millisecond, Max: 25 * time.Millisecond}
	cases := []struct {
		name     string
		statuses []int // answers in order; the last repeats
		attempts int
		ok       bool
	}{
		{"success", []int{200}, 1, true},
		{"5xx then success", []int{503, 500, 200}, 3, true},
		{"429 retried", []int{429, 200}, 2, true},
		{"5xx bounded", []int{502}, 4, false},
		{"400 not retried", []int{400}, 1, false},
		{"403 not retried", []int{403}, 1, false},
		{"404 not retried", []int{404}, 1, true}, // vault/api reads a 404 as "nothing there"
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				i := int(n.Add(1)) - 1
				code := c.statuses[min(i, len(c.statuses)-1)]
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				if code == 200 {
					io.WriteString(w, `{"data":{"ok":true}}`)
				} else {
					io.WriteString(w, `{"errors":["nope"]}`)
				}
			}))
			defer srv.Close()
			client := testAPIClient(t, srv.URL)
			clk := &recordingClock{}
			err := policy.do(context.Background(), clk, func(ctx context.Context) error {
				_, err := client.Logical().ReadWithContext(ctx, "transit/keys/k")
				return err
			})
			if got := int(n.Load()); got != c.attempts {
				t.Errorf("attempts = %d, want %d", got, c.attempts)
			}
			if (err == nil) != c.ok {
				t.Errorf("err = %v, want ok=%v", err, c.ok)
			}
			for i, w := range clk.waits {
				d := min(policy.Base<<i, policy.Max)
				if w < d/2 || w > d {
					t.Errorf("wait %d = %s, want within [%s, %s]", i, w, d/2, d)
				}
			}
		})
	}

	t.Run("network errors retried", func(t *testing.T) {
		// A listener that accepts and at once closes every connection: no HTTP answer at all.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var conns atomic.Int32
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				conns.Add(1)
				c.Close()
			}
		}()
		client := testAPIClient(t, "http://"+l.Addr().String())
		err = policy.do(context.Background(), &recordingClock{}, func(ctx context.Context) error {
			_, err := client.Logical().ReadWithContext(ctx, "transit/keys/k")
			return err
		})
		if err == nil || conns.Load() < int32(policy.Attempts) {
			t.Fatalf("err = %v after %d connections; want an error after %d attempts", err, conns.Load(), policy.Attempts)
		}
		if !errors.Is(classify("read", err), dek.ErrUnavailable) {
			t.Fatalf("a network error classifies as %v, want dek.ErrUnavailable", classify("read", err))
		}
	})

	t.Run("never past the deadline", func(t *testing.T) {
		var n atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			w.WriteHeader(503)
		}))
		defer srv.Close()
		client := testAPIClient(t, srv.URL)
		slow := RetryPolicy{Attempts: 10, Base: time.Hour, Max: time.Hour}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		clk := &recordingClock{}
		err := slow.do(ctx, clk, func(ctx context.Context) error {
			_, err := client.Logical().ReadWithContext(ctx, "transit/keys/k")
			return err
		})
		if err == nil || n.Load() != 1 || len(clk.waits) != 0 {
			t.Fatalf("err = %v, attempts = %d, waits = %v: a wait past the deadline must not start", err, n.Load(), clk.waits)
		}
	})
}

func testAPIClient(t *testing.T, addr string) *api.Client {
	t.Helper()
	cfg := Config{Address: addr}
	cfg.setDefaults()
	transport, err := cfg.newTransport()
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := newAddresses(cfg.addresses(), cfg.Clock, cfg.Log)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cfg.newAPIClient(newHTTPClient(transport, addrs), "", "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClassify(t *testing.T) {
	cases := []struct {
		status int
		msg    string
		want   error
	}{
		{403, "permission denied", dek.ErrDenied},
		{503, "Vault is sealed", dek.ErrUnavailable},
		{500, "internal error", dek.ErrUnavailable},
		{429, "rate limited", dek.ErrUnavailable},
		{404, "", dek.ErrUnknownKey},
		{400, "ciphertext or signature version is disallowed by policy (too old)", dek.ErrUnknownKey},
		{400, "invalid ciphertext: version is too new", dek.ErrUnknownKey},
		{400, "requested version for encryption is higher than the latest key version", dek.ErrUnknownKey},
		{400, "encryption key not found", dek.ErrUnknownKey},
		{400, "cipher: message authentication failed", dek.ErrTampered},
		{400, "invalid ciphertext length", dek.ErrMalformed},
		{400, "something else", errBadRequest},
	}
	for _, c := range cases {
		err := classify("op", &api.ResponseError{StatusCode: c.status, Errors: []string{c.msg}})
		if !errors.Is(err, c.want) {
			t.Errorf("%d %q: %v, want %v", c.status, c.msg, err, c.want)
		}
	}
	multi := classify("op", &api.ResponseError{StatusCode: 403, Errors: []string{"2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"}})
	if !strings.HasSuffix(multi.Error(), ": permission denied; invalid token") {
		t.Errorf("multi-line Vault error flattened to %q", multi)
	}
	if err := classify("op", context.DeadlineExceeded); !errors.Is(err, dek.ErrUnavailable) {
		t.Errorf("deadline: %v", err)
	}
}

// fakeVault records requests and answers them with handler.
type fakeVault struct {
	mu       sync.Mutex
	requests []recorded
	handler  func(path string, body map[string]any, token string) (int, string)
}

type recorded struct {
	method, path string
	header       http.Header
	body         map[string]any
}

func (f *fakeVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if r.Body != nil {
		json.NewDecoder(r.Body).Decode(&body)
	}
	f.mu.Lock()
	f.requests = append(f.requests, recorded{r.Method, r.URL.Path, r.Header.Clone(), body})
	f.mu.Unlock()
	code, resp := f.handler(r.URL.Path, body, r.Header.Get("X-Vault-Token"))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	io.WriteString(w, resp)
}

func (f *fakeVault) paths() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.requests {
		out = append(out, r.path)
	}
	return out
}

func (f *fakeVault) last(path string) recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.requests) - 1; i >= 0; i-- {
		if f.requests[i].path == path {
			return f.requests[i]
		}
	}
	return recorded{}
}

const loginAnswer = `{"auth":{"client_token":"hvs.login","lease_duration":60,"renewable":true}}`

func TestLoginRequests(t *testing.T) {
	dir := t.TempDir()
	jwtFile, roleFile, secretFile := filepath.Join(dir, "jwt"), filepath.Join(dir, "role"), filepath.Join(dir, "secret")
	writeFile(t, jwtFile, "eyJ.jwt.one")
	writeFile(t, roleFile, "role-id-1")
	writeFile(t, secretFile, "secret-id-1")
	fv := &fakeVault{handler: func(string, map[string]any, string) (int, string) { return 200, loginAnswer }}
	srv := httptest.NewServer(fv)
	defer srv.Close()
	client := testAPIClient(t, srv.URL)
	ctx := context.Background()

	k8s := Kubernetes{Mount: "k8s-prod", Role: "kms", JWTFile: jwtFile}
	token, lease, err := k8s.Login(ctx, client)
	if err != nil || token != "hvs.login" || lease.LeaseDuration != 60 || !lease.Renewable {
		t.Fatalf("kubernetes Login = %q, %+v, %v", token, lease, err)
	}
	r := fv.last("/v1/auth/k8s-prod/login")
	if r.method != http.MethodPut && r.method != http.MethodPost {
		t.Errorf("kubernetes login method %s", r.method)
	}
	if r.body["role"] != "kms" || r.body["jwt"] != "eyJ.jwt.one" || len(r.body) != 2 {
		t.Errorf("kubernetes login body %v: want role and jwt only", r.body)
	}
	if r.header.Get("X-Vault-Token") != "" {
		t.Error("a login request carried a token")
	}
	writeFile(t, jwtFile, "eyJ.jwt.two") // kubelet rotated the projected token
	if _, _, err := k8s.Login(ctx, client); err != nil {
		t.Fatal(err)
	}
	if got := fv.last("/v1/auth/k8s-prod/login").body["jwt"]; got != "eyJ.jwt.two" {
		t.Errorf("second login sent jwt %v: the file must be re-read at every login", got)
	}

	ar := AppRole{RoleIDFile: roleFile, SecretIDFile: secretFile}
	if _, _, err := ar.Login(ctx, client); err != nil {
		t.Fatal(err)
	}
	if b := fv.last("/v1/auth/approle/login").body; b["role_id"] != "role-id-1" || b["secret_id"] != "secret-id-1" {
		t.Errorf("approle login body %v", b)
	}
	writeFile(t, secretFile, "secret-id-2")
	if _, _, err := ar.Login(ctx, client); err != nil {
		t.Fatal(err)
	}
	if b := fv.last("/v1/auth/approle/login").body; b["secret_id"] != "secret-id-2" {
		t.Errorf("approle second login sent secret id %v: the file must be re-read", b["secret_id"])
	}

	os.Remove(jwtFile)
	if _, _, err := k8s.Login(ctx, client); err == nil || strings.Contains(err.Error(), "eyJ") {
		t.Errorf("missing JWT file: err = %v", err)
	}
	if _, _, err := (Kubernetes{JWTFile: jwtFile}).Login(ctx, client); err == nil {
		t.Error("kubernetes login without a role succeeded")
	}
}

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

	if _, ok := k.TokenTTL(); ok {
		t.Fatal("TokenTTL before any login")
	}
	if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t1" {
		t.Fatalf("first ensure: token %q, %v", tk.token, err)
	}
	clk.Advance(39 * time.Second)
	if ttl, ok := k.TokenTTL(); !ok || ttl != 21*time.Second {
		t.Fatalf("TokenTTL 39 s into a 60 s token = %s, %v", ttl, ok)
	}
	tk.ensure(ctx)
	if n := count("/v1/auth/token/renew-self"); n != 0 {
		t.Fatalf("renewed %d times before two thirds of the TTL", n)
	}
	clk.Advance(2 * time.Second)
	if err := tk.ensure(ctx); err != nil || count("/v1/auth/token/renew-self") != 1 || tk.token != "hvs.t1" {
		t.Fatalf("at 41s of 60: %v, %d renewals, token %q; want one renewal of the same token", err, count("/v1/auth/token/renew-self"), tk.token)
	}

	// Renewal capped by the max TTL: log in afresh instead of running the token out.
	mu.Lock()
	renewTTL = 10
	mu.Unlock()
	clk.Advance(41 * time.Second)
	if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t2" {
		t.Fatalf("near max TTL: token %q, %v; want a new login", tk.token, err)
	}

	// Revoked: a denial flags the token; the next ensure finds it invalid and logs in again.
	mu.Lock()
	delete(valid, "hvs.t2")
	mu.Unlock()
	tk.denied.Store(true)
	if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t3" {
		t.Fatalf("after revocation: token %q, %v; want a new login", tk.token, err)
	}

	// A denial with a valid token is the policy's: no login.
	tk.denied.Store(true)
	if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t3" {
		t.Fatalf("denial with a valid token: token %q, %v; want no login", tk.token, err)
	}

	// Failing logins back off.
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
	mu.Lock()
	loginFails = false
	mu.Unlock()
	clk.Advance(loginBackoffBase)
	tk.denied.Store(true)
	if err := tk.ensure(ctx); err != nil || tk.token != "hvs.t4" {
		t.Fatalf("after the backoff: token %q, %v", tk.token, err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestUsable(t *testing.T) {
	k := &KEK{cfg: Config{Mount: "transit", Key: "k"}}
	if _, err := k.usable("vault:0123456789abcdef:v1"); !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("before any check: %v; want dek.ErrUnavailable", err)
	}
	lin := func(created int64) string { return lineage("c", "", "transit", "k", created) }
	k.observed = &keyState{minDecrypt: 2, created: map[int]int64{2: 200, 3: 300}, lineageOf: lin}
	k.observed.latest = keyVersion{lineage: lin(300), version: 3}
	cases := []struct {
		id   string
		want error
	}{
		{keyVersion{lin(200), 2}.String(), nil},
		{keyVersion{lin(300), 3}.String(), nil},
		{keyVersion{lin(100), 1}.String(), dek.ErrUnknownKey},  // below min_decryption_version
		{keyVersion{lin(300), 2}.String(), dek.ErrUnknownKey},  // another key's version 2
		{keyVersion{lin(400), 4}.String(), dek.ErrUnavailable}, // a rotation not seen yet
		{"vault:zz:v1", dek.ErrUnknownKey},
	}
	for _, c := range cases {
		_, err := k.usable(c.id)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("usable(%s) = %v, want %v", c.id, err, c.want)
		}
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

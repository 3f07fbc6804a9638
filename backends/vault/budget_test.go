package vault

import (
	"context"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// countingTransport counts the HTTP requests that reach Vault, by path.
type countingTransport struct {
	next http.RoundTripper
	mu   sync.Mutex
	n    map[string]int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n[r.Method+" "+r.URL.Path]++
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

func (c *countingTransport) reset() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}

func total(n map[string]int) int {
	s := 0
	for _, v := range n {
		s += v
	}
	return s
}

// TestVaultRequestBudget runs the plugin's Monitor loop with the backend's default intervals
// on a fake clock, against a real Vault, for a simulated hour beside an idle apiserver (Status
// is answered from memory, so it sends nothing): the backend sends Vault at most 72 requests,
// capabilities checks included. Then a rotation: Status shows it within two minutes of simulated time.
func TestVaultRequestBudget(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	f := newFixture(t, v)
	v.EnableAuth(t, "approle", "approle")
	roleID, secretID := v.AppRole(t, "approle", "kms", map[string]any{
		"token_policies": policiesOf(t, v, f.token), "token_ttl": "1h", "token_max_ttl": "24h",
	})
	secretFile := filepath.Join(t.TempDir(), "secret-id")
	writeFile(t, secretFile, secretID)

	counter := &countingTransport{n: map[string]int{}}
	clk := clock.NewFake(time.Now())
	cfg := f.config(t, AppRole{RoleID: roleID, SecretIDFile: secretFile})
	cfg.Clock = clk
	cfg.wrapTransport = func(next http.RoundTripper) http.RoundTripper { counter.next = next; return counter }
	k, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := plugin.NewMonitor(k, plugin.MonitorConfig{CheckInterval: DefaultCheckInterval, ProofInterval: DefaultProofInterval, Timeout: 10 * time.Second}, clk, testLogger(t))
	m.Refresh(context.Background())
	if id, err := m.State(); id == "" || err != nil {
		t.Fatalf("first refresh: %q, %v", id, err)
	}
	t.Logf("start-up requests: %v", counter.reset())

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// advance moves the fake clock a second at a time, each time once the loop waits again
	// (so every refresh that falls due has run before time moves on).
	var elapsed time.Duration
	advance := func(d time.Duration) {
		t.Helper()
		for end := elapsed + d; elapsed < end; elapsed += time.Second {
			waitIdle(t, clk)
			clk.Advance(time.Second)
		}
		waitIdle(t, clk)
	}

	const minutes = 60
	advance(minutes * time.Minute)
	n := counter.reset()
	if id, err := m.State(); err != nil {
		t.Fatalf("state after %d minutes: %q, %v", minutes, id, err)
	}
	paths := make([]string, 0, len(n))
	for p := range n {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	t.Logf("requests in %d simulated minutes: %d (%v)", minutes, total(n), n)
	if total(n) > minutes*72/60 {
		t.Fatalf("%d Vault requests in %d minutes at an idle apiserver (%v); want at most 72 an hour", total(n), minutes, n)
	}
	caps := 0
	for p, c := range n {
		if strings.HasSuffix(p, "/sys/capabilities-self") {
			caps += c
		}
	}
	// A policy cut must be seen within DefaultCapabilitiesInterval (plus a check): the budget
	// includes those requests.
	if want := minutes * int(time.Minute) / int(DefaultCapabilitiesInterval); caps < want {
		t.Fatalf("sys/capabilities-self asked %d times in %d minutes; want at least %d (every %s)", caps, minutes, want, DefaultCapabilitiesInterval)
	}
	if n["GET /v1/sys/health"] != 0 {
		t.Fatalf("sys/health asked %d times while all was well", n["GET /v1/sys/health"])
	}

	// A rotation just after a check is the slowest to show: the next check sees it, the one
	// after adopts it. Status must show it within two minutes.
	before, _ := m.State()
	v.RotateKey(t, f.mount, f.key)
	var took time.Duration
	for took = 0; took <= 3*time.Minute; took += time.Second {
		if id, _ := m.State(); id != before {
			break
		}
		advance(time.Second)
	}
	if id, err := m.State(); id == before || err != nil || took > 2*time.Minute {
		t.Fatalf("rotation shown after %s of simulated time (key id %q, %v); want within 2m", took, id, err)
	}
	t.Logf("rotation shown in Status after %s of simulated time", took)
}

// waitIdle waits until the Monitor loop is blocked on the fake clock again.
func waitIdle(t *testing.T, clk *clock.Fake) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for clk.Waiters() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the Monitor loop did not wait on the clock again")
		}
		time.Sleep(time.Millisecond)
	}
}

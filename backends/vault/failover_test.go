package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/integration/harness/run"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// TestVaultFailoverRaft runs the backend against a real 3-node Raft cluster on loopback, the
// set-up it meets in production: it is given the three addresses, the first node (active at
// first) is killed under load, and every request either succeeds or fails cleanly with
// Unavailable within its deadline; requests move to the other nodes (standbys forward to
// whichever becomes active), the key id never changes, and once the first node is back the
// backend returns to it.
func TestVaultFailoverRaft(t *testing.T) {
	t.Parallel()
	cluster := vaultd.StartVaultRaftCluster(t, 3)
	first := cluster.Nodes[0]
	first.EnableTransit(t, "transit")
	f := newFixture(t, first)
	cfg := f.config(t, StaticToken{f.token})
	addrs := cluster.Addrs()
	cfg.Address, cfg.FailoverAddresses = addrs[0], addrs[1:]
	k, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mustCheck(t, k)
	id := k.CurrentID()
	if k.Address() != addrs[0] {
		t.Fatalf("address in use %s, want the first, %s", k.Address(), addrs[0])
	}
	plain := bytes.Repeat([]byte{0x11}, 32)
	before, err := k.Wrap(context.Background(), id, plain)
	if err != nil {
		t.Fatal(err)
	}

	// Load: wrap+unwrap round trips under a 2 s deadline each, as the plugin makes them.
	var (
		stop            chan struct{} = make(chan struct{})
		wg              sync.WaitGroup
		ok, unavailable atomic.Int64
		mu              sync.Mutex
		unexpected      []error
		okAfterKill     atomic.Int64
		killed          atomic.Bool
		roundTrip       = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			w, err := k.Wrap(ctx, id, plain)
			if err != nil {
				return err
			}
			got, err := k.Unwrap(ctx, id, w)
			if err == nil && !bytes.Equal(got, plain) {
				return fmt.Errorf("unwrap returned another key")
			}
			return err
		}
	)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := roundTrip()
				switch {
				case err == nil:
					ok.Add(1)
					if killed.Load() {
						okAfterKill.Add(1)
					}
				case errors.Is(err, dek.ErrUnavailable):
					unavailable.Add(1)
					time.Sleep(20 * time.Millisecond)
				default:
					mu.Lock()
					unexpected = append(unexpected, err)
					mu.Unlock()
				}
			}
		}()
	}
	stopLoad := func() {
		close(stop)
		wg.Wait()
		if len(unexpected) > 0 {
			t.Fatalf("%d requests failed other than cleanly with Unavailable, first: %v", len(unexpected), unexpected[0])
		}
	}

	run.Eventually(t, 30*time.Second, "load running", func(context.Context) error {
		if ok.Load() < 20 {
			return errors.New("not yet")
		}
		return nil
	})
	first.Process.Kill() // no graceful step-down: the others must elect a new active node
	killed.Store(true)
	run.Eventually(t, 90*time.Second, "requests served after the first node died", func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if len(unexpected) > 0 {
			t.Fatalf("%d requests failed other than cleanly with Unavailable, first: %v", len(unexpected), unexpected[0])
		}
		if okAfterKill.Load() < 20 {
			return fmt.Errorf("%d round trips since the kill (%d unavailable)", okAfterKill.Load(), unavailable.Load())
		}
		return nil
	})
	if k.Address() == addrs[0] {
		t.Fatalf("still using the dead first address")
	}
	mustCheck(t, k)
	if k.CurrentID() != id {
		t.Fatalf("key id changed across the failover: %s, was %s", k.CurrentID(), id)
	}
	if got, err := k.Unwrap(context.Background(), id, before); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Unwrap of a key wrapped before the failover: %v", err)
	}

	// The first node comes back (sealed, then unsealed: it rejoins as a standby); the next
	// check goes back to it, and requests keep succeeding through it.
	cluster.StartAndRejoin(t, first)
	run.Eventually(t, 60*time.Second, "back to the first address", func(ctx context.Context) error {
		if err := k.Check(ctx); err != nil {
			return err
		}
		if k.Address() != addrs[0] {
			return fmt.Errorf("address in use %s", k.Address())
		}
		return nil
	})
	n := ok.Load()
	run.Eventually(t, 30*time.Second, "requests through the first address again", func(context.Context) error {
		if ok.Load() < n+20 {
			return errors.New("not yet")
		}
		return nil
	})
	stopLoad()
	if k.CurrentID() != id {
		t.Fatalf("key id changed: %s, was %s", k.CurrentID(), id)
	}
	t.Logf("round trips: %d ok, %d unavailable during the failover", ok.Load(), unavailable.Load())
}

// TestFailoverUnit drives the failover RoundTripper against fake nodes: what moves requests to
// the next address, that the body reaches it intact, that redirects are never followed, and
// how requests return to the preferred address.
func TestFailoverUnit(t *testing.T) {
	var mode atomic.Value // what the preferred node answers: "ok", "503", "307", "429"
	mode.Store("503")
	elsewhere := &fakeVault{handler: func(string, map[string]any, string) (int, string) { return 200, `{}` }}
	target := httptest.NewServer(elsewhere)
	defer target.Close()
	a := &fakeVault{}
	a.handler = func(path string, _ map[string]any, _ string) (int, string) {
		switch mode.Load() {
		case "503":
			return 503, `{"errors":["local node not active but active cluster node not found"]}`
		case "429":
			return 429, `{"errors":["standby"]}`
		}
		if path == "/v1/sys/health" {
			return 200, `{"initialized":true,"sealed":false,"standby":true}`
		}
		return 200, `{"data":{"ciphertext":"vault:v1:QUFBQQ=="}}`
	}
	srvA := httptest.NewServer(redirecting(a, &mode, target.URL))
	defer srvA.Close()
	b := &fakeVault{handler: func(string, map[string]any, string) (int, string) {
		return 200, `{"data":{"ciphertext":"vault:v1:QkJCQg=="}}`
	}}
	srvB := httptest.NewServer(b)
	defer srvB.Close()
	closed := httptest.NewServer(b)
	closed.Close()

	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	open := func(addrs ...string) (*api.Client, *addresses) {
		t.Helper()
		cfg := Config{Address: addrs[0], FailoverAddresses: addrs[1:], Clock: clk}
		cfg.setDefaults()
		transport, err := cfg.newTransport()
		if err != nil {
			t.Fatal(err)
		}
		as, err := newAddresses(cfg.addresses(), clk, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		c, err := cfg.newAPIClient(newHTTPClient(transport, as), "", "t")
		if err != nil {
			t.Fatal(err)
		}
		return c, as
	}
	encrypt := func(c *api.Client) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := c.Logical().WriteWithContext(ctx, "transit/encrypt/k", map[string]any{"plaintext": "cGxhaW4="})
		if err != nil {
			return "", err
		}
		ct, _ := secretString(s, "ciphertext")
		return ct, nil
	}

	c, as := open(srvA.URL, srvB.URL)
	for _, m := range []string{"503", "429", "307"} {
		mode.Store(m)
		as.mu.Lock()
		as.active = 0
		as.mu.Unlock()
		ct, err := encrypt(c)
		if err != nil || ct != "vault:v1:QkJCQg==" || as.inUse() != srvB.URL {
			t.Fatalf("preferred answers %s: %q, %v, in use %s; want the second node's answer", m, ct, err, as.inUse())
		}
		if got := b.last("/v1/transit/encrypt/k").body["plaintext"]; got != "cGxhaW4=" {
			t.Fatalf("preferred answers %s: the second node got plaintext %v", m, got)
		}
	}
	if n := len(elsewhere.paths()); n != 0 {
		t.Fatalf("a redirect was followed (%d requests at its target)", n)
	}

	// Back to the preferred address: at a check's probe, and after the cool-down at a request.
	mode.Store("ok")
	as.probePreferred(context.Background(), http.DefaultTransport)
	if as.inUse() != srvA.URL {
		t.Fatalf("after a good probe in use %s, want %s", as.inUse(), srvA.URL)
	}
	mode.Store("503")
	encrypt(c) // fails over again
	mode.Store("ok")
	if ct, _ := encrypt(c); ct != "vault:v1:QkJCQg==" || as.inUse() != srvB.URL {
		t.Fatal("back to the preferred address before the cool-down")
	}
	clk.Advance(preferredCoolDown)
	encrypt(c) // starts a background probe
	run.Eventually(t, 10*time.Second, "back to the preferred address after the cool-down", func(context.Context) error {
		if as.inUse() != srvA.URL {
			return errors.New("not yet")
		}
		return nil
	})

	// No address can serve: a clean Unavailable naming each.
	mode.Store("307")
	c, _ = open(srvA.URL, closed.URL)
	_, err := encrypt(c)
	if err = classify("encrypt", err); !errors.Is(err, dek.ErrUnavailable) || !strings.Contains(err.Error(), "every vault address failed") ||
		!strings.Contains(err.Error(), "redirected to") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("every address failing: %v", err)
	}
	// One address that redirects: an error, not an empty answer, and not followed.
	c, _ = open(srvA.URL)
	if _, err := encrypt(c); !errors.Is(classify("encrypt", err), dek.ErrUnavailable) || !strings.Contains(err.Error(), "redirected to") {
		t.Fatalf("a single redirecting address: %v", err)
	}
	if n := len(elsewhere.paths()); n != 0 {
		t.Fatalf("a redirect was followed (%d requests at its target)", n)
	}
	// A preferred address that never answers: the request fails cleanly at its deadline, and
	// the next one starts at the next address.
	release := make(chan struct{})
	hole := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer hole.Close()
	defer close(release)
	c, as = open(hole.URL, srvB.URL)
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err = c.Logical().WriteWithContext(short, "transit/encrypt/k", map[string]any{"plaintext": "cGxhaW4="})
	cancel()
	if !errors.Is(classify("encrypt", err), dek.ErrUnavailable) || as.inUse() != srvB.URL {
		t.Fatalf("black-holed preferred address: %v, in use %s", err, as.inUse())
	}
	if ct, err := encrypt(c); err != nil || ct != "vault:v1:QkJCQg==" {
		t.Fatalf("the request after a black hole: %q, %v", ct, err)
	}
	// Connection refused on the preferred address.
	c, as = open(closed.URL, srvB.URL)
	if ct, err := encrypt(c); err != nil || ct != "vault:v1:QkJCQg==" || as.inUse() != srvB.URL {
		t.Fatalf("preferred address refusing connections: %q, %v", ct, err)
	}
}

// redirecting answers like h, or with a redirect to target while mode is "307".
func redirecting(h http.Handler, mode *atomic.Value, target string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mode.Load() == "307" {
			http.Redirect(w, r, target+r.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func TestConfigAddresses(t *testing.T) {
	for _, c := range []struct {
		addrs []string
		ok    bool
	}{
		{[]string{"https://a:8200", "https://b:8200"}, true},
		{[]string{"https://a:8200", "https://a:8200"}, false},
		{[]string{"https://a:8200", "b:8200"}, false},
		{[]string{"https://a:8200/vault", "https://b:8200"}, false},
		{[]string{"https://a:8200/vault"}, true},
	} {
		cfg := Config{Address: c.addrs[0], FailoverAddresses: c.addrs[1:], Key: "k", Auth: StaticToken{"t"}}
		cfg.setDefaults()
		if err := cfg.validate(); (err == nil) != c.ok {
			t.Errorf("%v: %v", c.addrs, err)
		}
	}
	if !(&Config{Address: "https://a:8200", FailoverAddresses: []string{"http://b:8200"}}).Cleartext() {
		t.Error("a plain-http failover address is not reported as cleartext")
	}
	cfg := Config{Address: "http://127.0.0.1:8200", Key: "k", Auth: &Cert{PEMFile: "/p"}}
	cfg.setDefaults()
	if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("cert auth over http: %v", err)
	}
}

package vault

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
)

// staleReads answers the next n GETs of the key with an older body of it, as a replica behind
// a load balancer that has not caught up with a rotation would, and counts the key reads.
type staleReads struct {
	next    http.RoundTripper
	keyPath string
	mu      sync.Mutex
	stale   []byte
	n       int
	reads   int
}

func (s *staleReads) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.next.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || r.URL.Path != s.keyPath {
		return resp, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	if s.n > 0 {
		s.n--
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(s.stale))
		resp.ContentLength = int64(len(s.stale))
		resp.Header.Set("Content-Length", strconv.Itoa(len(s.stale)))
	}
	return resp, nil
}

// TestVaultStartBehindLaggingReplica: a plugin (re)started while a replica lags behind a
// rotation to v4 must not adopt v3 from its first read: the first key id, like every later
// one, needs two consecutive reads that agree. A fresh start where nothing lags adopts within
// its first check, at the cost of one more key read.
func TestVaultStartBehindLaggingReplica(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	f := newFixture(t, v)
	v.RotateKey(t, f.mount, f.key)
	v.RotateKey(t, f.mount, f.key)
	req, err := http.NewRequest(http.MethodGet, v.Addr+"/v1/"+KeyPath(f.mount, f.key), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", v.RootToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	v3, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	v.RotateKey(t, f.mount, f.key)

	open := func(staleFirst int) (*KEK, *staleReads) {
		sr := &staleReads{keyPath: "/v1/" + KeyPath(f.mount, f.key), stale: v3, n: staleFirst}
		cfg := f.config(t, StaticToken{f.token})
		cfg.wrapTransport = func(next http.RoundTripper) http.RoundTripper { sr.next = next; return sr }
		k, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return k, sr
	}
	ctx := context.Background()

	// A fresh start with nothing lagging: one check, two reads, v4 adopted.
	k, sr := open(0)
	mustCheck(t, k)
	if id := k.CurrentID(); !strings.HasSuffix(id, ":v4") || sr.reads != 2 {
		t.Fatalf("fresh start: key id %q after %d key reads; want v4 after 2", id, sr.reads)
	}
	want := k.CurrentID()
	mustCheck(t, k)
	if sr.reads != 3 {
		t.Fatalf("a check after adoption read the key %d more times, want 1", sr.reads-2)
	}

	// The restarted plugin's first read goes to the lagging replica (v3), the second to the
	// active node (v4): they disagree, nothing is adopted and Check says why.
	k, sr = open(1)
	err = k.Check(ctx)
	if !errors.Is(err, dek.ErrUnavailable) || !strings.Contains(err.Error(), "disagree") {
		t.Fatalf("first check with a lagging first read: %v; want dek.ErrUnavailable saying the reads disagree", err)
	}
	if id := k.CurrentID(); id != "" {
		t.Fatalf("key id %q adopted from reads that disagree (v3, then v4)", id)
	}
	// Wrap under the version not yet adopted works (another node may have adopted it), and so
	// does Unwrap: only the key id Status reports waits.
	w, err := k.Wrap(ctx, want, bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Unwrap(ctx, want, w); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, k) // the next check agrees with the second read
	if id := k.CurrentID(); id != want {
		t.Fatalf("after the next check: key id %q, want %s (v4)", id, want)
	}
}

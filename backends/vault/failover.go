package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// preferredCoolDown is how long after leaving the preferred (first) address a request may
// trigger a background probe of it; Check probes it at every check as well.
const preferredCoolDown = 30 * time.Second

// addresses is the failover state that every HTTP client of one backend shares: the Vault
// addresses in order of preference and the one in use.
type addresses struct {
	urls []*url.URL
	clk  clock.Clock
	log  *slog.Logger

	mu        sync.Mutex
	active    int       // index of the address requests go to first
	lastProbe time.Time // last probe of the preferred address (or when it was left)
	probing   bool
	moves     atomic.Uint64 // changes of the active address, so caches tied to one node expire
}

func newAddresses(raw []string, clk clock.Clock, log *slog.Logger) (*addresses, error) {
	a := &addresses{clk: clk, log: log}
	for _, s := range raw {
		u, err := url.Parse(s)
		if err != nil {
			return nil, err
		}
		a.urls = append(a.urls, u)
	}
	return a, nil
}

// inUse is the address requests go to first now.
func (a *addresses) inUse() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.urls[a.active].String()
}

// start returns the index to try first, and starts a background probe of the preferred
// address when the cool-down since the last one has passed.
func (a *addresses) start(next http.RoundTripper) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.active != 0 && !a.probing && a.clk.Now().Sub(a.lastProbe) >= preferredCoolDown {
		a.probing, a.lastProbe = true, a.clk.Now()
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			a.probePreferred(ctx, next)
			a.mu.Lock()
			a.probing = false
			a.mu.Unlock()
		}()
	}
	return a.active
}

// use records that address i served a request that the active address could not.
func (a *addresses) use(i int, why string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if i == a.active {
		return
	}
	a.log.Warn("vault: failing over to another address", "from", a.urls[a.active].Redacted(), "to", a.urls[i].Redacted(), "reason", why)
	if a.active == 0 {
		a.lastProbe = a.clk.Now()
	}
	a.active = i
	a.moves.Add(1)
}

// probePreferred asks the preferred address whether it serves again (sys/health that a
// standby also answers with 200) and, if it does, sends requests there again. It is a no-op
// while the preferred address is in use.
func (a *addresses) probePreferred(ctx context.Context, next http.RoundTripper) {
	a.mu.Lock()
	if a.active == 0 {
		a.mu.Unlock()
		return
	}
	u := *a.urls[0]
	a.mu.Unlock()
	u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/sys/health"
	u.RawQuery = "standbyok=true&perfstandbyok=true"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return
	}
	resp, err := next.RoundTrip(req)
	if err != nil {
		return
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.active != 0 {
		a.log.Info("vault: the preferred address serves again; going back to it", "to", a.urls[0].Redacted(), "from", a.urls[a.active].Redacted())
		a.active = 0
		a.moves.Add(1)
	}
}

// failover is the RoundTripper of every Vault client of a backend. A request goes to the
// address in use; when that address cannot serve it (no connection, 5xx, 429, or a redirect
// from a standby that does not forward), the same request goes to the next address, then the
// next, each at most once and only while the caller's deadline allows. The retry policy
// (retry.go) repeats the whole round with backoff.
//
// A redirect is never followed, here or by vault/api (which would take a standby's 307 for an
// empty answer once it stopped following): a standby redirects when it cannot forward, to the
// active node's advertised address, which may be the very node that just died. The last
// address's redirect becomes an error (unavailable) that names where it pointed. Requests to
// other hosts than the preferred address (the one the vault/api client was built with) go
// where they were sent.
type failover struct {
	next  http.RoundTripper
	addrs *addresses
}

func (f failover) RoundTrip(req *http.Request) (*http.Response, error) {
	pref := f.addrs.urls[0]
	if req.URL.Host != pref.Host || req.URL.Scheme != pref.Scheme {
		return f.next.RoundTrip(req)
	}
	body, err := bodyOf(req)
	if err != nil {
		return nil, err
	}
	n := len(f.addrs.urls)
	first := f.addrs.start(f.next)
	var failures []error
	for j := 0; j < n; j++ {
		i := (first + j) % n
		resp, err := f.next.RoundTrip(f.to(req, i, body))
		if err != nil && j == 0 && n > 1 && errors.Is(err, context.DeadlineExceeded) {
			// The deadline ran out on this address (a black hole, say): the next request
			// starts at the next one.
			f.addrs.use((i+1)%n, "no answer within the request's deadline")
		}
		why := unfit(resp, err)
		if why == "" {
			if j > 0 {
				f.addrs.use(i, fmt.Sprintf("%v", errors.Join(failures...)))
			}
			return resp, nil
		}
		last := j == n-1 || req.Context().Err() != nil
		if last && err == nil && !isRedirect(resp.StatusCode) {
			return resp, nil // a 5xx or 429: vault/api reports it with Vault's own words
		}
		if last && err != nil && n == 1 {
			return nil, err
		}
		if err == nil {
			err = errors.New(why)
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		failures = append(failures, fmt.Errorf("%s: %w", f.addrs.urls[i].Redacted(), err))
		if last {
			return nil, &allFailed{failures}
		}
	}
	return nil, &allFailed{failures} // not reached: the last iteration returns
}

// to is req aimed at address i, with a fresh copy of its body.
func (f failover) to(req *http.Request, i int, body []byte) *http.Request {
	u := f.addrs.urls[i]
	r := req.Clone(req.Context())
	r.URL.Scheme, r.URL.Host, r.Host = u.Scheme, u.Host, u.Host
	if body != nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return r
}

// bodyOf reads a request body once so that it can be sent to several addresses. Vault
// requests carry small JSON bodies.
func bodyOf(req *http.Request) ([]byte, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	defer req.Body.Close()
	return io.ReadAll(req.Body)
}

// unfit says why a response means "try another address", or "" if it does not.
func unfit(resp *http.Response, err error) string {
	switch {
	case err != nil:
		return err.Error()
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Sprintf("answered %d", resp.StatusCode)
	case isRedirect(resp.StatusCode):
		return "redirected to " + resp.Header.Get("Location") + " (a standby that cannot forward requests to the active node)"
	}
	return ""
}

func isRedirect(code int) bool {
	return code == http.StatusMovedPermanently || code == http.StatusFound ||
		code == http.StatusTemporaryRedirect || code == http.StatusPermanentRedirect
}

// allFailed is a request that no address could serve; it unwraps to each address's error, so
// that retryable and classify see what went wrong.
type allFailed struct{ errs []error }

func (e *allFailed) Error() string {
	parts := make([]string, len(e.errs))
	for i, err := range e.errs {
		parts[i] = err.Error()
	}
	return "every vault address failed: " + strings.Join(parts, "; ")
}

func (e *allFailed) Unwrap() []error { return e.errs }

// through is f handing requests on to change(f.next) instead of f.next, with the same
// addresses and failover state: cert auth uses it to present a client certificate.
func (f failover) through(change func(next http.RoundTripper) (http.RoundTripper, error)) (http.RoundTripper, error) {
	next, err := change(f.next)
	if err != nil {
		return nil, err
	}
	return failover{next: next, addrs: f.addrs}, nil
}

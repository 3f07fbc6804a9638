package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/plugin/metrics"
)

// scrape returns the exposition text of m's handler.
func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, body)
	}
	return string(body)
}

func wantLine(t *testing.T, text, line string) {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if l == line {
			return
		}
	}
	t.Errorf("no line %q in:\n%s", line, grepKMS(text))
}

func noLine(t *testing.T, text, prefix string) {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			t.Errorf("unexpected line %q", l)
		}
	}
}

func grepKMS(text string) string {
	var b strings.Builder
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "kms_plugin_") {
			fmt.Fprintln(&b, l)
		}
	}
	return b.String()
}

func TestBackendStateKeyInfoAndRotations(t *testing.T) {
	m := metrics.New("vault", "v1.2.3")
	text := scrape(t, m)
	wantLine(t, text, `kms_plugin_build_info{backend="vault",version="v1.2.3"} 1`)
	wantLine(t, text, `kms_plugin_backend_healthy{backend="vault"} 0`)
	noLine(t, text, "kms_plugin_key_info{")

	m.ObserveBackend("", errors.New("not checked yet"))
	m.ObserveBackend("vault:k:1", nil)
	text = scrape(t, m)
	wantLine(t, text, `kms_plugin_backend_healthy{backend="vault"} 1`)
	wantLine(t, text, `kms_plugin_key_info{backend="vault",key_id="vault:k:1"} 1`)
	wantLine(t, text, `kms_plugin_key_rotations_total{backend="vault"} 0`)

	// An outage keeps the key id; a new key id is a rotation and replaces the old one.
	m.ObserveBackend("vault:k:1", errors.New("sealed"))
	text = scrape(t, m)
	wantLine(t, text, `kms_plugin_backend_healthy{backend="vault"} 0`)
	wantLine(t, text, `kms_plugin_key_info{backend="vault",key_id="vault:k:1"} 1`)
	m.ObserveBackend("vault:k:2", nil)
	text = scrape(t, m)
	wantLine(t, text, `kms_plugin_key_info{backend="vault",key_id="vault:k:2"} 1`)
	noLine(t, text, `kms_plugin_key_info{backend="vault",key_id="vault:k:1"}`)
	wantLine(t, text, `kms_plugin_key_rotations_total{backend="vault"} 1`)
}

// errKEK fails every call with err.
type errKEK struct{ err error }

func (e errKEK) CurrentID() string           { return "k" }
func (e errKEK) Check(context.Context) error { return e.err }
func (e errKEK) Wrap(context.Context, string, []byte) ([]byte, error) {
	return nil, e.err
}
func (e errKEK) Unwrap(context.Context, string, []byte) ([]byte, error) {
	return nil, e.err
}

// Backend calls are labelled by the kind of failure, never by the error's text.
func TestBackendCallResults(t *testing.T) {
	m := metrics.New("localaes", "dev")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{fmt.Errorf("dial tcp 10.0.0.1:8200: refused: %w", dek.ErrUnavailable), "unavailable"},
		{fmt.Errorf("403: %w", dek.ErrDenied), "denied"},
		{fmt.Errorf("v1 retired: %w", dek.ErrUnknownKey), "unknown_key"},
		{fmt.Errorf("bad: %w", dek.ErrTampered), "invalid"},
		{context.DeadlineExceeded, "timeout"},
		{errors.New("something new"), "error"},
	} {
		k := metrics.NewKEK(errKEK{tc.err}, m)
		k.Wrap(context.Background(), "k", nil)
		k.Unwrap(context.Background(), "k", nil)
		k.Check(context.Background())
	}
	text := scrape(t, m)
	for _, result := range []string{"unavailable", "denied", "unknown_key", "invalid", "timeout", "error"} {
		for _, op := range []string{"wrap", "unwrap", "check"} {
			wantLine(t, text, fmt.Sprintf(`kms_plugin_backend_calls_total{backend="localaes",operation=%q,result=%q} 1`, op, result))
		}
	}
	wantLine(t, text, `kms_plugin_backend_call_duration_seconds_count{backend="localaes",operation="wrap"} 7`)
	if strings.Contains(text, "10.0.0.1") || strings.Contains(text, "something new") {
		t.Fatal("an error's text reached a label")
	}
}

type ttlBackend struct {
	errKEK
	ttl     time.Duration
	expires bool
}

func (b *ttlBackend) TokenTTL() (time.Duration, bool) { return b.ttl, b.expires }

func TestTokenTTL(t *testing.T) {
	m := metrics.New("vault", "dev")
	if m.WatchTokenTTL(errKEK{}) {
		t.Fatal("a backend without TokenTTL was watched")
	}
	b := &ttlBackend{ttl: 90 * time.Minute, expires: true}
	if !m.WatchTokenTTL(b) {
		t.Fatal("TokenTTL not recognised")
	}
	wantLine(t, scrape(t, m), `kms_plugin_backend_token_ttl_seconds{backend="vault"} 5400`)
	b.expires = false // a root token, or not logged in yet
	noLine(t, scrape(t, m), "kms_plugin_backend_token_ttl_seconds{")
}

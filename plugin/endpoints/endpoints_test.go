package endpoints_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Over a real listener: /healthz stays ok while /readyz follows the backend.
func TestEndpoints(t *testing.T) {
	var mu sync.Mutex
	var backendErr error
	srv, err := endpoints.Listen("127.0.0.1:0", endpoints.Config{
		Ready:   func() error { mu.Lock(); defer mu.Unlock(); return backendErr },
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "kms_plugin_x 1\n") }),
		Version: "v9.9.9",
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	base := "http://" + srv.Addr()

	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 || body != "ok\n" {
		t.Fatalf("/readyz = %d %q", code, body)
	}
	mu.Lock()
	backendErr = errors.New("backend unavailable: vault is sealed" + strings.Repeat(".", 1000))
	mu.Unlock()
	code, body := get(t, base+"/readyz")
	if code != 503 || !strings.Contains(body, "vault is sealed") || len(body) > 300 {
		t.Fatalf("/readyz while broken = %d %q", code, body)
	}
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz depends on the backend: %d %q", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || body != "kms_plugin_x 1\n" {
		t.Fatalf("/metrics = %d %q", code, body)
	}
	code, body = get(t, base+"/version")
	var v map[string]string
	if code != 200 || json.Unmarshal([]byte(body), &v) != nil || v["version"] != "v9.9.9" {
		t.Fatalf("/version = %d %q", code, body)
	}
	if code, _ := get(t, base+"/debug/pprof/"); code != 404 {
		t.Fatalf("unknown path: %d", code)
	}
	resp, err := http.Post(base+"/readyz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /readyz: %d", resp.StatusCode)
	}

	if err := srv.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8095": true, "[::1]:8095": true, "localhost:8095": true, "127.0.0.2:1": true,
		":8095": false, "0.0.0.0:8095": false, "10.1.2.3:8095": false, "[::]:8095": false, "node1:8095": false,
	} {
		got, err := endpoints.IsLoopback(addr)
		if err != nil || got != want {
			t.Errorf("IsLoopback(%q) = %v, %v; want %v", addr, got, err, want)
		}
	}
	if _, err := endpoints.IsLoopback("8095"); err == nil {
		t.Error("a bare port was accepted")
	}
}

// /readyz cuts a long reason on a character boundary, as Status's healthz does: a cut inside
// a multi-byte character would answer invalid UTF-8.
func TestReadyReasonStaysValidUTF8(t *testing.T) {
	h := endpoints.Handler(endpoints.Config{
		Ready:   func() error { return errors.New(strings.Repeat("é", 300)) },
		Metrics: http.NotFoundHandler(),
	})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	body := rec.Body.String()
	if rec.Code != http.StatusServiceUnavailable || !utf8.ValidString(body) || len(body) > 300 {
		t.Fatalf("/readyz: %d, %d bytes, valid UTF-8 %v", rec.Code, len(body), utf8.ValidString(body))
	}
}

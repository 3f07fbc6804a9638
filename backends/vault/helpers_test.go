package vault

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"

	"github.com/hashicorp/vault/api"
)

// Helpers of the unit tests, which test pure logic and the HTTP shape of requests against
// httptest servers, each in the _test.go beside the file it tests. Every behaviour they cover
// is also exercised against a real Vault in vault_test.go.

// testAPIClient is a vault/api client built as the backend builds its own.
func testAPIClient(t *testing.T, addr string) *api.Client {
	t.Helper()
	c, err := NewClient(Config{Address: addr}, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return c
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

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

package k8sauth

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
)

// TestVaultKubernetesAuth logs in with a service-account token that a real kube-apiserver
// issued, which Vault's kubernetes auth method verifies with that apiserver's TokenReview.
func TestVaultKubernetesAuth(t *testing.T) {
	t.Parallel()
	cluster := harness.StartCluster(t, harness.APIServerOptions{})
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	const mount, keyName, policy = "transit", "kek", "kms"
	v.CreateKey(t, mount, keyName)
	v.WritePolicy(t, policy, vaultd.TransitPolicy(mount, keyName))
	// The backend talks to Vault through a proxy that shows which token it uses.
	proxy := proxyVault(t, v.Addr)
	ctx := context.Background()

	cs := cluster.APIServer.Clientset
	const ns = "kms-system"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	jwtFor := func(sa string) string {
		t.Helper()
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}

	v.EnableAuth(t, "kubernetes", "kubernetes")
	v.Write(t, "auth/kubernetes/config", map[string]any{
		"kubernetes_host":    cluster.APIServer.Config.Host,
		"kubernetes_ca_cert": string(cluster.APIServer.Config.TLSClientConfig.CAData),
		// The reviewer credential: any bearer token allowed to create TokenReviews.
		"token_reviewer_jwt":   cluster.APIServer.Config.BearerToken,
		"disable_local_ca_jwt": true,
	})
	v.Write(t, "auth/kubernetes/role/kms", map[string]any{
		"bound_service_account_names":      "kms-plugin",
		"bound_service_account_namespaces": ns,
		"token_policies":                   []string{policy},
		"token_ttl":                        "10m",
	})
	open := func(auth vault.Auth) *vault.KEK {
		t.Helper()
		k, err := vault.Open(vault.Config{Address: proxy.URL, Mount: mount, Key: keyName, Auth: auth, Log: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	kubernetesLogin := func(token string) bool {
		s, err := v.LookupToken(token)
		return err == nil && strings.Contains(s.Data["path"].(string), "auth/kubernetes/login")
	}

	dir := t.TempDir()
	jwtFile := filepath.Join(dir, "token")
	writeFile(t, jwtFile, jwtFor("kms-plugin"))
	k := open(vault.Kubernetes{Role: "kms", JWTFile: jwtFile})
	mustCheck(t, k)
	key := bytes.Repeat([]byte{9}, 32)
	w, err := k.Wrap(ctx, k.CurrentID(), key)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k.Unwrap(ctx, k.CurrentID(), w); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Unwrap: %v", err)
	}
	first := proxy.lastTransitToken()
	if !kubernetesLogin(first) {
		t.Fatal("the backend's token did not come from a kubernetes login")
	}

	// Revoked (or expired): the next check logs in again with the JWT file.
	v.RevokeToken(t, first)
	mustCheck(t, k)
	if got, err := k.Unwrap(ctx, k.CurrentID(), w); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Unwrap after re-login: %v", err)
	}
	if again := proxy.lastTransitToken(); again == first || !kubernetesLogin(again) {
		t.Fatal("no new kubernetes login after the token was revoked")
	}

	// A service account the role does not name is refused, with a clear error.
	other := filepath.Join(dir, "other")
	writeFile(t, other, jwtFor("someone-else"))
	k2 := open(vault.Kubernetes{Role: "kms", JWTFile: other})
	err = k2.Check(ctx)
	if !errors.Is(err, dek.ErrDenied) || !strings.Contains(err.Error(), "kubernetes login") {
		t.Fatalf("Check with an unbound service account: %v; want dek.ErrDenied from the kubernetes login", err)
	}
}

// vaultProxy forwards every request to Vault and remembers the token of the last request to
// the transit mount: the token the backend holds, seen from outside the package.
type vaultProxy struct {
	URL string

	mu    sync.Mutex
	token string
}

func proxyVault(t *testing.T, addr string) *vaultProxy {
	t.Helper()
	target, err := url.Parse(addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &vaultProxy{}
	forward := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/transit/") {
			p.mu.Lock()
			p.token = r.Header.Get("X-Vault-Token")
			p.mu.Unlock()
		}
		forward.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *vaultProxy) lastTransitToken() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.token
}

func mustCheck(t *testing.T, k *vault.KEK) {
	t.Helper()
	if err := k.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

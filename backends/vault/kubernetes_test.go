package vault

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// TestVaultKubernetesAuth logs in with a service-account token that a real kube-apiserver
// issued, which Vault's kubernetes auth method verifies with that apiserver's TokenReview.
func TestVaultKubernetesAuth(t *testing.T) {
	t.Parallel()
	cluster := harness.StartCluster(t, harness.APIServerOptions{})
	v := harness.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	f := newFixture(t, v)
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
		"token_policies":                   policiesOf(t, v, f.token),
		"token_ttl":                        "10m",
	})

	dir := t.TempDir()
	jwtFile := filepath.Join(dir, "token")
	writeFile(t, jwtFile, jwtFor("kms-plugin"))
	k := f.open(t, Kubernetes{Role: "kms", JWTFile: jwtFile})
	mustCheck(t, k)
	key := bytes.Repeat([]byte{9}, 32)
	w, err := k.Wrap(ctx, k.CurrentID(), key)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k.Unwrap(ctx, k.CurrentID(), w); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Unwrap: %v", err)
	}
	if s, err := v.LookupToken(k.tokens.token); err != nil || !strings.Contains(s.Data["path"].(string), "auth/kubernetes/login") {
		t.Fatalf("the backend's token did not come from a kubernetes login: %v", err)
	}

	// Revoked (or expired): the next check logs in again with the JWT file.
	first := k.tokens.token
	v.RevokeToken(t, first)
	mustCheck(t, k)
	if k.tokens.token == first {
		t.Fatal("no new kubernetes login after the token was revoked")
	}
	if got, err := k.Unwrap(ctx, k.CurrentID(), w); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Unwrap after re-login: %v", err)
	}

	// A service account the role does not name is refused, with a clear error.
	other := filepath.Join(dir, "other")
	writeFile(t, other, jwtFor("someone-else"))
	k2 := f.open(t, Kubernetes{Role: "kms", JWTFile: other})
	err = k2.Check(ctx)
	if !errors.Is(err, dek.ErrDenied) || !strings.Contains(err.Error(), "kubernetes login") {
		t.Fatalf("Check with an unbound service account: %v; want dek.ErrDenied from the kubernetes login", err)
	}
}

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	storagemigrationv1 "k8s.io/api/storagemigration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// deploy/rbac/kmsctl-rewrite.yaml, on an apiserver with RBAC on: a user bound to its two
// roles runs rewrite (pre-check included) to the end; a user whose role lacks patch is
// refused on every object, and rewrite says so and exits 3.
func TestRewriteRBAC(t *testing.T) {
	t.Parallel()
	c := startEncryptedCluster(t, newLocalAES(t))
	cs := c.APIServer.Clientset
	createNamespace(t, cs, "e2e")
	createSecrets(t, cs, "e2e", "s", 20)

	raw, err := os.ReadFile("../deploy/rbac/kmsctl-rewrite.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var roles []rbacv1.ClusterRole
	for {
		var r rbacv1.ClusterRole
		if err := dec.Decode(&r); err != nil {
			break
		}
		roles = append(roles, r)
	}
	if len(roles) != 3 {
		t.Fatalf("deploy/rbac/kmsctl-rewrite.yaml holds %d ClusterRoles, want 3 (rewrite, rollout check, via SVM)", len(roles))
	}
	noPatch := *roles[0].DeepCopy()
	noPatch.Name = "kmsctl-rewrite-no-patch"
	noPatch.Rules[0].Verbs = []string{"list", "get"}
	for _, r := range append(roles, noPatch) {
		if _, err := cs.RbacV1().ClusterRoles().Create(t.Context(), &r, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	bind := func(user, role string) {
		b := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user + "-" + role},
			Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: user}},
			RoleRef:  rbacv1.RoleRef{Kind: "ClusterRole", APIGroup: "rbac.authorization.k8s.io", Name: role}}
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(t.Context(), b, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	bind("rewriter", "kmsctl-rewrite")
	bind("rewriter", "kmsctl-rollout-check")
	bind("reader", "kmsctl-rewrite-no-patch")
	bind("reader", "kmsctl-rollout-check")
	bind("migrator", "kmsctl-rewrite-via-svm")

	// The via-SVM role can create a StorageVersionMigration and read it, nothing more.
	mig, err := kubernetes.NewForConfig(impersonate(c.APIServer.Config, "migrator"))
	if err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, time.Minute, "the migrator creates a StorageVersionMigration", func(ctx context.Context) error {
		m, err := mig.StoragemigrationV1().StorageVersionMigrations().Create(ctx, &storagemigrationv1.StorageVersionMigration{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "rbac-"},
			Spec:       storagemigrationv1.StorageVersionMigrationSpec{Resource: metav1.GroupResource{Resource: "secrets"}},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		_, err = mig.StoragemigrationV1().StorageVersionMigrations().Get(ctx, m.Name, metav1.GetOptions{})
		return err
	})
	if _, err := mig.CoreV1().Secrets("e2e").List(t.Context(), metav1.ListOptions{}); err == nil {
		t.Error("the via-SVM role lists Secrets")
	}

	// The apiservers of this test advertise an address they do not listen on: --apiservers.
	args := []string{"rewrite", "--resources", "secrets,configmaps", "--apiservers", c.APIServer.URL}
	var out, errOut string
	var code int
	harness.Eventually(t, time.Minute, "the rewriter runs rewrite", func(context.Context) error {
		out, errOut, code = kmsctl(t, append(args, "--kubeconfig", c.APIServer.Kubeconfig(t, "rewriter"))...)
		if code != 0 {
			return fmt.Errorf("exit %d\n%s\n%s", code, out, errOut)
		}
		return nil
	})
	if !strings.Contains(out, "secrets") {
		t.Errorf("rewrite as the rewriter printed %s", out)
	}
	out, errOut, code = kmsctl(t, append(args, "--kubeconfig", c.APIServer.Kubeconfig(t, "reader"))...)
	if code != 3 || !strings.Contains(errOut, "Forbidden") || !strings.Contains(errOut, "s-00000") {
		t.Errorf("rewrite as a user without patch: exit %d, want 3 listing forbidden objects\n%s\n%s", code, out, errOut)
	}
}

// impersonate is cfg acting as user.
func impersonate(cfg *rest.Config, user string) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Impersonate.UserName = user
	return c
}

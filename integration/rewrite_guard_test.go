package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// deploy/rbac/kmsctl-rewrite-guard.yaml on a real kube-apiserver, naming the identity bound to
// deploy/rbac/kmsctl-rewrite.yaml: rewrite as that identity re-encrypts every stale Secret
// (its patches pass), while a patch of a Secret's data, or of its labels, by the same
// identity is denied, and the cluster admin's is not.
func TestRewriteGuard(t *testing.T) {
	t.Parallel()
	c, _, _, newID := rotated(t, 20)
	cs := c.APIServer.Clientset

	roles, err := os.ReadFile("../deploy/rbac/kmsctl-rewrite.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(roles), 4096)
	for {
		var r rbacv1.ClusterRole
		if err := dec.Decode(&r); err != nil {
			break
		}
		if _, err := cs.RbacV1().ClusterRoles().Create(t.Context(), &r, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		b := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "rewriter-" + r.Name},
			Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "rewriter"}},
			RoleRef:  rbacv1.RoleRef{Kind: "ClusterRole", APIGroup: "rbac.authorization.k8s.io", Name: r.Name}}
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(t.Context(), b, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The guard as shipped, but for the identity: this test's rewriter is the user "rewriter".
	raw, err := os.ReadFile("../deploy/rbac/kmsctl-rewrite-guard.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const shipped = `"system:serviceaccount:kube-system:kmsctl-rewrite"`
	if !bytes.Contains(raw, []byte(shipped)) {
		t.Fatalf("the guard no longer names %s: change this test with it", shipped)
	}
	raw = bytes.ReplaceAll(raw, []byte(shipped), []byte(`"rewriter"`))
	docs := strings.Split(string(raw), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("the guard has %d documents, want the policy and its binding", len(docs))
	}
	var policy admissionv1.ValidatingAdmissionPolicy
	var binding admissionv1.ValidatingAdmissionPolicyBinding
	for i, into := range []any{&policy, &binding} {
		if err := yaml.NewYAMLOrJSONDecoder(strings.NewReader(docs[i]), 4096).Decode(into); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(t.Context(), &policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(t.Context(), &binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	rewriter, err := kubernetes.NewForConfig(impersonate(c.APIServer.Config, "rewriter"))
	if err != nil {
		t.Fatal(err)
	}
	patch := func(ctx context.Context, cs kubernetes.Interface, name, body string) error {
		_, err := cs.CoreV1().Secrets("e2e").Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{})
		return err
	}
	denied := func(err error) bool { return err != nil && strings.Contains(err.Error(), policy.Name) }
	// The policy takes effect once the apiserver has loaded it: until then the probe's patch
	// goes through (on a Secret that nothing else checks), so each try writes a new value.
	createSecrets(t, cs, "e2e", "probe", 1)
	try := 0
	harness.Eventually(t, time.Minute, "the guard denies the rewriter's change of a Secret's data", func(ctx context.Context) error {
		try++
		err := patch(ctx, rewriter, "probe-00000", fmt.Sprintf(`{"data":{"value":%q}}`, base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "try %d", try))))
		if !denied(err) {
			return fmt.Errorf("the rewriter's data patch: %v", err)
		}
		t.Logf("denied: %v", err)
		return nil
	})

	out, errOut, code := kmsctl(t, "rewrite", "--kubeconfig", c.APIServer.Kubeconfig(t, "rewriter"),
		"--resources", "secrets", "--apiservers", c.APIServer.URL, "-o", "json")
	if code != 0 {
		t.Fatalf("rewrite as the guarded rewriter exited %d\n%s\n%s", code, out, errOut)
	}
	var rewritten int64
	for _, r := range parseSummary(t, out).Resources {
		rewritten += r.Rewritten
	}
	if rewritten < 20 {
		t.Errorf("rewrite under the guard rewrote %d objects, want the 20 stale Secrets", rewritten)
	}
	checkAllKMSStored(t, c.Etcd, newID, "secrets")

	for what, body := range map[string]string{
		"data":        `{"data":{"value":"bWluZQ=="}}`,
		"a label":     `{"metadata":{"labels":{"owned":"yes"}}}`,
		"a finalizer": `{"metadata":{"finalizers":["example.com/keep"]}}`,
	} {
		if err := patch(t.Context(), rewriter, "s-00000", body); !denied(err) {
			t.Errorf("the rewriter's patch of %s: %v; want it denied by %s", what, err, policy.Name)
		}
	}
	s, err := cs.CoreV1().Secrets("e2e").Get(t.Context(), "s-00000", metav1.GetOptions{})
	if err != nil || string(s.Data["value"]) != "plaintext-0" || len(s.Labels) != 0 {
		t.Fatalf("s-00000 after the denied patches: %v, %v", s, err)
	}
	if err := patch(t.Context(), cs, "s-00000", `{"data":{"value":"bmV3"}}`); err != nil {
		t.Errorf("the cluster admin's data patch: %v; the guard must match the rewrite identity only", err)
	}
}

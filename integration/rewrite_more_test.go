package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// Two apiservers on one etcd, one of whose plugins has rotated while the other's has not:
// rewrite refuses (and rollout-status waits, then reports the disagreement), --force
// overrides; once the second plugin has the key too, rollout-status says they agree.
func TestRewriteRefusesWhileAnAPIServerWritesTheOldKey(t *testing.T) {
	t.Parallel()
	e := harness.StartEtcd(t)
	dir := t.TempDir()
	fileA, fileB := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	keygen(t, fileA)
	raw, err := os.ReadFile(fileA)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fileB, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	plugins := []*harness.Plugin{
		harness.StartPlugin(t, "--backend=localaes", "--localaes-key-file="+fileA),
		harness.StartPlugin(t, "--backend=localaes", "--localaes-key-file="+fileB),
	}
	var nodes []*harness.APIServer
	for i, p := range plugins {
		opts := harness.APIServerOptions{
			EtcdServers:      e.Endpoints,
			EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, p.Endpoint), harness.Identity()),
		}
		if i > 0 {
			opts.SameAuthAs = nodes[0]
		}
		nodes = append(nodes, harness.StartKubeAPIServer(t, opts))
	}
	createNamespace(t, nodes[0].Clientset, "e2e")
	probeA := create(t, nodes[0].Clientset, "secrets", "e2e", "probe-a")
	probeB := create(t, nodes[1].Clientset, "secrets", "e2e", "probe-b")
	newID := keygen(t, fileB, "--write")
	plugins[1].Reload(t)
	plugins[1].WaitKeyID(t, newID)
	waitForWrites(t, &harness.Cluster{Etcd: e, APIServer: nodes[1]}, 3*time.Minute, "node B writes under the new key", probeB,
		func(raw []byte) error { return kmsStored(raw, probeB, newID) })
	// Node A has written since its start, under the old key.
	if err := probeA.setValue(t.Context(), nodes[0].Clientset); err != nil {
		t.Fatal(err)
	}

	servers := nodes[0].URL + "," + nodes[1].URL
	kubeconfig := nodes[0].Kubeconfig(t, "")
	out, errOut, code := kmsctl(t, "rewrite", "--kubeconfig", kubeconfig, "--resources", "secrets", "--apiservers", servers)
	if code != 3 || !strings.Contains(errOut, "not rewriting") || !strings.Contains(errOut, "different key ids") {
		t.Errorf("rewrite with node A on the old key: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	// Through node B, which reads both keys.
	out, errOut, code = kmsctl(t, "rewrite", "--kubeconfig", nodes[1].Kubeconfig(t, ""), "--resources", "secrets", "--apiservers", servers, "--force")
	if code != 0 {
		t.Errorf("rewrite --force: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	cfgFile := nodes[0].EncryptionConfigPath()
	out, _, code = kmsctl(t, "rollout-status", "--kubeconfig", kubeconfig, "--apiservers", servers,
		"--encryption-config", cfgFile, "--timeout=20s", "--interval=2s") // they never agree: it waits it all; a loaded machine needs seconds per /metrics
	if code != 3 || !strings.Contains(out, nodes[1].URL+` writes "kms-plugin" under key id`) {
		t.Errorf("rollout-status with node A on the old key: exit %d: %s", code, out)
	}

	// Node A's plugin gets the new write key too; rollout-status waits until node A's
	// apiserver has polled its Status (each round's /metrics does not hurry it: wait with
	// the readiness probe kubelet would send).
	if err := os.WriteFile(fileA, mustRead(t, fileB), 0o600); err != nil {
		t.Fatal(err)
	}
	plugins[0].Reload(t)
	plugins[0].WaitKeyID(t, newID)
	waitForWrites(t, &harness.Cluster{Etcd: e, APIServer: nodes[0]}, 3*time.Minute, "node A writes under the new key", probeA,
		func(raw []byte) error { return kmsStored(raw, probeA, newID) })
	// Each node's file names its own plugin's socket: each is checked against its own.
	for _, n := range nodes {
		out, errOut, code = kmsctl(t, "rollout-status", "--kubeconfig", kubeconfig, "--apiservers", n.URL,
			"--encryption-config", n.EncryptionConfigPath(), "--timeout=2m", "--interval=2s")
		if code != 0 || !strings.Contains(out, "all 1 apiservers run") {
			t.Errorf("rollout-status of %s once both write under the new key: exit %d\n%s\n%s", n.URL, code, out, errOut)
		}
	}
	out, errOut, code = kmsctl(t, "rewrite", "--kubeconfig", kubeconfig, "--resources", "secrets", "--apiservers", servers)
	if code != 0 {
		t.Errorf("rewrite once both agree: exit %d\n%s\n%s", code, out, errOut)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var widgets = schema.GroupVersionResource{Group: "example.com", Version: "v1", Resource: "widgets"}

// A custom resource (JSON storage) named by the EncryptionConfiguration is rewritten from
// --encryption-config; one widget the apiserver cannot decrypt is reported, and the others
// and every Secret are rewritten. Then the etcd source patches only stale objects, ends with
// a verifying scan, and the old localaes key, refused for removal before, can be removed.
func TestRewriteCustomResourceAndKeyRemoval(t *testing.T) {
	t.Parallel()
	b := newLocalAES(t).(*localAES)
	p := harness.StartPlugin(t, b.pluginArgs()...)
	resources := append(append([]string{}, encrypted...), "widgets.example.com")
	c := harness.StartCluster(t, harness.APIServerOptions{
		EncryptionConfig: harness.EncryptionConfig(resources, harness.KMSv2(provider, p.Endpoint), harness.Identity())})
	cs := c.APIServer.Clientset
	dyn, err := dynamic.NewForConfig(c.APIServer.Config)
	if err != nil {
		t.Fatal(err)
	}
	createWidgetCRD(t, dyn)
	createNamespace(t, cs, "e2e")
	createSecrets(t, cs, "e2e", "s", 30)
	for i := range 30 {
		w := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "example.com/v1", "kind": "Widget",
			"metadata": map[string]any{"name": fmt.Sprintf("widget-%03d", i), "namespace": "e2e"},
			"spec":     map[string]any{"value": fmt.Sprintf("plaintext-widget-%d", i)},
		}}
		if _, err := dyn.Resource(widgets).Namespace("e2e").Create(t.Context(), w, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	oldID := p.KeyID(t)
	badKey := "/registry/example.com/widgets/e2e/widget-015"
	if v, err := harness.ParseKMSv2(c.Etcd.Get(t, badKey), provider); err != nil || v.KeyID != oldID {
		t.Fatalf("widget stored as %v, %v: want KMS v2 under %s", v, err, oldID)
	}
	// widget-015 becomes unreadable: a KMS v2 value whose EncryptedObject is garbage.
	if _, err := c.Etcd.Client.Put(t.Context(), badKey, "k8s:enc:kms:v2:"+provider+":\x0a\x03bad"); err != nil {
		t.Fatal(err)
	}
	probe := create(t, cs, "configmaps", "e2e", "probe")
	newID := b.rotate(t, p)
	waitForWrites(t, c, 3*time.Minute, "writes under the new key id", probe, func(raw []byte) error {
		return kmsStored(raw, probe, newID)
	})

	etcdFlags := []string{"--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ",")}
	removeArgs := append([]string{"keygen", "--localaes-key-file", b.keyFile, "--remove", "key1"}, etcdFlags...)
	out, errOut, code := kmsctl(t, removeArgs...)
	if code != 3 || !strings.Contains(errOut, "not removing") {
		t.Errorf("key removal before rewrite: exit %d\n%s\n%s", code, out, errOut)
	}

	cfgFile := c.APIServer.EncryptionConfigPath()
	kubeconfig := c.APIServer.Kubeconfig(t, "")
	out, errOut, code = kmsctl(t, "rewrite", "--kubeconfig", kubeconfig, "--encryption-config", cfgFile,
		"--apiservers", c.APIServer.URL, "--page-size", "10", "-o", "json")
	t.Logf("rewrite stderr:\n%s", errOut)
	if code != 3 {
		t.Fatalf("rewrite with an unreadable widget: exit %d, want 3\n%s", code, out)
	}
	sum := parseSummary(t, out)
	if len(sum.Failures) != 1 || sum.Failures[0].Name != "widget-015" || sum.Failures[0].Resource != "widgets.example.com" {
		t.Errorf("failures %+v, want widget-015 alone", sum.Failures)
	}
	if !strings.Contains(errOut, "widget-015") {
		t.Errorf("stderr does not name widget-015")
	}
	examined := map[string]int64{}
	for _, r := range sum.Resources {
		examined[r.Resource] = r.Examined
	}
	if examined["widgets.example.com"] != 30 || examined["secrets"] < 30 {
		t.Errorf("examined %v: want 30 widgets and every secret", examined)
	}
	for key, raw := range c.Etcd.List(t, "/registry/example.com/widgets/") {
		if key == badKey {
			continue
		}
		if v, err := harness.ParseKMSv2(raw, provider); err != nil || v.KeyID != newID {
			t.Errorf("%s: %v, key id %q, want %q", key, err, v.KeyID, newID)
		}
	}
	checkAllKMSStored(t, c.Etcd, newID, "secrets")

	// The etcd source: nothing is stale but the unreadable widget, which is all it patches.
	if _, err := c.Etcd.Client.Delete(t.Context(), badKey); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = kmsctl(t, append([]string{"rewrite", "--kubeconfig", kubeconfig, "--encryption-config", cfgFile,
		"--apiservers", c.APIServer.URL, "-o", "json"}, etcdFlags...)...)
	if code != 0 {
		t.Fatalf("rewrite from etcd: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "verifying scan") {
		t.Errorf("no verifying scan on stderr: %s", errOut)
	}
	for _, r := range parseSummary(t, out).Resources {
		if r.Rewritten != 0 || r.Current != 0 || r.Skipped != r.Examined {
			t.Errorf("rewrite from etcd, %s: %+v: want every object skipped as current", r.Resource, r)
		}
	}

	out, errOut, code = kmsctl(t, removeArgs...)
	if code != 0 || !strings.Contains(out, "removed key "+oldID) {
		t.Errorf("key removal after rewrite: exit %d\n%s\n%s", code, out, errOut)
	}
	if strings.Contains(string(mustRead(t, b.keyFile)), "name: key1") {
		t.Error("key1 is still in the key file")
	}
}

// createWidgetCRD installs widgets.example.com (namespaced, v1, any spec) and waits until
// it is served.
func createWidgetCRD(t *testing.T, dyn dynamic.Interface) {
	t.Helper()
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "widgets.example.com"},
		"spec": map[string]any{
			"group": "example.com", "scope": "Namespaced",
			"names": map[string]any{"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
			"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
		},
	}}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := dyn.Resource(crds).Create(t.Context(), crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, time.Minute, "widgets served", func(ctx context.Context) error {
		_, err := dyn.Resource(widgets).Namespace("default").List(ctx, metav1.ListOptions{Limit: 1})
		return err
	})
}

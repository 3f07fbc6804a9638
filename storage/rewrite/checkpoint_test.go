package rewrite

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kmsplugin/kms-plugin/storage/rollout"
)

var clusterA = Cluster{Server: "https://a.example:6443", UID: "uid-a",
	Writes: &Writes{KeyIDs: map[string]string{"kms-plugin": rollout.HashKeyID("key-2")}, Configs: []string{rollout.HashConfig([]byte("config"))}}}

// unfinished writes a checkpoint of a run on clusterA that finished 2 pages of secrets.
func unfinished(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cp.json")
	cp := NewCheckpoint(path, clusterA)
	if err := cp.begin("api", []Target{secrets}); err != nil {
		t.Fatal(err)
	}
	if err := cp.update("secrets", func(s *ResourceState) { s.Pages, s.Objects, s.After = 2, 20, "ns/obj-019" }); err != nil {
		t.Fatal(err)
	}
	return path
}

// with returns clusterA changed by f (Writes copied).
func with(f func(*Cluster)) Cluster {
	c := clusterA
	w := *c.Writes
	c.Writes = &w
	f(&c)
	return c
}

// --resume goes on only on the cluster the checkpoint was made on, while the apiservers write
// under what they wrote under then, and only an unfinished run; the file is read as a private
// file.
func TestLoadCheckpointRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		file    func(t *testing.T, path string) // changes the unfinished checkpoint at path
		cluster Cluster
		want    string // "" for a checkpoint that resumes
	}{
		{name: "same cluster", cluster: clusterA},
		{name: "same cluster through another server", cluster: with(func(c *Cluster) { c.Server = "https://10.0.0.2:6443" })},
		{name: "another cluster", cluster: with(func(c *Cluster) { c.UID = "uid-b" }), want: "made on another cluster"},
		{name: "a new KMS key id", cluster: with(func(c *Cluster) { c.Writes.KeyIDs = map[string]string{"kms-plugin": rollout.HashKeyID("key-3")} }),
			want: "stale again"},
		{name: "a new EncryptionConfiguration", cluster: with(func(c *Cluster) { c.Writes.Configs = []string{rollout.HashConfig([]byte("rotated"))} }),
			want: "stale again"},
		{name: "write keys unknown now", cluster: with(func(c *Cluster) { c.Writes = nil }), want: "cannot tell what the apiservers write under now"},
		{name: "write keys unknown then", cluster: clusterA, want: "does not record what the apiservers wrote under",
			file: func(t *testing.T, path string) {
				editJSON(t, path, func(m map[string]any) { m["cluster"].(map[string]any)["writes"] = nil })
			}},
		{name: "finished", cluster: clusterA, want: "finished at",
			file: func(t *testing.T, path string) {
				editJSON(t, path, func(m map[string]any) { m["finished"] = time.Now().UTC().Format(time.RFC3339) })
			}},
		{name: "version 1", cluster: clusterA, want: "version 1",
			file: func(t *testing.T, path string) {
				editJSON(t, path, func(m map[string]any) { m["version"] = 1; delete(m, "cluster") })
			}},
		{name: "readable by others", cluster: clusterA, want: "chmod 600",
			file: func(t *testing.T, path string) {
				if err := os.Chmod(path, 0o644); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := unfinished(t)
			if tc.file != nil {
				tc.file(t, path)
			}
			cp, err := LoadCheckpoint(path, tc.cluster)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if st := cp.Resource("secrets"); st.Pages != 2 || st.After != "ns/obj-019" {
					t.Errorf("resumed state %+v", st)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadCheckpoint: %v, want an error saying %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "--resume") {
				t.Errorf("the error does not say it is about --resume: %v", err)
			}
		})
	}
}

func editJSON(t *testing.T, path string, f func(map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A run that ends with every resource done marks its checkpoint finished, which --resume
// refuses; one that stops early does not.
func TestRunFinishesCheckpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cp.json")
	f := newFakeAPI(25)
	if _, err := Run(t.Context(), Options{Client: f, Targets: []Target{secrets}, PageSize: 10, Checkpoint: NewCheckpoint(path, clusterA)}); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCheckpoint(path, clusterA); err == nil || !strings.Contains(err.Error(), "finished") {
		t.Errorf("resuming a finished run: %v, want it refused as finished", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	path = filepath.Join(t.TempDir(), "cp.json")
	if _, err := Run(ctx, Options{Client: newFakeAPI(25), Targets: []Target{secrets}, PageSize: 10, Checkpoint: NewCheckpoint(path, clusterA)}); err == nil {
		t.Fatal("a cancelled run returned no error")
	}
	if _, err := LoadCheckpoint(path, clusterA); err != nil {
		t.Errorf("resuming an interrupted run: %v", err)
	}
}

func TestWritesOf(t *testing.T) {
	cfg := rollout.HashConfig([]byte("config"))
	at := time.Unix(1000, 0)
	node := func(endpoint, keyID string) rollout.State {
		return rollout.State{Endpoint: endpoint, ConfigHash: cfg,
			Providers: map[string]rollout.ProviderKeys{"kms-plugin": {Status: rollout.HashKeyID(keyID), StatusAt: at}}}
	}
	w := WritesOf([]rollout.State{node("a", "key-2"), node("b", "key-2")})
	if !w.Equal(clusterA.Writes) {
		t.Errorf("WritesOf two agreeing apiservers: %v, want %v", w, clusterA.Writes)
	}
	if w := WritesOf([]rollout.State{node("a", "key-2"), node("b", "key-1")}); w != nil {
		t.Errorf("WritesOf apiservers that disagree: %v, want nil", w)
	}
	if w := WritesOf([]rollout.State{node("a", "key-2"), {Endpoint: "b", Err: "connection refused"}}); w != nil {
		t.Errorf("WritesOf with an unread apiserver: %v, want nil", w)
	}
	if w := WritesOf(nil); w != nil {
		t.Errorf("WritesOf no apiserver: %v, want nil", w)
	}
}

func TestClusterOf(t *testing.T) {
	cs := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system", UID: "uid-a"}})
	c, err := ClusterOf(t.Context(), cs, "https://a.example:6443", clusterA.Writes)
	if err != nil {
		t.Fatal(err)
	}
	if c.UID != "uid-a" || c.Server != "https://a.example:6443" || !c.Writes.Equal(clusterA.Writes) {
		t.Errorf("ClusterOf: %+v", c)
	}
	if _, err := ClusterOf(t.Context(), fake.NewClientset(), "https://b", nil); err == nil || !strings.Contains(err.Error(), "kube-system") {
		t.Errorf("ClusterOf without a kube-system namespace: %v", err)
	}
}

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// rewriteSummary is the part of `kmsctl rewrite -o json` the tests read.
type rewriteSummary struct {
	Source    string `json:"source"`
	Resources []struct {
		Resource     string `json:"resource"`
		Examined     int64  `json:"examined"`
		Rewritten    int64  `json:"rewritten"`
		Current      int64  `json:"current"`
		Skipped      int64  `json:"skippedCurrent"`
		Failed       int64  `json:"failed"`
		Pages        int    `json:"pages"`
		ResumedPages int    `json:"resumedPages"`
	} `json:"resources"`
	Failures []struct {
		Resource, Namespace, Name, Reason string
	} `json:"failures"`
	Seconds float64 `json:"seconds"`
}

// kmsctl runs the kmsctl binary and returns its stdout, stderr and exit code.
func kmsctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(harness.KmsctlBinary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Dir = t.TempDir()
	err := cmd.Run()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return out.String(), errb.String(), ee.ExitCode()
		}
		t.Fatalf("kmsctl %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

func parseSummary(t *testing.T, stdout string) rewriteSummary {
	t.Helper()
	var s rewriteSummary
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("rewrite -o json printed %q: %v", stdout, err)
	}
	return s
}

// createSecrets writes n small Secrets named prefix-<i> in namespace, 16 at a time.
func createSecrets(t *testing.T, cs kubernetes.Interface, namespace, prefix string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := atomic.Int64{}
	for range 16 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%05d", prefix, i), Namespace: namespace},
					Data: map[string][]byte{"value": []byte(fmt.Sprintf("plaintext-%d", i))}}
				if _, err := cs.CoreV1().Secrets(namespace).Create(t.Context(), s, metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("creating secrets: %v", err)
	}
}

// rotated starts a cluster with the localaes backend, writes n Secrets in namespace "e2e",
// rotates the key and waits until the apiserver writes under the new key id, which it returns
// with the old one.
func rotated(t *testing.T, n int, apiserverArgs ...string) (c *harness.EncryptedCluster, b *localAES, oldID, newID string) {
	t.Helper()
	b = newLocalAES(t).(*localAES)
	if len(apiserverArgs) == 0 {
		c = startEncryptedCluster(t, b)
	} else {
		p := harness.StartPlugin(t, b.pluginArgs()...)
		cl := harness.StartCluster(t, harness.APIServerOptions{ExtraArgs: apiserverArgs,
			EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, p.Endpoint), harness.Identity())})
		c = &harness.EncryptedCluster{Cluster: *cl, Plugin: p, Provider: provider}
	}
	cs := c.APIServer.Clientset
	createNamespace(t, cs, "e2e")
	createSecrets(t, cs, "e2e", "s", n)
	probe := create(t, cs, "configmaps", "e2e", "probe")
	oldID = c.Plugin.KeyID(t)
	newID = b.rotate(t, c.Plugin)
	waitForWrites(t, &c.Cluster, 3*time.Minute, "writes under the new key id", probe, func(raw []byte) error {
		return kmsStored(raw, probe, newID)
	})
	return c, b, oldID, newID
}

// The main case: 2,000 Secrets under one key, the key rotated, rewrite (defaults
// but for the resources) while another client keeps updating 20 of them. Every Secret is on the
// new key afterwards, read from etcd, and none of the other client's updates is lost.
func TestRewriteRotation(t *testing.T) {
	t.Parallel()
	c, _, oldID, newID := rotated(t, 2000)
	cs := c.APIServer.Clientset
	stale := 0
	for _, raw := range c.Etcd.List(t, "/registry/secrets/e2e/") {
		if v, err := harness.ParseKMSv2(raw, provider); err == nil && v.KeyID == oldID {
			stale++
		}
	}
	if stale != 2000 {
		t.Fatalf("%d Secrets under the old key before rewrite, want 2000", stale)
	}

	// The other client: read-modify-write of 20 Secrets in a loop (each about 20 times a
	// second), remembering what it wrote. It stops between updates, never inside one, so that
	// what it remembers is what it wrote last.
	ctx := t.Context()
	var stopping atomic.Bool
	var wg sync.WaitGroup
	last := make([]string, 20)
	var updates atomic.Int64
	for i := range last {
		wg.Go(func() {
			name := fmt.Sprintf("s-%05d", i*97)
			for n := 0; !stopping.Load(); n++ {
				time.Sleep(50 * time.Millisecond)
				value := fmt.Sprintf("update-%d-%d", i, n)
				err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
					s, err := cs.CoreV1().Secrets("e2e").Get(ctx, name, metav1.GetOptions{})
					if err != nil {
						return err
					}
					s.Data["value"] = []byte(value)
					_, err = cs.CoreV1().Secrets("e2e").Update(ctx, s, metav1.UpdateOptions{})
					return err
				})
				if err == nil {
					last[i] = value
					updates.Add(1)
				} else {
					t.Errorf("updating %s: %v", name, err)
					return
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	out, errOut, code := kmsctl(t, "rewrite", "--kubeconfig", c.APIServer.Kubeconfig(t, ""),
		"--resources", "secrets,configmaps", "--apiservers", c.APIServer.URL, "-o", "json")
	stopping.Store(true)
	wg.Wait()
	t.Logf("rewrite stderr:\n%s", errOut)
	if code != 0 {
		t.Fatalf("rewrite exited %d: %s", code, out)
	}
	sum := parseSummary(t, out)
	t.Logf("rewrite: %+v in %.2fs; the other client made %d updates meanwhile", sum.Resources, sum.Seconds, updates.Load())
	if updates.Load() < 20 {
		t.Errorf("the other client made only %d updates during the run", updates.Load())
	}
	checkAllKMSStored(t, c.Etcd, newID)
	for i, want := range last {
		name := fmt.Sprintf("s-%05d", i*97)
		s, err := cs.CoreV1().Secrets("e2e").Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(s.Data["value"]); got != want {
			t.Errorf("%s holds %q, but the other client's last update wrote %q: an update was lost", name, got, want)
		}
	}
	var secrets int64
	for _, r := range sum.Resources {
		if r.Resource == "secrets" {
			secrets = r.Examined
		}
	}
	if secrets < 2000 {
		t.Errorf("rewrite examined %d secrets, want at least 2000", secrets)
	}
}

// Killed with SIGKILL halfway, then --resume: it finishes, and the pages finished before the
// kill are not listed or patched again, even though etcd compacted the revision the saved
// continue token reads at (the apiserver answers 410 Gone and a token to go on with).
func TestRewriteResume(t *testing.T) {
	t.Parallel()
	const n, page = 600, 50
	// Without the watch cache every page comes from etcd, so once etcd compacts the saved
	// continue token's revision the apiserver answers 410 Gone, as on a busy real cluster
	// whose watch cache has moved on.
	c, _, _, newID := rotated(t, n, "--watch-cache=false")
	kubeconfig := c.APIServer.Kubeconfig(t, "")
	dir := t.TempDir()
	checkpoint := filepath.Join(dir, "checkpoint.json")
	args := []string{"rewrite", "--kubeconfig", kubeconfig, "--resources", "secrets", "--apiservers", c.APIServer.URL,
		"--page-size", fmt.Sprint(page), "--checkpoint", checkpoint, "-o", "json"}
	// Slow enough to be caught halfway: one patch at a time, at most 60 a second.
	p := harness.Start(t, "kmsctl-rewrite", harness.KmsctlBinary(t), append(args, "--parallel=1", "--qps=60"))
	var done int
	harness.Eventually(t, time.Minute, "three pages checkpointed", func(context.Context) error {
		b, err := os.ReadFile(checkpoint)
		if err != nil {
			return err
		}
		var cp struct {
			Resources map[string]struct{ Pages int } `json:"resources"`
		}
		if err := json.Unmarshal(b, &cp); err != nil {
			return err
		}
		if done = cp.Resources["secrets"].Pages; done < 3 {
			return fmt.Errorf("%d pages", done)
		}
		return nil
	})
	if p.Exited() {
		t.Fatalf("rewrite finished before it was killed:\n%s", p.Log())
	}
	p.Kill()
	b, _ := os.ReadFile(checkpoint)
	var cp struct {
		Resources map[string]struct {
			Pages   int
			Objects int64
		} `json:"resources"`
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		t.Fatal(err)
	}
	finished := cp.Resources["secrets"]
	t.Logf("killed after %d finished pages (%d objects)", finished.Pages, finished.Objects)

	// Compact etcd: the saved continue token's revision is gone.
	resp, err := c.Etcd.Client.Get(t.Context(), "/registry/secrets/e2e/s-00000")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Etcd.Client.Compact(t.Context(), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := kmsctl(t, append(args, "--resume")...)
	t.Logf("resumed rewrite stderr:\n%s", errOut)
	if code != 0 {
		t.Fatalf("rewrite --resume exited %d: %s", code, out)
	}
	sum := parseSummary(t, out)
	r := sum.Resources[0]
	if r.ResumedPages != finished.Pages {
		t.Errorf("resumed with %d finished pages, the checkpoint had %d", r.ResumedPages, finished.Pages)
	}
	// Only what was not finished is examined again: the rest of the Secrets (the apiserver's
	// own included), never one of a finished page.
	total := int64(len(c.Etcd.List(t, "/registry/secrets/")))
	if r.Examined+finished.Objects != total {
		t.Errorf("the resumed run examined %d objects after %d finished ones; there are %d: finished pages were redone or objects missed", r.Examined, finished.Objects, total)
	}
	if !strings.Contains(errOut, "continue token expired") {
		t.Errorf("the resumed run did not meet the expired continue token (410 Gone) it is meant to handle:\n%s", errOut)
	}
	checkAllKMSStored(t, c.Etcd, newID, "secrets")
}

// rewrite --via storage-version-migration on a cluster whose kube-controller-manager (built
// from the same Kubernetes module as the apiserver) runs the storage version migrator: the
// migrations it creates succeed, and every Secret ends on the new key.
func TestRewriteViaStorageVersionMigration(t *testing.T) {
	t.Parallel()
	const n = 300
	c, _, _, newID := rotated(t, n)
	harness.StartKubeControllerManager(t, c.APIServer, "garbage-collector-controller", "storage-version-migrator-controller")
	out, errOut, code := kmsctl(t, "rewrite", "--kubeconfig", c.APIServer.Kubeconfig(t, ""), "--resources", "secrets",
		"--apiservers", c.APIServer.URL, "--via", "storage-version-migration", "-o", "json")
	t.Logf("rewrite --via storage-version-migration:\n%s\n%s", errOut, out)
	if code != 0 {
		t.Fatalf("exit status %d", code)
	}
	sum := parseSummary(t, out)
	if sum.Source != "storage-version-migration" || len(sum.Resources) != 1 || sum.Resources[0].Failed != 0 {
		t.Fatalf("summary %+v", sum)
	}
	// The migrator reports no count: rewrite counts the objects at the migration's
	// resourceVersion. Nothing wrote Secrets meanwhile, so that is every Secret in etcd.
	if got, want := sum.Resources[0].Examined, int64(len(c.Etcd.List(t, "/registry/secrets/"))); got != want || want < n {
		t.Errorf("the summary counts %d secrets; etcd holds %d", got, want)
	}
	checkAllKMSStored(t, c.Etcd, newID, "secrets")
}

// The hostile review on real servers. --resume of a finished run, of a run made before
// a new rotation, and of another cluster's checkpoint each exited 0 having examined nothing,
// every Secret left on the old key: each is refused (exit 1, saying why), and a fresh run then
// rewrites everything. Before that: apiservers whose metrics cannot be reached are said to be
// unreachable, with exit 1 and the --apiservers flag named, not blamed for writing another key.
func TestRewriteResumeRefusesStaleCheckpoint(t *testing.T) {
	t.Parallel()
	a, keysA, _, idA := rotated(t, 40)
	b, _, _, idB := rotated(t, 30)
	checkpoint := filepath.Join(t.TempDir(), "checkpoint.json")
	rewrite := func(c *harness.EncryptedCluster, extra ...string) (string, string, int) {
		return kmsctl(t, append([]string{"rewrite", "--kubeconfig", c.APIServer.Kubeconfig(t, ""), "--resources", "secrets",
			"--apiservers", c.APIServer.URL, "--checkpoint", checkpoint, "-o", "json"}, extra...)...)
	}
	refused := func(what, want string, out, errOut string, code int) {
		t.Helper()
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("%s: exit %d, want 1 and %q\nstdout: %s\nstderr: %s", what, code, want, out, errOut)
		}
	}

	dead := fmt.Sprintf("https://127.0.0.1:%d", harness.FreePort(t))
	out, errOut, code := kmsctl(t, "rewrite", "--kubeconfig", a.APIServer.Kubeconfig(t, ""), "--resources", "secrets", "--apiservers", dead)
	refused("metrics unreachable", "unreachable", out, errOut, code)
	if !strings.Contains(errOut, "--apiservers") || strings.Contains(errOut, "do not all write") {
		t.Errorf("metrics unreachable: the message should name --apiservers and not blame the keys:\n%s", errOut)
	}

	out, errOut, code = rewrite(a)
	if code != 0 {
		t.Fatalf("rewrite on cluster A: exit %d\n%s\n%s", code, out, errOut)
	}
	checkAllKMSStored(t, a.Etcd, idA, "secrets")
	out, errOut, code = rewrite(a, "--resume")
	refused("--resume of a finished run", "finished", out, errOut, code)

	// A new rotation on A: the finished pages are stale again.
	probe := create(t, a.APIServer.Clientset, "configmaps", "e2e", "probe-2")
	idA2 := keysA.rotate(t, a.Plugin)
	waitForWrites(t, &a.Cluster, 3*time.Minute, "A writes under its newest key", probe, func(raw []byte) error {
		return kmsStored(raw, probe, idA2)
	})
	out, errOut, code = rewrite(a, "--resume")
	refused("--resume after a new rotation", "stale again", out, errOut, code)

	// A's checkpoint on cluster B.
	out, errOut, code = rewrite(b, "--resume")
	refused("--resume of another cluster's checkpoint", "another cluster", out, errOut, code)

	// Fresh runs rewrite everything.
	for _, c := range []struct {
		cluster *harness.EncryptedCluster
		keyID   string
	}{{a, idA2}, {b, idB}} {
		out, errOut, code = rewrite(c.cluster)
		if code != 0 {
			t.Fatalf("fresh rewrite: exit %d\n%s\n%s", code, out, errOut)
		}
		checkAllKMSStored(t, c.cluster.Etcd, c.keyID, "secrets")
	}
}

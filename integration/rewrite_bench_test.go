package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// TestRewriteMeasure records the figures of docs/performance.md ("Storage migration"): on
// the same cluster and data, the time of `kmsctl rewrite --resources secrets` (defaults)
// against the kubectl pipeline's work done by client-go (list every Secret in one request,
// then replace each, one at a time, as `kubectl replace -f -` does), each after a fresh
// rotation, and rewrite's peak RSS. It runs only with KMS_PLUGIN_MEASURE_REWRITE=<secrets>
// (for example 2000 or 20000), and with KMSCTL_BIN pointing at a kmsctl built without the
// race detector, so that the figures are the shipped binary's.
func TestRewriteMeasure(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("KMS_PLUGIN_MEASURE_REWRITE"))
	if n == 0 {
		t.Skip("set KMS_PLUGIN_MEASURE_REWRITE=<number of secrets> (and KMSCTL_BIN) to measure")
	}
	c, b, _, newID := rotated(t, n)
	cs := c.APIServer.Clientset
	kubeconfig := c.APIServer.Kubeconfig(t, "")

	start := time.Now()
	cmd := exec.Command(harness.KmsctlBinary(t), "rewrite", "--kubeconfig", kubeconfig, "--resources", "secrets",
		"--apiservers", c.APIServer.URL, "--checkpoint", t.TempDir()+"/cp.json")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("rewrite: %v\n%s", err, out.String())
	}
	rewriteTime := time.Since(start)
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // KiB on Linux
	checkAllKMSStored(t, c.Etcd, newID, "secrets")
	t.Logf("rewrite output:\n%s", out.String())

	// Rotate again, so the pipeline has as much to rewrite.
	probe := create(t, cs, "configmaps", "e2e", "probe2")
	newer := b.rotate(t, c.Plugin)
	waitForWrites(t, &c.Cluster, 3*time.Minute, "writes under the newer key id", probe, func(raw []byte) error {
		return kmsStored(raw, probe, newer)
	})
	start = time.Now()
	replaced := pipeline(t, cs)
	pipelineTime := time.Since(start)
	checkAllKMSStored(t, c.Etcd, newer, "secrets")

	t.Logf("MEASURE secrets=%d rewrite=%.2fs rewrite_peak_rss=%.1fMiB pipeline(client-go, %d replaced)=%.2fs ratio=%.2fx",
		n, rewriteTime.Seconds(), float64(rss)/1024, replaced, pipelineTime.Seconds(),
		pipelineTime.Seconds()/rewriteTime.Seconds())
}

// pipeline is `kubectl get secrets -A -o json | kubectl replace -f -`: one unpaged LIST of
// every Secret with its content, then one PUT per Secret in order (kubectl replace sends the
// items one at a time), stopping at nothing: conflicts are retried from a fresh GET.
func pipeline(t *testing.T, cs kubernetes.Interface) int {
	ctx := context.Background()
	list, err := cs.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	for i := range list.Items {
		s := &list.Items[i]
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			_, err := cs.CoreV1().Secrets(s.Namespace).Update(ctx, s, metav1.UpdateOptions{})
			if err != nil {
				if cur, gerr := cs.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{}); gerr == nil {
					s = cur
				}
			}
			return err
		})
		if err != nil {
			t.Fatalf("replacing %s/%s: %v", s.Namespace, s.Name, err)
		}
		n.Add(1)
	}
	return int(n.Load())
}

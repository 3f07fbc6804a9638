package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// Apiservers whose metrics cannot be reached are not apiservers that disagree: rewrite says
// the metrics were unreachable, names --apiservers, and exits 1 (it could not run the check),
// not 3.
func TestRewriteMetricsUnreachable(t *testing.T) {
	dead := fmt.Sprintf("https://127.0.0.1:%d", harness.FreePort(t))
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+dead+`", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI("rewrite", "--kubeconfig", kubeconfig, "--resources", "secrets", "--apiservers", dead)
	if err == nil {
		t.Fatalf("rewrite with unreachable metrics succeeded:\n%s", out)
	}
	var failed checkFailure
	if errors.As(err, &failed) {
		t.Errorf("exit status 3 (a failed check) for metrics that could not be read: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"unreachable", "connection refused", "--apiservers", "--force"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q: %s", want, msg)
		}
	}
	if strings.Contains(msg, "do not all write") {
		t.Errorf("the error blames the apiservers' keys: %s", msg)
	}
}

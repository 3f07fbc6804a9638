package integration

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// A real kube-apiserver keeps exporting the key id series of a KMS provider that its automatic
// reload removed, with their last times, until it restarts. rollout-status, run with the new
// file, waits until the apiserver runs it and then shows no row for the removed provider; the
// remaining provider's row names the plugin's key id beside the hash the apiserver publishes.
func TestRolloutStatusDropsRemovedProvider(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fileA, fileB := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	keygen(t, fileA)
	keygen(t, fileB)
	a := harness.StartPlugin(t, "--backend=localaes", "--localaes-key-file="+fileA)
	b := harness.StartPlugin(t, "--backend=localaes", "--localaes-key-file="+fileB)
	c := harness.StartCluster(t, harness.APIServerOptions{AutomaticReload: true, EncryptionConfig: harness.EncryptionConfig(encrypted,
		harness.KMSv2(provider, a.Endpoint), harness.KMSv2("old-plugin", b.Endpoint), harness.Identity())})
	kubeconfig, config := c.APIServer.Kubeconfig(t, ""), c.APIServer.EncryptionConfigPath()
	rolloutStatus := func(timeout string) (string, string, int) {
		return kmsctl(t, "rollout-status", "--kubeconfig", kubeconfig, "--apiservers", c.APIServer.URL,
			"--encryption-config", config, "--timeout", timeout, "--interval", "2s")
	}
	lastTable := func(out string) string { return out[max(0, strings.LastIndex(out, "APISERVER")):] }

	out, errOut, code := rolloutStatus("1m")
	if code != 0 || !strings.Contains(lastTable(out), "old-plugin") {
		t.Fatalf("before the reload, both providers: exit %d\n%s%s", code, out, errOut)
	}
	c.APIServer.WriteEncryptionConfig(harness.EncryptionConfig(encrypted, harness.KMSv2(provider, a.Endpoint), harness.Identity()))
	out, errOut, code = rolloutStatus("3m")
	last := lastTable(out)
	t.Logf("rollout-status after the reload, last round:\n%s%s", last, errOut)
	if code != 0 {
		t.Fatalf("rollout-status with the new file: exit %d", code)
	}
	if strings.Contains(last, "old-plugin") {
		t.Errorf("the provider removed by the reload still has a row")
	}
	if keyID := a.KeyID(t); strings.Count(last, keyID+" (") != 2 {
		t.Errorf("the row does not name the plugin's key id %s under WRITES WITH and PLUGIN KEY", keyID)
	}
}

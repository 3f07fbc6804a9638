package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// The Vault rotation of docs/rotation.md, step by step as written, on a real Vault, etcd and
// kube-apiserver. Right after `vault write -f transit/keys/<key>/rotate` the plugin still
// reports the version before it (it adopts a new version once two consecutive checks have seen
// it) and so does the apiserver, so an agreement of apiservers and plugins is not yet the end
// of the rotation: rollout-status given the Vault flags must not exit 0 until the plugin's key
// id names the latest version and the apiserver writes under it, and doctor must say that the
// key's latest version is newer than the running plugin's key id. After the documented
// sequence (rollout-status, rewrite, scan --fail-on-stale) raising min_decryption_version
// loses nothing, also after an apiserver restart.
func TestVaultRotationRunbook(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	b := newVaultBackend(t, v).(*vaultBackend)
	// A check every 30 s: the plugin adopts a rotation 30 to 60 s after it, as with the default
	// minute, only sooner.
	p := harness.StartPlugin(t, append(b.pluginArgs(), "--check-interval=30s")...)
	c := harness.StartCluster(t, harness.APIServerOptions{EncryptionConfig: harness.EncryptionConfig(encrypted,
		harness.KMSv2(provider, p.Endpoint), harness.Identity())})
	cs := c.APIServer.Clientset
	createNamespace(t, cs, "e2e")
	old := createMany(t, cs, "e2e", "old", 4)
	oldID := p.KeyID(t)
	checkKMSStored(t, c.Etcd, oldID, old...)

	kubeconfig, config := c.APIServer.Kubeconfig(t, ""), c.APIServer.EncryptionConfigPath()
	vaultFlags := []string{"--vault-addr", v.Addr, "--vault-transit-key", b.key, "--vault-token-file", b.tokenFile}
	rolloutStatus := func(timeout string) (string, string, int) {
		return kmsctl(t, append([]string{"rollout-status", "--kubeconfig", kubeconfig, "--apiservers", c.APIServer.URL,
			"--encryption-config", config, "--timeout", timeout, "--interval", "2s"}, vaultFlags...)...)
	}
	doctor := func() string {
		out, errOut, _ := kmsctl(t, append([]string{"doctor", "--running", "--listen", p.Socket, "--backend", "vault",
			"--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ",")}, vaultFlags...)...)
		t.Logf("doctor:\n%s%s", out, errOut)
		return out
	}
	line := func(out, prefix string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		return ""
	}

	// Step: rotate, then at once doctor and rollout-status.
	v.RotateKey(t, "transit", b.key)
	latest := latestKeyID(t, v, b.key)
	if id := p.KeyID(t); id != oldID {
		t.Fatalf("the plugin reports %s a moment after the rotation: it adopts a version only after two checks 30 s apart", id)
	}
	out := doctor()
	if l := line(out, "warn  plugin key id"); !strings.Contains(l, oldID) || !strings.Contains(l, "names v1") ||
		!strings.Contains(l, "latest version of transit/keys/"+b.key+" is v2 ("+latest+")") {
		t.Errorf("doctor right after the rotation: plugin key id line %q", l)
	}
	if l := line(out, "ok    vault key versions"); !strings.Contains(l, "v1: ") || !strings.Contains(l, "under versions below the latest (v2)") {
		t.Errorf("doctor right after the rotation: versions line %q", l)
	}
	out, errOut, code := rolloutStatus("3s")
	t.Logf("rollout-status at once:\n%s%s", out, errOut)
	if code != 3 || !strings.Contains(out, "not the latest "+latest) {
		t.Errorf("rollout-status right after the rotation: exit %d, want 3 naming the latest key id %s", code, latest)
	}

	// rollout-status waits until the plugin has adopted the version and the apiserver writes
	// under it.
	out, errOut, code = rolloutStatus("4m")
	last := out[max(0, strings.LastIndex(out, "APISERVER")):]
	t.Logf("rollout-status, last round:\n%s%s", last, errOut)
	if code != 0 {
		t.Fatalf("rollout-status: exit %d", code)
	}
	if id := p.KeyID(t); id != latest {
		t.Fatalf("rollout-status returned 0 with the plugin on %s, not the latest %s", id, latest)
	}
	if !strings.Contains(last, latest+" (") {
		t.Errorf("the last table does not name the latest key id %s", latest)
	}
	fresh := createMany(t, cs, "e2e", "fresh", 2)
	checkKMSStored(t, c.Etcd, latest, fresh...)
	if l := line(doctor(), "ok    plugin key id"); !strings.Contains(l, latest) {
		t.Errorf("doctor once the plugin has adopted it: plugin key id line %q", l)
	}

	// Rewrite, confirm, retire v1.
	if out, errOut, code := kmsctl(t, "rewrite", "--kubeconfig", kubeconfig, "--apiservers", c.APIServer.URL, "--encryption-config", config); code != 0 {
		t.Fatalf("rewrite: exit %d\n%s\n%s", code, out, errOut)
	}
	scan := []string{"scan", "--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ","), "--encryption-config", config, "--fail-on-stale"}
	if out, errOut, code := kmsctl(t, scan...); code != 0 {
		t.Fatalf("scan --fail-on-stale after rewrite: exit %d\n%s\n%s", code, out, errOut)
	}
	if l := line(doctor(), "ok    vault key versions"); !strings.Contains(l, "all under the latest version v2") {
		t.Errorf("doctor after the rewrite: versions line %q", l)
	}
	v.SetMinDecryptionVersion(t, "transit", b.key, 2)
	c.APIServer.Restart(t)
	checkReads(t, cs, append(old, fresh...)...)
}

// latestKeyID is the key id the plugin reports once it has adopted the transit key's latest
// version.
func latestKeyID(t *testing.T, v *harness.Vault, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	secret, err := vault.ReadKey(ctx, v.Root, "transit", key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := vault.ParseKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	id, ok := k.KeyID(k.LatestVersion)
	if !ok {
		t.Fatalf("latest version %d not listed", k.LatestVersion)
	}
	return id
}

package integration

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// TestRecoveryKeyAfterTheTransitKeyIsLost is docs/disaster-recovery.md's drill "the transit
// key is lost", on real servers: a cluster whose plugin seals each local KEK to a recovery
// public key; the transit key destroyed and the Vault cluster gone. With the private key alone
// (no Vault, no plugin) kmsctl scan proves every object opens and kmsctl decrypt reads every
// Secret and ConfigMap of the etcd snapshot. Then the cluster comes back: a NEW Vault, the
// plugin in break-glass mode on it, an apiserver on the restored etcd reads everything, kmsctl
// rewrite moves every object to the new key, and the plugin restarted without the private key
// (and the apiserver restarted, its caches gone) serves everything.
func TestRecoveryKeyAfterTheTransitKeyIsLost(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	priv, pub, recoveryID := recoveryKeys(t, dir)

	// Before: Vault A, its transit key, a plugin sealing to the recovery key.
	old := harness.StartVaultDev(t)
	old.EnableTransit(t, "transit")
	old.CreateKey(t, "transit", "k8s")
	c := harness.StartEncryptedCluster(t, append(vaultPluginArgs(old.Addr, "transit", "k8s", leastPrivilegeToken(t, old, "transit", "k8s")),
		"--recovery-public-key="+pub)...)
	createNamespace(t, c.APIServer.Clientset, "drill")
	objs := createMany(t, c.APIServer.Clientset, "drill", "obj", 10)
	oldKeyID := c.Plugin.KeyID(t)
	checkKMSStored(t, c.Etcd, oldKeyID, objs...)
	snapshot := filepath.Join(dir, "etcd.snapshot")
	c.Etcd.Snapshot(t, snapshot)
	encConfig := filepath.Join(dir, "encryption.yaml")
	if err := os.WriteFile(encConfig, []byte(mustReadString(t, c.APIServer.EncryptionConfigPath())), 0o600); err != nil {
		t.Fatal(err)
	}

	// The disaster: the transit key destroyed, then the whole Vault cluster and control plane.
	old.Write(t, "transit/keys/k8s/config", map[string]any{"deletion_allowed": true})
	old.DeleteKey(t, "transit", "k8s")
	c.APIServer.Stop()
	c.Plugin.Stop()
	c.Etcd.Process.Stop(30 * time.Second)
	old.Process.Stop(20 * time.Second)

	// Offline, with the private key alone: the restored snapshot's every object opens.
	e := harness.StartEtcdFromSnapshot(t, snapshot)
	etcdFlags := []string{"--etcd-endpoints", strings.Join(e.Endpoints, ",")}
	out, errOut, code := kmsctl(t, append([]string{"scan", "--recovery-private-key", priv, "--fail-on-unrecoverable"}, etcdFlags...)...)
	// Beside the test's objects, the apiserver's own ConfigMaps (kube-system) are encrypted too.
	if code != 0 || allOpen(out) < len(objs) || !strings.Contains(out, "recovery key "+recoveryID+": ") {
		t.Fatalf("scan with the recovery key: exit %d, want all of at least %d objects to open\n%s\n%s", code, len(objs), out, errOut)
	}
	t.Logf("scan: %s", strings.TrimSpace(regexp.MustCompile(`recovery key \w+ given: .*`).FindString(out)))
	read := 0
	for _, o := range objs {
		value := filepath.Join(dir, "value")
		if err := os.WriteFile(value, e.Get(t, o.key()), 0o600); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := kmsctl(t, "decrypt", "--encryption-config", encConfig, "--etcd-key", o.key(), "--in", value,
			"--recovery-private-key", priv, "-o", "json")
		if code != 0 || !(strings.Contains(out, o.value) || strings.Contains(out, base64.StdEncoding.EncodeToString([]byte(o.value)))) {
			t.Errorf("decrypt %s with the recovery key: exit %d\n%s\n%s", o, code, out, errOut)
			continue
		}
		read++
	}
	t.Logf("read with the recovery private key alone: %d of %d objects", read, len(objs))

	// Back in service: a NEW Vault, the plugin in break-glass mode on it, the restored etcd.
	fresh := harness.StartVaultDev(t)
	fresh.EnableTransit(t, "transit")
	fresh.CreateKey(t, "transit", "k8s")
	normal := append(vaultPluginArgs(fresh.Addr, "transit", "k8s", leastPrivilegeToken(t, fresh, "transit", "k8s")), "--recovery-public-key="+pub)
	p := harness.StartPlugin(t, append(normal, "--break-glass-recovery-key="+priv, "--break-glass-until="+time.Now().Add(2*time.Hour).UTC().Format(time.RFC3339))...)
	if !p.LogContains("BREAK-GLASS: serving reads") {
		t.Errorf("no BREAK-GLASS error in the plugin's log:\n%s", p.Process.Log())
	}
	a := harness.StartKubeAPIServer(t, harness.APIServerOptions{
		EtcdServers:      e.Endpoints,
		EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, p.Endpoint), harness.Identity()),
	})
	checkReads(t, a.Clientset, objs...)
	newKeyID := p.KeyID(t)
	if newKeyID == oldKeyID {
		t.Fatalf("the new Vault's key id %s is the lost one's", newKeyID)
	}
	out, errOut, code = kmsctl(t, "rewrite", "--kubeconfig", a.Kubeconfig(t, ""), "--resources", "secrets,configmaps", "--apiservers", a.URL, "--force")
	if code != 0 {
		t.Fatalf("rewrite in break-glass mode: exit %d\n%s\n%s", code, out, errOut)
	}
	checkKMSStored(t, e, newKeyID, objs...)
	// What the seal costs with a real Vault: the plugin's ciphertext in each stored object.
	raw := e.Get(t, objs[0].key())
	v, err := harness.ParseKMSv2(raw, provider)
	if err != nil {
		t.Fatal(err)
	}
	const sealSize = 8 + 2 + 1 + 32 + 1 + 48 // recovery id, KEM, X25519 encapsulated key, sealed local KEK
	t.Logf("with a real Vault: the plugin's ciphertext is %d bytes (format %d; %d without the seal), the stored Secret %d bytes",
		len(v.EncryptedDEKSource), v.EncryptedDEKSource[0], len(v.EncryptedDEKSource)-sealSize, len(raw))
	if v.EncryptedDEKSource[0] != 3 || len(v.EncryptedDEKSource) >= 1024 {
		t.Errorf("plugin ciphertext: format %d, %d bytes; want format 3 under the apiserver's 1 KiB cap", v.EncryptedDEKSource[0], len(v.EncryptedDEKSource))
	}

	// Leave break-glass mode: the plugin without the private key, the apiserver with empty
	// caches; everything reads, and new writes work.
	p.RestartWith(t, normal...)
	if p.LogContains("BREAK-GLASS") {
		t.Error("the plugin restarted without the key still logs BREAK-GLASS")
	}
	a.Restart(t)
	checkReads(t, a.Clientset, objs...)
	after := create(t, a.Clientset, "secrets", "drill", "after")
	checkKMSStored(t, e, newKeyID, after)
	out, _, code = kmsctl(t, append([]string{"scan", "--recovery-private-key", priv, "--fail-on-unrecoverable"}, etcdFlags...)...)
	if code != 0 || allOpen(out) < len(objs)+1 {
		t.Errorf("scan after the rewrite: the new writes carry seals of the recovery key too: exit %d\n%s", code, out)
	}
}

// recoveryKeys makes a recovery key pair with kmsctl in dir/escrow and returns the files and
// the key id.
func recoveryKeys(t *testing.T, dir string) (priv, pub, id string) {
	t.Helper()
	keys := filepath.Join(dir, "escrow")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := kmsctl(t, "recovery-key", "--out", keys); code != 0 || !strings.Contains(out, "recovery key ") {
		t.Fatalf("kmsctl recovery-key: exit %d: %s%s", code, out, errOut)
	}
	priv, pub = filepath.Join(keys, "recovery-private.pem"), filepath.Join(keys, "recovery-public.pem")
	m := regexp.MustCompile(`Key-Id: ([0-9a-f]{16})`).FindStringSubmatch(mustReadString(t, pub))
	if m == nil {
		t.Fatalf("no Key-Id in the public key file:\n%s", mustReadString(t, pub))
	}
	return priv, pub, m[1]
}

// TestColdStartThroughBreakGlass is docs/disaster-recovery.md's drill "a cold start of a
// cluster whose Vault runs inside it": Vault cannot start until the apiserver serves (here: it
// is started only once the apiserver's /readyz is ok), and the apiserver cannot serve
// encrypted resources without the plugin. The plugin starts in break-glass mode with a local
// key for new writes, and the apiserver reads everything and becomes ready; then Vault starts,
// the original plugin comes back as the write provider with the break-glass plugin (no longer
// holding the private key) as a read provider for what was written meanwhile, kmsctl rewrite
// moves everything back to Vault's key, and the cluster returns to its original configuration.
func TestColdStartThroughBreakGlass(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	priv, pub, _ := recoveryKeys(t, dir)

	// Before: Vault (file storage: it keeps its key across the outage) and a sealing plugin.
	v := harness.StartVaultFile(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "k8s")
	vaultArgs := append(vaultPluginArgs(v.Addr, "transit", "k8s", leastPrivilegeToken(t, v, "transit", "k8s")), "--recovery-public-key="+pub)
	c := harness.StartEncryptedCluster(t, vaultArgs...)
	createNamespace(t, c.APIServer.Clientset, "drill")
	objs := createMany(t, c.APIServer.Clientset, "drill", "obj", 5)
	vaultKeyID := c.Plugin.KeyID(t)
	snapshot := filepath.Join(dir, "etcd.snapshot")
	c.Etcd.Snapshot(t, snapshot)

	// The whole cluster goes down (Vault with it: it runs inside the cluster).
	c.APIServer.Stop()
	c.Plugin.Stop()
	c.Etcd.Process.Stop(30 * time.Second)
	v.Stop(t)

	// Cold start: no Vault. The plugin in break-glass mode, new writes under a local key.
	e := harness.StartEtcdFromSnapshot(t, snapshot)
	localKeys := filepath.Join(dir, "break-glass-keys.yaml")
	keygen(t, localKeys)
	localArgs := []string{"--backend=localaes", "--localaes-key-file=" + localKeys}
	bg := harness.StartPlugin(t, append(localArgs, "--break-glass-recovery-key="+priv, "--break-glass-until="+time.Now().Add(time.Hour).UTC().Format(time.RFC3339))...)
	breakGlassConfig := harness.EncryptionConfig(encrypted, harness.KMSv2("break-glass", bg.Endpoint), harness.KMSv2(provider, bg.Endpoint), harness.Identity())
	a := harness.StartKubeAPIServer(t, harness.APIServerOptions{EtcdServers: e.Endpoints, EncryptionConfig: breakGlassConfig})
	a.WaitReady(t, "/readyz") // what the in-cluster Vault waits for
	checkReads(t, a.Clientset, objs...)
	during := createMany(t, a.Clientset, "drill", "during", 3)

	// Vault can start now, with its key; the original plugin returns as the write provider, the
	// break-glass plugin without the private key reads what was written meanwhile.
	v.Start(t)
	v.Unseal(t)
	c.Plugin.Resume(t)
	c.Plugin.WaitKeyID(t, vaultKeyID)
	bg.RestartWith(t, localArgs...)
	a.WriteEncryptionConfig(harness.EncryptionConfig(encrypted, harness.KMSv2(provider, c.Plugin.Endpoint), harness.KMSv2("break-glass", bg.Endpoint), harness.Identity()))
	a.Restart(t)
	all := append(append([]*object{}, objs...), during...)
	checkReads(t, a.Clientset, all...)
	out, errOut, code := kmsctl(t, "rewrite", "--kubeconfig", a.Kubeconfig(t, ""), "--resources", "secrets,configmaps", "--apiservers", a.URL, "--force")
	if code != 0 {
		t.Fatalf("rewrite back to Vault's key: exit %d\n%s\n%s", code, out, errOut)
	}
	checkKMSStored(t, e, vaultKeyID, all...)

	// Back to normal: the original configuration, no break-glass plugin.
	bg.Stop()
	a.WriteEncryptionConfig(harness.EncryptionConfig(encrypted, harness.KMSv2(provider, c.Plugin.Endpoint), harness.Identity()))
	a.Restart(t)
	checkReads(t, a.Clientset, all...)
}

// allOpen is how many kms v2 objects scan --recovery-private-key found, if every one opened
// with the key alone; -1 otherwise.
func allOpen(scanOut string) int {
	m := regexp.MustCompile(`(\d+) of (\d+) kms v2 objects open with it alone, 0 do not open, 0 carry no seal of it`).FindStringSubmatch(scanOut)
	if m == nil || m[1] != m[2] {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func mustReadString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

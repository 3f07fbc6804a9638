package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// TestDisasterRecoveryDrill is docs/disaster-recovery.md's drill: with what an operator backs
// up (an etcd snapshot and the plugin's key file), a new etcd restored from the snapshot, a new
// plugin given the backed-up key and a new kube-apiserver read every Secret and ConfigMap.
func TestDisasterRecoveryDrill(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.yaml")
	if out, err := exec.Command(harness.KmsctlBinary(t), "keygen", "--localaes-key-file", keys).CombinedOutput(); err != nil {
		t.Fatalf("kmsctl keygen: %v\n%s", err, out)
	}
	c := harness.StartEncryptedCluster(t, "--localaes-key-file="+keys)
	createNamespace(t, c.APIServer.Clientset, "drill")
	objs := createMany(t, c.APIServer.Clientset, "drill", "obj", 5)
	keyID := c.Plugin.KeyID(t)
	checkKMSStored(t, c.Etcd, keyID, objs...)

	// The backups.
	snapshot := filepath.Join(dir, "etcd.snapshot")
	c.Etcd.Snapshot(t, snapshot)
	backup := filepath.Join(dir, "backup", "keys.yaml")
	raw, err := os.ReadFile(keys)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(backup), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(backup, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	// The disaster: the whole control plane and the key file are gone.
	c.APIServer.Stop()
	c.Plugin.Stop()
	c.Etcd.Process.Stop(30 * time.Second)
	if err := os.Remove(keys); err != nil {
		t.Fatal(err)
	}

	// The recovery.
	e := harness.StartEtcdFromSnapshot(t, snapshot)
	p := harness.StartPlugin(t, "--localaes-key-file="+backup)
	a := harness.StartKubeAPIServer(t, harness.APIServerOptions{
		EtcdServers:      e.Endpoints,
		EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, p.Endpoint), harness.Identity()),
	})
	checkKMSStored(t, e, keyID, objs...)
	checkReads(t, a.Clientset, objs...)
}

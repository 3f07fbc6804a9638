package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// TestVaultOutage is the outage an operator fears, with the settings docs/vault.md recommends
// (the defaults): three control-plane nodes (three apiservers and three plugins on one etcd)
// write and read Secrets and ConfigMaps; Vault (file storage) stops; node 0's apiserver
// restarts during the outage, as on a node reboot. It reads everything written before, by
// every node, writes new objects, and its /readyz stays ok. Vault back, a fresh plugin and a
// fresh apiserver read everything written before and during the outage.
func TestVaultOutage(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultFile(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "outage")
	tokenFile := vaultTokenFile(t, v, "outage")
	// Only the check interval is shortened, so that the plugins notice the outage in seconds.
	args := []string{"--backend=vault", "--vault-addr=" + v.Addr, "--vault-transit-key=outage",
		"--vault-token-file=" + tokenFile, "--check-interval=2s"}

	e := harness.StartEtcd(t)
	var nodes [3]*harness.APIServer
	var plugins [3]*harness.Plugin
	for i := range nodes {
		plugins[i] = harness.StartPlugin(t, args...)
		nodes[i] = harness.StartKubeAPIServer(t, harness.APIServerOptions{
			EtcdServers:      e.Endpoints,
			EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, plugins[i].Endpoint), harness.Identity()),
		})
	}
	keyID := plugins[0].KeyID(t)
	createNamespace(t, nodes[0].Clientset, "outage")
	var before []*object
	for i, n := range nodes {
		before = append(before, createMany(t, n.Clientset, "outage", fmt.Sprintf("node%d", i), 4)...)
	}
	for _, n := range nodes {
		checkReads(t, n.Clientset, before...) // every node has read every node's objects
	}
	checkKMSStored(t, e, keyID, before...)

	v.Stop(t)
	// Every plugin notices (two check intervals), and keeps Status healthy from memory.
	for i, p := range plugins {
		harness.Eventually(t, 30*time.Second, fmt.Sprintf("plugin %d serving from memory", i), func(ctx context.Context) error {
			if !p.LogContains("SERVING FROM MEMORY") {
				return errors.New("not yet")
			}
			st, err := p.Status(ctx)
			if err != nil || st.Healthz != "ok" || st.KeyId != keyID {
				return fmt.Errorf("Status %v, %v", st, err)
			}
			return nil
		})
	}
	nodes[0].Restart(t) // waits for /readyz: it needed Status and an Encrypt from node 0's plugin
	if ok, body, err := nodes[0].Health(t.Context(), "/readyz"); err != nil || !ok {
		t.Fatalf("/readyz of the restarted apiserver during the outage: %v %s", err, body)
	}
	checkReads(t, nodes[0].Clientset, before...)
	during := createMany(t, nodes[0].Clientset, "outage", "during", 3)
	checkReads(t, nodes[0].Clientset, during...)
	checkKMSStored(t, e, keyID, during...)

	v.Start(t)
	v.Unseal(t)
	fresh := harness.StartPlugin(t, args...)
	freshNode := harness.StartKubeAPIServer(t, harness.APIServerOptions{
		EtcdServers:      e.Endpoints,
		EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, fresh.Endpoint), harness.Identity()),
	})
	checkReads(t, freshNode.Clientset, append(before, during...)...)
}

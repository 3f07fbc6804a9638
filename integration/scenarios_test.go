package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// runScenarios runs every end-to-end scenario in parallel, each on its own etcd, apiservers
// and plugins, with a KEK of its own from newBackend.
func runScenarios(t *testing.T, newBackend func(t *testing.T) kekBackend) {
	for _, s := range []struct {
		name string
		run  func(*testing.T, kekBackend)
	}{
		{"EncryptsAtRest", testEncryptsAtRest},
		{"PluginRestart", testPluginRestart},
		{"Rotation", testRotation},
		{"MigrationFromLocalProviders", testMigrationFromLocalProviders},
		{"TwoAPIServers", testTwoAPIServers},
	} {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			s.run(t, newBackend(t))
		})
	}
}

func startEncryptedCluster(t *testing.T, b kekBackend) *harness.EncryptedCluster {
	t.Helper()
	c := harness.StartEncryptedCluster(t, b.pluginArgs()...)
	if c.Provider != provider {
		t.Fatalf("harness provider %q, tests expect %q", c.Provider, provider)
	}
	return c
}

// Scenario 1: Secrets and ConfigMaps written through the API are stored as
// k8s:enc:kms:v2:<provider>: under the plugin's key id, never in plaintext, and read back intact.
func testEncryptsAtRest(t *testing.T, b kekBackend) {
	c := startEncryptedCluster(t, b)
	cs := c.APIServer.Clientset
	createNamespace(t, cs, "e2e")
	objs := createMany(t, cs, "e2e", "obj", 5)
	keyID := c.Plugin.KeyID(t)

	checkKMSStored(t, c.Etcd, keyID, objs...)
	checkAllKMSStored(t, c.Etcd, keyID)
	checkReads(t, cs, objs...)
}

// Scenario 2: the plugin stops and comes back while the apiserver runs. /readyz/kms-providers
// turns unhealthy while it is down (and /livez, which has no KMS check, stays healthy, so
// kubelet would not restart the apiserver), then healthy again; reads and writes go on.
func testPluginRestart(t *testing.T, b kekBackend) {
	c := startEncryptedCluster(t, b)
	cs := c.APIServer.Clientset
	createNamespace(t, cs, "e2e")
	before := createMany(t, cs, "e2e", "before", 2)
	keyID := c.Plugin.KeyID(t)

	c.Plugin.Stop()
	var down string
	harness.Eventually(t, 2*time.Minute, "/readyz/kms-providers unhealthy with the plugin down", func(ctx context.Context) error {
		ok, body, err := c.APIServer.KMSHealth(ctx)
		if err != nil {
			return err
		}
		if ok {
			time.Sleep(time.Second)
			return errors.New("still healthy: " + body)
		}
		down = body
		return nil
	})
	t.Logf("with the plugin down, /readyz/kms-providers says: %s", down)
	if ok, body, err := c.APIServer.Health(t.Context(), "/livez"); err != nil || !ok {
		t.Errorf("/livez with the plugin down: ok=%v err=%v: %s", ok, err, body)
	}
	// The apiserver keeps its DEK seeds: reads need no plugin, and writes go on with the
	// current seed for a while (3 minutes after the last good Status).
	checkReads(t, cs, before...)
	during := create(t, cs, "secrets", "e2e", "during")

	c.Plugin.Resume(t)
	c.APIServer.WaitReady(t, "/readyz/kms-providers")
	after := createMany(t, cs, "e2e", "after", 2)
	all := append(append(before, during), after...)
	checkReads(t, cs, all...)
	checkKMSStored(t, c.Etcd, keyID, all...)
}

// Scenario 3: rotation while the apiserver runs. After the apiserver's next Status, new writes
// carry the new key id; objects under the old key still read, also after an apiserver restart
// (which empties its DEK cache, so they are decrypted by the plugin with the old KEK); the
// storage migration moves every object to the new key.
func testRotation(t *testing.T, b kekBackend) {
	c := startEncryptedCluster(t, b)
	cs := c.APIServer.Clientset
	createNamespace(t, cs, "e2e")
	old := createMany(t, cs, "e2e", "old", 10)
	probe := create(t, cs, "secrets", "e2e", "probe")
	oldID := c.Plugin.KeyID(t)
	checkKMSStored(t, c.Etcd, oldID, old...)

	newID := b.rotate(t, c.Plugin)
	if newID == oldID {
		t.Fatalf("rotation kept key id %q", oldID)
	}
	waitForWrites(t, &c.Cluster, 3*time.Minute, "writes under the new key id", probe, func(raw []byte) error {
		return kmsStored(raw, probe, newID)
	})
	checkReads(t, cs, old...)
	checkKMSStored(t, c.Etcd, oldID, old...) // nothing moved by itself

	c.APIServer.Restart(t)
	fresh := createMany(t, cs, "e2e", "new", 2)
	checkKMSStored(t, c.Etcd, newID, fresh...)
	checkReads(t, cs, append(old, fresh...)...)

	migrate(t, cs)
	checkAllKMSStored(t, c.Etcd, newID)
	checkReads(t, cs, append(old, fresh...)...)
}

// Scenario 4: a cluster whose objects were written with identity, then aescbc, aesgcm and
// secretbox (each as the write provider in turn), moves to KMS v2 through the apiserver's
// automatic reload of its encryption config, and loses nothing: after the storage migration
// every object is KMS v2, and still reads once the old providers are gone from the config.
func testMigrationFromLocalProviders(t *testing.T, b kekBackend) {
	p := harness.StartPlugin(t, b.pluginArgs()...)
	key := func() []byte {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		return k
	}
	locals := []struct {
		name   string
		config providerConfig
		prefix string // of what it writes; "" for plaintext
	}{
		{"identity", harness.Identity(), ""},
		{"aescbc", harness.AESCBC("cbc1", key()), "k8s:enc:aescbc:v1:cbc1:"},
		{"aesgcm", harness.AESGCM("gcm1", key()), "k8s:enc:aesgcm:v1:gcm1:"},
		{"secretbox", harness.Secretbox("box1", key()), "k8s:enc:secretbox:v1:box1:"},
	}
	// providers[0] writes; each step puts the next local provider in front.
	var providers []providerConfig
	var c *harness.Cluster
	var objs []*object
	for i, l := range locals {
		providers = append([]providerConfig{l.config}, providers...)
		cfg := harness.EncryptionConfig(encrypted, providers...)
		if i == 0 {
			c = harness.StartCluster(t, harness.APIServerOptions{EncryptionConfig: cfg, AutomaticReload: true})
			createNamespace(t, c.APIServer.Clientset, "e2e")
		} else {
			c.APIServer.WriteEncryptionConfig(cfg)
			c.APIServer.Restart(t)
		}
		written := createMany(t, c.APIServer.Clientset, "e2e", l.name, 3)
		for _, o := range written {
			raw := c.Etcd.Get(t, o.key())
			switch {
			case l.prefix == "" && (bytes.HasPrefix(raw, []byte("k8s:enc:")) || !bytes.Contains(raw, []byte(o.value))):
				t.Errorf("%s under identity: stored as %s, want plaintext", o, prefixOf(raw))
			case l.prefix != "" && !bytes.HasPrefix(raw, []byte(l.prefix)):
				t.Errorf("%s under %s: stored as %s, want %s", o, l.name, prefixOf(raw), l.prefix)
			case l.prefix != "":
				if err := hasNoPlaintext(raw, o.value); err != nil {
					t.Errorf("%s under %s: %v", o, l.name, err)
				}
			}
		}
		objs = append(objs, written...)
	}
	if t.Failed() {
		t.FailNow()
	}

	// KMS v2 in front, every older provider still there for reads; no restart: the apiserver
	// finds the new file within a minute, checks the plugin's health and swaps its config.
	keyID := p.KeyID(t)
	providers = append([]providerConfig{harness.KMSv2(provider, p.Endpoint)}, providers...)
	c.APIServer.WriteEncryptionConfig(harness.EncryptionConfig(encrypted, providers...))
	probe := objs[0]
	waitForWrites(t, c, 3*time.Minute, "writes through KMS v2 after the automatic reload", probe, func(raw []byte) error {
		return kmsStored(raw, probe, keyID)
	})
	checkReads(t, c.APIServer.Clientset, objs...)

	migrate(t, c.APIServer.Clientset)
	checkAllKMSStored(t, c.Etcd, keyID)
	checkReads(t, c.APIServer.Clientset, objs...)

	// The local keys can now go: KMS v2 and identity only.
	c.APIServer.WriteEncryptionConfig(harness.EncryptionConfig(encrypted, harness.KMSv2(provider, p.Endpoint), harness.Identity()))
	c.APIServer.Restart(t)
	checkReads(t, c.APIServer.Clientset, objs...)
}

// Scenario 5: two apiservers (two control-plane nodes) on one etcd, each with its own plugin,
// the plugins sharing one KEK. Each apiserver has its own DEK seed, so reading what the other
// wrote takes a Decrypt through its own plugin: each reads what the other wrote.
func testTwoAPIServers(t *testing.T, b kekBackend) {
	e := harness.StartEtcd(t)
	var nodes [2]*harness.APIServer
	var plugins [2]*harness.Plugin
	for i := range nodes {
		plugins[i] = harness.StartPlugin(t, b.pluginArgs()...)
		nodes[i] = harness.StartKubeAPIServer(t, harness.APIServerOptions{
			EtcdServers:      e.Endpoints,
			EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, plugins[i].Endpoint), harness.Identity()),
		})
	}
	keyID := plugins[0].KeyID(t)
	if other := plugins[1].KeyID(t); other != keyID {
		t.Fatalf("plugins sharing a KEK report key ids %q and %q", keyID, other)
	}
	createNamespace(t, nodes[0].Clientset, "e2e")
	var written [2][]*object
	for i, n := range nodes {
		written[i] = createMany(t, n.Clientset, "e2e", fmt.Sprintf("node%d", i), 3)
		checkKMSStored(t, e, keyID, written[i]...)
	}
	for i, n := range nodes {
		other := written[1-i]
		checkReads(t, n.Clientset, other...)
	}
	// Their DEK seeds differ: each read of the other's objects needed a Decrypt by its own plugin.
	a, errA := harness.ParseKMSv2(e.Get(t, written[0][0].key()), provider)
	b2, errB := harness.ParseKMSv2(e.Get(t, written[1][0].key()), provider)
	if errA != nil || errB != nil {
		t.Fatalf("parsing stored values: %v, %v", errA, errB)
	}
	if bytes.Equal(a.EncryptedDEKSource, b2.EncryptedDEKSource) {
		t.Error("both apiservers stored the same encrypted DEK seed: expected one per apiserver")
	}
	// And an object rewritten by one node reads on the other.
	o := written[0][1]
	if err := o.setValue(t.Context(), nodes[1].Clientset); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "node 0 reads node 1's write", func(ctx context.Context) error {
		got, err := o.get(ctx, nodes[0].Clientset)
		if err == nil && got != o.value {
			err = fmt.Errorf("reads %.40q", strings.TrimPrefix(got, "plaintext-"))
		}
		return err
	})
}

package scan_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	kmsv2api "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	ourconfig "github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

func secret(n int) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{byte(n)}, 32))
}

// apiserverWriter encrypts values with kube-apiserver's own transformers, built by its own
// loader from an EncryptionConfiguration whose first provider is the given one.
func apiserverWriter(t *testing.T, provider string) value.Transformer {
	t.Helper()
	cfg := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - %s
`, provider)
	path := filepath.Join(t.TempDir(), "encryption.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	loaded, err := encryptionconfig.LoadEncryptionConfig(ctx, path, false, "scan-test")
	if err != nil {
		t.Fatal(err)
	}
	return loaded.Transformers[schema.GroupResource{Resource: "secrets"}]
}

func put(t *testing.T, c *clientv3.Client, key string, v []byte) {
	t.Helper()
	if _, err := c.Put(context.Background(), key, string(v)); err != nil {
		t.Fatal(err)
	}
}

func encrypt(t *testing.T, tr value.Transformer, key, plain string) []byte {
	t.Helper()
	out, err := tr.TransformToStorage(context.Background(), []byte(plain), value.DefaultContext(key))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The scan of a store holding every kind of value the apiserver writes, against the write
// keys of an EncryptionConfiguration whose KMS v2 plugin has just rotated its key.
func TestScanAgainstEtcd(t *testing.T) {
	etcd := harness.StartEtcd(t).Client
	kp := plugintest.ServeLocalAES(t, plugintest.Options{KEKName: "first"})
	kmsProvider := fmt.Sprintf("kms: {apiVersion: v2, name: kp, endpoint: unix://%s, timeout: 3s}", kp.Socket)

	// Values written with the apiserver's transformers, before the rotation.
	oldKMS := apiserverWriter(t, kmsProvider)
	oldKeyID, _ := kp.Monitor.State()
	for i := range 3 {
		key := fmt.Sprintf("/registry/secrets/ns1/old-%d", i)
		put(t, etcd, key, encrypt(t, oldKMS, key, "top secret"))
	}
	cbc := apiserverWriter(t, fmt.Sprintf("aescbc: {keys: [{name: cbc1, secret: %s}]}", secret(1)))
	put(t, etcd, "/registry/secrets/ns1/cbc", encrypt(t, cbc, "/registry/secrets/ns1/cbc", "s"))
	box := apiserverWriter(t, fmt.Sprintf("secretbox: {keys: [{name: box1, secret: %s}]}", secret(2)))
	put(t, etcd, "/registry/secrets/ns2/box", encrypt(t, box, "/registry/secrets/ns2/box", "s"))
	gcm := apiserverWriter(t, fmt.Sprintf("aesgcm: {keys: [{name: gcm1, secret: %s}]}", secret(3)))
	put(t, etcd, "/registry/deployments/ns1/old", encrypt(t, gcm, "/registry/deployments/ns1/old", "d"))
	gcm2 := apiserverWriter(t, fmt.Sprintf("aesgcm: {keys: [{name: gcm2, secret: %s}]}", secret(4)))
	put(t, etcd, "/registry/deployments/ns1/new", encrypt(t, gcm2, "/registry/deployments/ns1/new", "d"))
	put(t, etcd, "/registry/secrets/ns2/plain", []byte("k8s\x00\n\x0c\n\x02v1\x12\x06Secret"))
	put(t, etcd, "/registry/configmaps/ns1/cm", []byte(`{"kind":"ConfigMap"}`))
	put(t, etcd, "/registry/minions/node-1", []byte("k8s\x00node"))
	put(t, etcd, "/registry/services/specs/default/kubernetes", []byte("k8s\x00svc"))
	put(t, etcd, "/registry/example.com/widgets/ns1/w", []byte("k8s:enc:kms:v2:kp:\xff\xff"))
	put(t, etcd, "/other/not-scanned", []byte("plain"))

	// The plugin rotates; values written after it carry the new key id.
	newKeyID := kp.Rotate(t, "second")
	if newKeyID == oldKeyID {
		t.Fatal("rotation kept the key id")
	}
	newKMS := apiserverWriter(t, kmsProvider)
	for i := range 2 {
		key := fmt.Sprintf("/registry/secrets/ns3/new-%d", i)
		put(t, etcd, key, encrypt(t, newKMS, key, "top secret"))
	}

	cfgPath := filepath.Join(t.TempDir(), "encryption.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - %s
  - aescbc: {keys: [{name: cbc1, secret: %s}]}
  - secretbox: {keys: [{name: box1, secret: %s}]}
  - identity: {}
- resources: ["*.apps"]
  providers:
  - aesgcm: {keys: [{name: gcm2, secret: %s}, {name: gcm1, secret: %s}]}
`, kmsProvider, secret(1), secret(2), secret(4), secret(3))), 0o600)
	cfg, err := ourconfig.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()

	for _, pageSize := range []int64{2, 0} { // a page smaller than one resource, and the default
		t.Run(fmt.Sprintf("page size %d", pageSize), func(t *testing.T) {
			rep, err := scan.Scan(context.Background(), etcd, scan.Options{Config: cfg, PageSize: pageSize})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, r := range rep.Resources {
				for _, s := range r.Storage {
					status := "stale"
					if *s.Current {
						status = "current"
					}
					got[fmt.Sprintf("%s %s", r.Resource, s.Storage)] = fmt.Sprintf("%d %s", s.Objects, status)
				}
			}
			want := map[string]string{
				"secrets kms-v2 provider=kp key=" + oldKeyID:   "3 stale",
				"secrets kms-v2 provider=kp key=" + newKeyID:   "2 current",
				"secrets aescbc key=cbc1":                      "1 stale",
				"secrets secretbox key=box1":                   "1 stale",
				"secrets plaintext":                            "1 stale",
				"deployments.apps aesgcm key=gcm1":             "1 stale",
				"deployments.apps aesgcm key=gcm2":             "1 current",
				"configmaps plaintext":                         "1 current", // no rule: identity
				"nodes plaintext":                              "1 current",
				"services plaintext":                           "1 current",
				"widgets.example.com unrecognized provider=kp": "1 stale",
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("scan counts\n got %v\nwant %v", got, want)
			}
			if rep.Objects != 14 || rep.Plaintext != 4 || rep.Stale != 8 || !rep.Checked {
				t.Errorf("totals: objects %d plaintext %d stale %d checked %v; want 14, 4, 8, true", rep.Objects, rep.Plaintext, rep.Stale, rep.Checked)
			}
			if len(rep.KMS) != 1 || rep.KMS[0].KeyID != newKeyID || rep.KMS[0].Healthz != "ok" {
				t.Errorf("kms status %+v, want key id %s, healthz ok", rep.KMS, newKeyID)
			}
		})
	}

	t.Run("table", func(t *testing.T) {
		rep, err := scan.Scan(context.Background(), etcd, scan.Options{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := rep.WriteTable(&out); err != nil {
			t.Fatal(err)
		}
		table := out.String()
		for _, line := range []string{
			"RESOURCE ", "secrets  ", " kms-v2 ", " kp ", " " + oldKeyID + " ", " STALE",
			"deployments.apps ", "configmaps ", " current",
			"kms provider kp (unix://" + kp.Socket + "): current key id " + newKeyID + ", healthz ok",
			fmt.Sprintf("14 objects under /registry/ at revision %d: 4 plaintext, 8 not on the write key", rep.Revision),
		} {
			if !strings.Contains(table, line) {
				t.Errorf("table lacks %q:\n%s", line, table)
			}
		}
		if strings.Contains(table, "top secret") || strings.Contains(table, "not-scanned") {
			t.Errorf("table shows a value or a key outside /registry/:\n%s", table)
		}
	})

	// Without a config scan cannot know the write keys: it says so once, and no row or total
	// claims a status it did not check.
	t.Run("table without a config", func(t *testing.T) {
		rep, err := scan.Scan(context.Background(), etcd, scan.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := rep.WriteTable(&out); err != nil {
			t.Fatal(err)
		}
		table := out.String()
		for _, line := range []string{
			fmt.Sprintf("14 objects under /registry/ at revision %d: 4 plaintext\n", rep.Revision),
			"write keys not checked: without --encryption-config scan cannot know which provider and key new writes use",
		} {
			if !strings.Contains(table, line) {
				t.Errorf("table lacks %q:\n%s", line, table)
			}
		}
		if n := strings.Count(table, "not checked"); n != 1 {
			t.Errorf("%d mentions of what was not checked, want one:\n%s", n, table)
		}
		for _, bad := range []string{"STATUS", "not on the write key", "current", "STALE"} {
			if strings.Contains(table, bad) {
				t.Errorf("without a config the table says %q:\n%s", bad, table)
			}
		}
	})

	t.Run("json", func(t *testing.T) {
		rep, err := scan.Scan(context.Background(), etcd, scan.Options{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := rep.WriteJSON(&out); err != nil {
			t.Fatal(err)
		}
		var back scan.Report
		if err := json.Unmarshal(out.Bytes(), &back); err != nil {
			t.Fatal(err)
		}
		if back.Stale != 8 || back.Revision != rep.Revision || len(back.Resources) != len(rep.Resources) {
			t.Errorf("json round trip: %s", out.String())
		}
		var raw struct {
			Resources []struct {
				Resource string `json:"resource"`
				Prefix   string `json:"etcdPrefix"`
				WriteKey struct{ Class, Provider, Key string }
			}
		}
		json.Unmarshal(out.Bytes(), &raw)
		found := false
		for _, r := range raw.Resources {
			if r.Resource == "secrets" {
				found = r.Prefix == "/registry/secrets/" && r.WriteKey.Class == "kms-v2" && r.WriteKey.Key == newKeyID
			}
		}
		if !found {
			t.Errorf("json lacks secrets with its write key:\n%s", out.String())
		}
	})

	t.Run("without config nothing is stale", func(t *testing.T) {
		rep, err := scan.Scan(context.Background(), etcd, scan.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Checked || rep.Stale != 0 || rep.Objects != 14 {
			t.Errorf("no config: checked %v stale %d objects %d", rep.Checked, rep.Stale, rep.Objects)
		}
		for _, r := range rep.Resources {
			if r.Write != nil || r.Storage[0].Current != nil {
				t.Errorf("%s has a write key without a config", r.Resource)
			}
		}
	})

	t.Run("root without the final slash", func(t *testing.T) {
		want, err := scan.Scan(context.Background(), etcd, scan.Options{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		got, err := scan.Scan(context.Background(), etcd, scan.Options{Root: "/registry", Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		if string(g) != string(w) {
			t.Errorf("root /registry:\n got %s\nwant %s", g, w)
		}
	})

	t.Run("plugin down is an error", func(t *testing.T) {
		down, err := ourconfig.Parse([]byte(fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources: [{resources: [secrets], providers: [{kms: {apiVersion: v2, name: kp, endpoint: "unix://%s", timeout: 1s}}]}]
`, filepath.Join(t.TempDir(), "none.sock"))))
		if err != nil {
			t.Fatal(err)
		}
		defer down.Close()
		_, err = scan.Scan(context.Background(), etcd, scan.Options{Config: down})
		if err == nil || !strings.Contains(err.Error(), `kms provider "kp"`) {
			t.Errorf("scan with no plugin: %v, want an error naming the provider", err)
		}
	})
}

// A hand-made EncryptedObject is read the same way as the apiserver's, whatever its fields' order.
func TestScanReadsKeyIDOfHandMadeObject(t *testing.T) {
	b, err := proto.Marshal(&kmsv2api.EncryptedObject{KeyID: "vault:k8s:7", EncryptedData: []byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	s := scan.Classify(append([]byte("k8s:enc:kms:v2:vault:"), b...), nil)
	if s.Key != "vault:k8s:7" {
		t.Errorf("key id %q", s.Key)
	}
}

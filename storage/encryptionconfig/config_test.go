package encryptionconfig_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime/schema"
	apiconfig "k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	"k8s.io/klog/v2"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

func TestMain(m *testing.M) {
	klog.SetLogger(logr.Discard()) // the apiserver's transformers log failed reads
	os.Exit(m.Run())
}

var resources = []string{
	"secrets", "configmaps", "pods", "events", "deployments.apps", "statefulsets.apps",
	"jobs.batch", "widgets.example.com", "leases.coordination.k8s.io",
}

// Each real configuration file, loaded by kube-apiserver's own loader and by ours, gives every
// resource the same chain: what either writes, the other reads, with the same provider and key
// prefix.
func TestSameChainsAsTheAPIServer(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata")
	}
	ctx := context.Background()
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			ours, err := encryptionconfig.Load(file)
			if err != nil {
				t.Fatal(err)
			}
			defer ours.Close()
			loaded, err := apiconfig.LoadEncryptionConfig(ctx, file, false, "test")
			if err != nil {
				t.Fatal(err)
			}
			ref := apiconfig.StaticTransformers(loaded.Transformers)
			for _, r := range resources {
				gr := encryptionconfig.ParseGroupResource(r)
				refTr := ref.TransformerForResource(schema.GroupResource{Group: gr.Group, Resource: gr.Resource})
				ourTr := ours.TransformerFor(gr)
				etcdKey := "/registry/" + r + "/ns/name"
				plain := []byte("k8s\x00 object of " + r)

				fromRef, err := refTr.TransformToStorage(ctx, plain, value.DefaultContext(etcdKey))
				if err != nil {
					t.Fatal(err)
				}
				fromOurs, err := ourTr.Encrypt(ctx, nil, plain, []byte(etcdKey))
				if err != nil {
					t.Fatal(err)
				}
				if p, q := prefixOf(fromRef), prefixOf(fromOurs); p != q {
					t.Errorf("%s: apiserver writes with %q, ours with %q", r, p, q)
				}
				// ProvidersFor describes the same chain: its first provider is the writer.
				w := ours.ProvidersFor(gr)[0]
				described := "identity"
				if w.Prefix != "" {
					described = w.Prefix + w.Name + strings.Join(w.Keys[:min(1, len(w.Keys))], "") + ":"
				}
				if q := prefixOf(fromOurs); described != q {
					t.Errorf("%s: ProvidersFor names the writer %q, the chain writes %q", r, described, q)
				}
				got, err := ourTr.Decrypt(ctx, fromRef, []byte(etcdKey))
				if err != nil || !bytes.Equal(got, plain) {
					t.Errorf("%s: apiserver wrote, ours read: %v", r, err)
				}
				got, _, err = refTr.TransformFromStorage(ctx, fromOurs, value.DefaultContext(etcdKey))
				if err != nil || !bytes.Equal(got, plain) {
					t.Errorf("%s: ours wrote, apiserver read: %v", r, err)
				}
			}
		})
	}
}

// Every provider of a chain reads, not only the writer: values written under each provider
// of the rotation file (old keys, the second entry for secrets) read with ours.
func TestEveryProviderReads(t *testing.T) {
	ours, err := encryptionconfig.Load("testdata/rotation.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	chain := ours.TransformerFor(encryptionconfig.GroupResource{Resource: "secrets"})
	var prefixes []string
	for _, l := range chain.Links() {
		prefixes = append(prefixes, l.Prefix)
		// Write with this provider's own link (its first key), then read with the whole chain.
		for _, only := range []providers.Transformer{l.Transformer} {
			v, err := only.Encrypt(context.Background(), []byte(l.Prefix), []byte("k8s\x00x"), []byte("/registry/secrets/a/b"))
			if err != nil {
				t.Fatal(err)
			}
			if got, err := chain.Decrypt(context.Background(), v, []byte("/registry/secrets/a/b")); err != nil || string(got) != "k8s\x00x" {
				t.Errorf("%q: %v", l.Prefix, err)
			}
		}
	}
	if want := []string{providers.AESCBCPrefix, "", providers.AESGCMPrefix}; strings.Join(prefixes, ",") != strings.Join(want, ",") {
		t.Fatalf("chain prefixes %q, want %q", prefixes, want)
	}
	// Resources the file does not name are plaintext, and encrypted values are refused.
	cm := ours.TransformerFor(encryptionconfig.GroupResource{Resource: "configmaps"})
	if _, err := cm.Decrypt(context.Background(), []byte("k8s:enc:aescbc:v1:new:0123456789abcdef0123456789abcdef"), nil); err == nil {
		t.Fatal("identity read an encrypted value")
	}
}

func prefixOf(v []byte) string {
	if !bytes.HasPrefix(v, []byte("k8s:enc:")) {
		return "identity"
	}
	n := 0
	for i, b := range v {
		if b == ':' {
			if n++; n == 5 {
				return string(v[:i+1])
			}
		}
	}
	return string(v)
}

const key16 = "MDEyMzQ1Njc4OWFiY2RlZg==" // 16 bytes
const key32 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// Files the apiserver refuses are refused here too, and files it accepts are accepted.
func TestValidationMatchesTheAPIServer(t *testing.T) {
	head := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
	cases := map[string]string{
		"ok":                  head + "resources: [{resources: [secrets], providers: [{aesgcm: {keys: [{name: k, secret: " + key16 + "}]}}]}]",
		"ok-two-entries-same": head + "resources: [{resources: [secrets], providers: [{identity: {}}]}, {resources: [secrets], providers: [{identity: {}}]}]",
		"ok-core-wildcard":    head + "resources: [{resources: ['*.'], providers: [{identity: {}}]}]",
		"ok-kms-v1-defaults":  head + "resources: [{resources: [secrets], providers: [{kms: {name: a, endpoint: 'unix:///tmp/x.sock'}}]}]",
		"no-resources":        head + "resources: []",
		"empty-file":          "",
		"wrong-kind":          "apiVersion: apiserver.config.k8s.io/v1\nkind: Other\nresources: [{resources: [secrets], providers: [{identity: {}}]}]",
		"unknown-field":       head + "resources: [{resources: [secrets], providers: [{identity: {}}], extra: 1}]",
		"no-providers":        head + "resources: [{resources: [secrets], providers: []}]",
		"two-in-one":          head + "resources: [{resources: [secrets], providers: [{identity: {}, aesgcm: {keys: [{name: k, secret: " + key16 + "}]}}]}]",
		"secretbox-16":        head + "resources: [{resources: [secrets], providers: [{secretbox: {keys: [{name: k, secret: " + key16 + "}]}}]}]",
		"aescbc-bad-base64":   head + "resources: [{resources: [secrets], providers: [{aescbc: {keys: [{name: k, secret: 'not base64!'}]}}]}]",
		"aes-no-name":         head + "resources: [{resources: [secrets], providers: [{aescbc: {keys: [{secret: " + key32 + "}]}}]}]",
		"aes-no-keys":         head + "resources: [{resources: [secrets], providers: [{aescbc: {keys: []}}]}]",
		"star":                head + "resources: [{resources: ['*'], providers: [{identity: {}}]}]",
		"capital":             head + "resources: [{resources: [Secrets], providers: [{identity: {}}]}]",
		"across-groups":       head + "resources: [{resources: ['secrets.*'], providers: [{identity: {}}]}]",
		"overlap":             head + "resources: [{resources: [secrets, '*.'], providers: [{identity: {}}]}]",
		"duplicate":           head + "resources: [{resources: [secrets, secrets], providers: [{identity: {}}]}]",
		"masked":              head + "resources: [{resources: ['*.apps'], providers: [{identity: {}}]}, {resources: [deployments.apps], providers: [{identity: {}}]}]",
		"masked-by-all":       head + "resources: [{resources: ['*.*'], providers: [{identity: {}}]}, {resources: [secrets], providers: [{identity: {}}]}]",
		"events-group":        head + "resources: [{resources: [events.events.k8s.io], providers: [{identity: {}}]}]",
		"kms-v2-colon":        head + "resources: [{resources: [secrets], providers: [{kms: {apiVersion: v2, name: 'a:b', endpoint: 'unix:///tmp/x.sock'}}]}]",
		"kms-v2-dup":          head + "resources: [{resources: [secrets], providers: [{kms: {apiVersion: v2, name: a, endpoint: 'unix:///tmp/x.sock'}}, {kms: {apiVersion: v2, name: a, endpoint: 'unix:///tmp/y.sock'}}]}]",
		"kms-tcp":             head + "resources: [{resources: [secrets], providers: [{kms: {apiVersion: v2, name: a, endpoint: 'tcp://1.2.3.4:5'}}]}]",
		"kms-v3":              head + "resources: [{resources: [secrets], providers: [{kms: {apiVersion: v3, name: a, endpoint: 'unix:///tmp/x.sock'}}]}]",
		"kms-v2-cachesize":    head + "resources: [{resources: [secrets], providers: [{kms: {apiVersion: v2, name: a, cachesize: 5, endpoint: 'unix:///tmp/x.sock'}}]}]",
		"kms-zero-timeout":    head + "resources: [{resources: [secrets], providers: [{kms: {apiVersion: v2, name: a, timeout: 0s, endpoint: 'unix:///tmp/x.sock'}}]}]",
	}
	dir := t.TempDir()
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".yaml")
			os.WriteFile(path, []byte(body), 0o600)
			c, err := encryptionconfig.Load(path)
			if err == nil {
				c.Close()
			}
			if strings.HasPrefix(name, "ok") != (err == nil) {
				t.Fatalf("ours: %v", err)
			}
			if strings.Contains(name, "kms") {
				return // the apiserver dials kms plugins (and refuses v1 by default) while loading
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, refErr := apiconfig.LoadEncryptionConfig(ctx, path, false, "test")
			if (err == nil) != (refErr == nil) {
				t.Fatalf("ours: %v; apiserver: %v", err, refErr)
			}
			if err != nil && (strings.Contains(err.Error(), key16) || strings.Contains(err.Error(), key32)) {
				t.Fatalf("error shows a secret: %v", err)
			}
		})
	}
}

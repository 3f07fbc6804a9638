package scan

import (
	"encoding/base64"
	"fmt"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	kmsv2api "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
)

// encryptedObject marshals an EncryptedObject with the apiserver's own generated type.
func encryptedObject(t *testing.T, keyID string) []byte {
	return encryptedObjectFrom(t, keyID, []byte("wrapped seed"))
}

// encryptedObjectFrom is encryptedObject with the plugin's ciphertext source.
func encryptedObjectFrom(t *testing.T, keyID string, source []byte) []byte {
	t.Helper()
	b, err := proto.Marshal(&kmsv2api.EncryptedObject{
		EncryptedData:          []byte("ciphertext"),
		KeyID:                  keyID,
		EncryptedDEKSource:     source,
		Annotations:            map[string][]byte{"example.com/x": []byte("y")},
		EncryptedDEKSourceType: kmsv2api.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestClassify(t *testing.T) {
	kms := func(name, keyID string) []byte {
		return append([]byte("k8s:enc:kms:v2:"+name+":"), encryptedObject(t, keyID)...)
	}
	for _, tc := range []struct {
		name  string
		value []byte
		names []string
		want  Storage
	}{
		{"k8s protobuf", []byte("k8s\x00\n\x0c\n\x02v1\x12\x06Secret"), nil, Storage{Class: Plaintext}},
		{"json", []byte(`{"kind":"Secret"}`), nil, Storage{Class: Plaintext}},
		{"empty", nil, nil, Storage{Class: Plaintext}},
		{"prefix of the prefix", []byte("k8s:en"), nil, Storage{Class: Plaintext}},
		{"aescbc", []byte("k8s:enc:aescbc:v1:key1:\x00\x01"), nil, Storage{Class: AESCBC, Key: "key1"}},
		{"aesgcm", []byte("k8s:enc:aesgcm:v1:k-2:xyz"), nil, Storage{Class: AESGCM, Key: "k-2"}},
		{"secretbox", []byte("k8s:enc:secretbox:v1:box:..."), nil, Storage{Class: Secretbox, Key: "box"}},
		{"configured key name with a colon", []byte("k8s:enc:aescbc:v1:a:b:body"), []string{"a:b"}, Storage{Class: AESCBC, Key: "a:b"}},
		{"kms v1", []byte("k8s:enc:kms:v1:old:\x00\x10..."), nil, Storage{Class: KMSv1, Provider: "old"}},
		{"kms v2", kms("vault", "transit:k8s:v3"), nil, Storage{Class: KMSv2, Provider: "vault", Key: "transit:k8s:v3"}},
		// vault-kubernetes-kms: Transit's text as the DEK source, its own key id ignored.
		{"vault-kubernetes-kms", append([]byte("k8s:enc:kms:v2:vault:"), encryptedObjectFrom(t, "2", []byte("vault:v3:"+base64.StdEncoding.EncodeToString(make([]byte, 60))))...), nil,
			Storage{Class: KMSv2, Provider: "vault", Key: "vault:v3", Format: VaultKubernetesKMS}},
		{"vault-kubernetes-kms look-alike", append([]byte("k8s:enc:kms:v2:vault:"), encryptedObjectFrom(t, "2", []byte("vault:v3:not base64"))...), nil,
			Storage{Class: KMSv2, Provider: "vault", Key: "2"}},
		{"kms v2 no key id", kms("vault", ""), nil, Storage{Class: Unrecognized, Provider: "vault"}},
		{"kms v2 garbage", []byte("k8s:enc:kms:v2:vault:\xff\xff\xff"), nil, Storage{Class: Unrecognized, Provider: "vault"}},
		{"kms v2 truncated", kms("vault", "key")[:30], nil, Storage{Class: Unrecognized, Provider: "vault"}},
		// proto.Unmarshal, and so the apiserver, refuses a field number above 2^29-1.
		{"kms v2 field number 1<<29", append(kms("vault", "key"), protowire.AppendVarint(protowire.AppendTag(nil, 1<<29, protowire.VarintType), 0)...), nil, Storage{Class: Unrecognized, Provider: "vault"}},
		{"kms v2 key id with a newline", kms("vault", "a\nb"), nil, Storage{Class: Unrecognized, Provider: "vault"}},
		{"no key name", []byte("k8s:enc:aescbc:v1:"), nil, Storage{Class: Unrecognized}},
		{"unknown provider", []byte("k8s:enc:rot13:v1:k:..."), nil, Storage{Class: Unrecognized}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(tc.value, tc.names); got != tc.want {
				t.Errorf("Classify(%q) = %+v, want %+v", tc.value, got, tc.want)
			}
		})
	}
}

func FuzzClassify(f *testing.F) {
	f.Add([]byte("k8s:enc:kms:v2:p:\x12\x03abc"))
	f.Add([]byte("k8s:enc:aescbc:v1:k:"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := Classify(b, []string{"k", "p"})
		if s.Class == KMSv2 && s.Key == "" {
			t.Fatalf("kms v2 without a key id: %+v", s)
		}
	})
}

// Each rule's first provider gives the write key of the resources it covers, resolved as the
// apiserver does: the resource's own entry (the first in the file), then "*.<group>" ("*." for
// the core group), then "*.*"; a resource no rule covers is written by identity.
func TestWriteKeys(t *testing.T) {
	secret := base64.StdEncoding.EncodeToString(make([]byte, 32))
	cfg, err := encryptionconfig.Parse([]byte(fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers: [{kms: {apiVersion: v2, name: a, endpoint: "unix:///nonexistent/a.sock"}}, {identity: {}}]
- resources: [secrets]
  providers: [{aescbc: {keys: [{name: second, secret: %[1]s}]}}]
- resources: [deployments.apps]
  providers: [{aesgcm: {keys: [{name: k, secret: %[1]s}, {name: old, secret: %[1]s}]}}]
- resources: ["*.apps"]
  providers: [{secretbox: {keys: [{name: b, secret: %[1]s}]}}]
- resources: ["*."]
  providers: [{aescbc: {keys: [{name: c, secret: %[1]s}]}}]
- resources: [leases.coordination.k8s.io]
  providers: [{kms: {name: v1, endpoint: "unix:///nonexistent/v1.sock"}}]
- resources: ["*.*"]
  providers: [{identity: {}}]
`, secret)))
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	for key, want := range map[string]Storage{
		"/registry/secrets/a/b":             {Class: KMSv2, Provider: "a"},
		"/registry/deployments/a/b":         {Class: AESGCM, Key: "k"},
		"/registry/statefulsets/a/b":        {Class: Secretbox, Key: "b"},
		"/registry/configmaps/a/b":          {Class: AESCBC, Key: "c"},
		"/registry/leases/a/b":              {Class: KMSv1, Provider: "v1"},
		"/registry/example.com/widgets/a/b": {Class: Plaintext},
	} {
		gr := encryptionconfig.ResourceOf(DefaultRoot, key).GroupResource
		if got := writeKey(cfg.ProvidersFor(gr)[0]); got != want {
			t.Errorf("%s: write key %+v, want %+v", key, got, want)
		}
	}
	if got, want := names(cfg), []string{"a", "second", "k", "old", "b", "c", "v1"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("names %v, want %v", got, want)
	}

	only, err := encryptionconfig.Parse([]byte(fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources: [{resources: [deployments.apps], providers: [{aesgcm: {keys: [{name: k, secret: %s}]}}]}]
`, secret)))
	if err != nil {
		t.Fatal(err)
	}
	defer only.Close()
	if got := writeKey(only.ProvidersFor(encryptionconfig.ResourceOf(DefaultRoot, "/registry/secrets/a/b").GroupResource)[0]); got != (Storage{Class: Plaintext}) {
		t.Errorf("a config without a rule for secrets writes them as %+v", got)
	}
}

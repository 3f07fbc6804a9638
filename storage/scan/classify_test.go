package scan

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	kmsv2api "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
)

// encryptedObject marshals an EncryptedObject with the apiserver's own generated type.
func encryptedObject(t *testing.T, keyID string) []byte {
	t.Helper()
	b, err := proto.Marshal(&kmsv2api.EncryptedObject{
		EncryptedData:          []byte("ciphertext"),
		KeyID:                  keyID,
		EncryptedDEKSource:     []byte("wrapped seed"),
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

func TestResourceOf(t *testing.T) {
	for key, want := range map[string]string{
		"/registry/secrets/kube-system/token":                                          "secrets",
		"/registry/configmaps/default/cm":                                              "configmaps",
		"/registry/namespaces/default":                                                 "namespaces",
		"/registry/deployments/default/web":                                            "deployments.apps",
		"/registry/clusterroles/admin":                                                 "clusterroles.rbac.authorization.k8s.io",
		"/registry/services/specs/default/kubernetes":                                  "services",
		"/registry/services/endpoints/default/kubernetes":                              "endpoints",
		"/registry/minions/node-1":                                                     "nodes",
		"/registry/controllers/default/rc":                                             "replicationcontrollers",
		"/registry/ingress/default/web":                                                "ingresses.networking.k8s.io",
		"/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com": "customresourcedefinitions.apiextensions.k8s.io",
		"/registry/apiregistration.k8s.io/apiservices/v1.apps":                         "apiservices.apiregistration.k8s.io",
		"/registry/example.com/widgets/default/w1":                                     "widgets.example.com",
		"/registry/masterleases/127.0.0.1":                                             "masterleases",
	} {
		if got := ResourceOf(DefaultRoot, key).Name(); got != want {
			t.Errorf("ResourceOf(%s) = %s, want %s", key, got, want)
		}
	}
	if r := ResourceOf(DefaultRoot, "/registry/masterleases/x"); r.Known || r.Prefix != "/registry/masterleases/" {
		t.Errorf("masterleases: %+v, want an unknown resource at /registry/masterleases/", r)
	}
	if r := ResourceOf(DefaultRoot, "/registry/example.com/widgets/ns/w"); r.Prefix != "/registry/example.com/widgets/" {
		t.Errorf("custom resource prefix %s", r.Prefix)
	}
}

func TestRuleFor(t *testing.T) {
	cfg := &Config{Rules: []Rule{
		{Resources: []string{"secrets"}, Providers: []Provider{{Class: KMSv2, Name: "a"}}},
		{Resources: []string{"deployments.apps"}, Providers: []Provider{{Class: AESGCM, Keys: []string{"k"}}}},
		{Resources: []string{"*.apps"}, Providers: []Provider{{Class: Secretbox, Keys: []string{"b"}}}},
		{Resources: []string{"secrets", "*."}, Providers: []Provider{{Class: AESCBC, Keys: []string{"c"}}}},
		{Resources: []string{"*.*"}, Providers: []Provider{{Class: Plaintext}}},
	}}
	for key, want := range map[string]Storage{
		"/registry/secrets/a/b":             {Class: KMSv2, Provider: "a"},
		"/registry/deployments/a/b":         {Class: AESGCM, Key: "k"},
		"/registry/statefulsets/a/b":        {Class: Secretbox, Key: "b"},
		"/registry/configmaps/a/b":          {Class: AESCBC, Key: "c"},
		"/registry/example.com/widgets/a/b": {Class: Plaintext},
	} {
		rule := cfg.RuleFor(ResourceOf(DefaultRoot, key))
		if rule == nil {
			t.Errorf("%s: no rule", key)
			continue
		}
		if got := rule.Providers[0].WriteKey(); got != want {
			t.Errorf("%s: write key %+v, want %+v", key, got, want)
		}
	}
	if rule := (&Config{}).RuleFor(ResourceOf(DefaultRoot, "/registry/secrets/a/b")); rule != nil {
		t.Errorf("empty config covers secrets: %+v", rule)
	}
}

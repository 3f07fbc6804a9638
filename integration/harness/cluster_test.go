package harness

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
)

func encryptedObject(fields map[protowire.Number][]byte) []byte {
	var b []byte
	for _, n := range []protowire.Number{1, 2, 3} {
		if v, ok := fields[n]; ok {
			b = protowire.AppendTag(b, n, protowire.BytesType)
			b = protowire.AppendBytes(b, v)
		}
	}
	// Field 5 (encryptedDEKSourceType, a varint) is skipped, not misread.
	b = protowire.AppendTag(b, 5, protowire.VarintType)
	return protowire.AppendVarint(b, 1)
}

func TestParseKMSv2(t *testing.T) {
	full := map[protowire.Number][]byte{1: []byte("data"), 2: []byte("key-1"), 3: []byte("seed")}
	v, err := ParseKMSv2(append([]byte("k8s:enc:kms:v2:p:"), encryptedObject(full)...), "p")
	if err != nil || v.KeyID != "key-1" || string(v.EncryptedDEKSource) != "seed" || string(v.EncryptedData) != "data" {
		t.Fatalf("ParseKMSv2 = %+v, %v", v, err)
	}
	good := encryptedObject(full)
	for name, value := range map[string][]byte{
		"other provider": append([]byte("k8s:enc:kms:v2:q:"), good...),
		"kms v1":         append([]byte("k8s:enc:kms:v1:p:"), good...),
		"plaintext":      []byte("{}"),
		"truncated":      append([]byte("k8s:enc:kms:v2:p:"), good[:len(good)-4]...),
		"no key id":      append([]byte("k8s:enc:kms:v2:p:"), encryptedObject(map[protowire.Number][]byte{1: []byte("d"), 3: []byte("s")})...),
	} {
		if _, err := ParseKMSv2(value, "p"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// EncryptionConfig's YAML decodes strictly into the apiserver's own type, provider order kept.
func TestEncryptionConfigDecodes(t *testing.T) {
	y := EncryptionConfig([]string{"secrets"}, KMSv2("k", "unix:///s.sock"), AESCBC("c", make([]byte, 32)), Identity())
	scheme := runtime.NewScheme()
	if err := apiserverv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	obj, _, err := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer().Decode([]byte(y), nil, nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	cfg := obj.(*apiserverv1.EncryptionConfiguration)
	p := cfg.Resources[0].Providers
	if len(p) != 3 || p[0].KMS == nil || p[0].KMS.APIVersion != "v2" || p[1].AESCBC == nil || p[2].Identity == nil {
		t.Fatalf("providers decoded as %+v", p)
	}
	if !strings.Contains(y, "apiVersion: apiserver.config.k8s.io/v1") {
		t.Errorf("no apiVersion:\n%s", y)
	}
}

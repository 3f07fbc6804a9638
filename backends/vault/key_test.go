package vault

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/kmsplugin/kms-plugin/dek"
)

func TestUsable(t *testing.T) {
	k := &KEK{cfg: Config{Mount: "transit", Key: "k"}}
	if _, _, err := k.wrappable("vault:0123456789abcdef:v1"); !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("before any check: %v; want dek.ErrUnavailable", err)
	}
	lin := lineage
	k.observed = &keyState{minDecrypt: 2, created: map[int]int64{2: 200, 3: 300}}
	k.observed.latest = KeyVersion{lineage: lin(300), version: 3}
	cases := []struct {
		id   string
		want error
	}{
		{KeyVersion{lin(200), 2}.String(), nil},
		{KeyVersion{lin(300), 3}.String(), nil},
		{KeyVersion{lin(100), 1}.String(), dek.ErrUnknownKey},  // below min_decryption_version
		{KeyVersion{lin(300), 2}.String(), dek.ErrUnknownKey},  // another key's version 2
		{KeyVersion{lin(400), 4}.String(), dek.ErrUnavailable}, // a rotation not seen yet
		{"vault:zz:v1", dek.ErrUnknownKey},
	}
	for _, c := range cases {
		_, _, err := k.wrappable(c.id)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("usable(%s) = %v, want %v", c.id, err, c.want)
		}
	}
}

func TestParseKey(t *testing.T) {
	secret := func(data string) *api.Secret {
		t.Helper()
		s, err := api.ParseSecret(strings.NewReader(`{"data":` + data + `}`))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	key, err := ParseKey(secret(`{"type":"aes256-gcm96","supports_encryption":true,"derived":false,
		"exportable":true,"allow_plaintext_backup":true,"deletion_allowed":true,
		"latest_version":3,"min_decryption_version":2,"keys":{"2":1700000200,"3":1700000300}}`))
	want := Key{Type: "aes256-gcm96", SupportsEncryption: true, Exportable: true, AllowPlaintextBackup: true,
		DeletionAllowed: true, LatestVersion: 3, MinDecryptionVersion: 2, Created: map[int]int64{2: 1700000200, 3: 1700000300}}
	if err != nil || !reflect.DeepEqual(key, want) {
		t.Fatalf("ParseKey = %+v, %v; want %+v", key, err, want)
	}

	// Asymmetric keys list each version as an object with an RFC 3339 creation time.
	key, err = ParseKey(secret(`{"type":"rsa-2048","supports_encryption":true,"latest_version":1,
		"min_decryption_version":1,"keys":{"1":{"creation_time":"2023-11-14T22:13:20Z"}}}`))
	if err != nil || key.Created[1] != 1700000000 {
		t.Fatalf("asymmetric key: %+v, %v", key, err)
	}
	key, err = ParseKey(secret(`{"type":"aes256-gcm96","derived":true,"convergent_encryption":true,
		"latest_version":1,"min_decryption_version":1,"keys":{"1":1700000000}}`))
	if err != nil || !key.Derived || !key.ConvergentEncryption {
		t.Fatalf("derived key: %+v, %v", key, err)
	}

	for name, data := range map[string]string{
		"no latest version":        `{"min_decryption_version":1,"keys":{"1":1}}`,
		"latest version 0":         `{"latest_version":0,"min_decryption_version":1,"keys":{}}`,
		"no min version":           `{"latest_version":1,"keys":{"1":1}}`,
		"version not a number":     `{"latest_version":1,"min_decryption_version":1,"keys":{"one":1}}`,
		"creation time not a time": `{"latest_version":1,"min_decryption_version":1,"keys":{"1":"yesterday"}}`,
	} {
		if key, err := ParseKey(secret(data)); err == nil {
			t.Errorf("%s: ParseKey = %+v; want an error", name, key)
		}
	}
	if _, err := ParseKey(nil); err == nil {
		t.Error("ParseKey(nil) succeeded")
	}
}

// Key.KeyID names a listed version as the backend's Status does once it adopts it.
func TestKeyKeyID(t *testing.T) {
	k := Key{LatestVersion: 2, MinDecryptionVersion: 2, Created: map[int]int64{2: 1700000000}}
	id, ok := k.KeyID(2)
	if want := (KeyVersion{lineage: lineage(1700000000), version: 2}).String(); !ok || id != want {
		t.Errorf("KeyID(2) = %q, %v; want %q", id, ok, want)
	}
	if kv, err := ParseKeyID(id); err != nil || kv.Version() != 2 {
		t.Errorf("ParseKeyID(%q) = %v, %v", id, kv, err)
	}
	if id, ok := k.KeyID(1); ok || id != "" {
		t.Errorf("KeyID of a retired version = %q, %v", id, ok)
	}
}

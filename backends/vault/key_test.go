package vault

import (
	"errors"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
)

func TestUsable(t *testing.T) {
	k := &KEK{cfg: Config{Mount: "transit", Key: "k"}}
	if _, err := k.usable("vault:0123456789abcdef:v1"); !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("before any check: %v; want dek.ErrUnavailable", err)
	}
	lin := func(created int64) string { return lineage("c", "", "transit", "k", created) }
	k.observed = &keyState{minDecrypt: 2, created: map[int]int64{2: 200, 3: 300}, lineageOf: lin}
	k.observed.latest = keyVersion{lineage: lin(300), version: 3}
	cases := []struct {
		id   string
		want error
	}{
		{keyVersion{lin(200), 2}.String(), nil},
		{keyVersion{lin(300), 3}.String(), nil},
		{keyVersion{lin(100), 1}.String(), dek.ErrUnknownKey},  // below min_decryption_version
		{keyVersion{lin(300), 2}.String(), dek.ErrUnknownKey},  // another key's version 2
		{keyVersion{lin(400), 4}.String(), dek.ErrUnavailable}, // a rotation not seen yet
		{"vault:zz:v1", dek.ErrUnknownKey},
	}
	for _, c := range cases {
		_, err := k.usable(c.id)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("usable(%s) = %v, want %v", c.id, err, c.want)
		}
	}
}

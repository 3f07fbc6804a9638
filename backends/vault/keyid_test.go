package vault

import (
	"errors"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
)

func TestKeyIDFormatAndParse(t *testing.T) {
	kv := keyVersion{lineage: "0123456789abcdef", version: 12}
	if got := kv.String(); got != "vault:0123456789abcdef:v12" {
		t.Fatalf("String = %q", got)
	}
	back, err := parseKeyID(kv.String())
	if err != nil || back != kv {
		t.Fatalf("parseKeyID = %+v, %v", back, err)
	}
	for _, bad := range []string{
		"", "vault:", "vault:0123456789abcdef", "vault:0123456789abcdef:v", "vault:0123456789abcdef:v0",
		"vault:0123456789abcdef:v01", "vault:0123456789abcdef:v-1", "vault:0123456789abcdef:v1x",
		"vault:0123456789ABCDEF:v1", "vault:0123456789abcde:v1", "vault:0123456789abcdef0:v1",
		"vault:0123456789abcdef:v1234567890", "localaes:0123456789abcdef:v1", "vault:0123456789abcdef:1",
	} {
		if _, err := parseKeyID(bad); !errors.Is(err, dek.ErrUnknownKey) {
			t.Errorf("parseKeyID(%q): err = %v, want dek.ErrUnknownKey", bad, err)
		}
	}
}

func TestLineage(t *testing.T) {
	base := lineage("cluster", "", "transit", "k", 1700000000)
	if len(base) != 16 || strings.Trim(base, "0123456789abcdef") != "" {
		t.Fatalf("lineage %q: want 16 hex digits", base)
	}
	if again := lineage("cluster", "", "transit", "k", 1700000000); again != base {
		t.Fatal("lineage is not deterministic")
	}
	for name, other := range map[string]string{
		"cluster":   lineage("cluster2", "", "transit", "k", 1700000000),
		"namespace": lineage("cluster", "ns", "transit", "k", 1700000000),
		"mount":     lineage("cluster", "", "transit2", "k", 1700000000),
		"key":       lineage("cluster", "", "transit", "k2", 1700000000),
		"created":   lineage("cluster", "", "transit", "k", 1700000001),
		"shifted":   lineage("cluster", "", "transitk", "", 1700000000),
	} {
		if other == base {
			t.Errorf("changing the %s keeps the lineage", name)
		}
	}
}

func TestDebounce(t *testing.T) {
	v := func(n int) keyVersion { return keyVersion{lineage: "0123456789abcdef", version: n} }
	other := keyVersion{lineage: "fedcba9876543210", version: 1}
	var d debounce
	steps := []struct {
		seen    keyVersion
		miss    bool
		adopted keyVersion
	}{
		{seen: v(1), adopted: v(1)}, // first sight: adopted at once
		{seen: v(2), adopted: v(1)}, // new version seen once
		{seen: v(1), adopted: v(1)}, // a lagging node: candidate dropped
		{seen: v(2), adopted: v(1)},
		{miss: true, adopted: v(1)}, // a failed check breaks the run
		{seen: v(2), adopted: v(1)},
		{seen: v(2), adopted: v(2)}, // two in a row: adopted
		{seen: v(3), adopted: v(2)},
		{seen: v(4), adopted: v(2)}, // a different candidate starts over
		{seen: v(4), adopted: v(4)},
		{seen: other, adopted: v(4)}, // a new lineage is debounced too
		{seen: other, adopted: other},
	}
	for i, s := range steps {
		if s.miss {
			d.miss()
		} else {
			d.observe(s.seen)
		}
		if d.adopted != s.adopted {
			t.Fatalf("step %d: adopted %v, want %v", i, d.adopted, s.adopted)
		}
	}
}

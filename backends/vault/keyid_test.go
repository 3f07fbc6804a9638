package vault

import (
	"errors"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
)

func TestKeyIDFormatAndParse(t *testing.T) {
	keyVer := KeyVersion{lineage: "0123456789abcdef", version: 12}
	if got := keyVer.String(); got != "vault:0123456789abcdef:v12" {
		t.Fatalf("String = %q", got)
	}
	back, err := ParseKeyID(keyVer.String())
	if err != nil || back != keyVer {
		t.Fatalf("ParseKeyID = %+v, %v", back, err)
	}
	for _, bad := range []string{
		"", "vault:", "vault:0123456789abcdef", "vault:0123456789abcdef:v", "vault:0123456789abcdef:v0",
		"vault:0123456789abcdef:v01", "vault:0123456789abcdef:v-1", "vault:0123456789abcdef:v1x",
		"vault:0123456789ABCDEF:v1", "vault:0123456789abcde:v1", "vault:0123456789abcdef0:v1",
		"vault:0123456789abcdef:v1234567890", "localaes:0123456789abcdef:v1", "vault:0123456789abcdef:1",
	} {
		if _, err := ParseKeyID(bad); !errors.Is(err, dek.ErrUnknownKey) {
			t.Errorf("ParseKeyID(%q): err = %v, want dek.ErrUnknownKey", bad, err)
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
	v := func(n int) KeyVersion { return KeyVersion{lineage: "0123456789abcdef", version: n} }
	other := KeyVersion{lineage: "fedcba9876543210", version: 1}
	var d debounce
	steps := []struct {
		seen    KeyVersion
		miss    bool
		adopted KeyVersion
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

// TestParseKeyIDVersion: the version ParseKeyID reads, as doctor counts the objects in etcd
// under each version (these cases were doctor's own parser's).
func TestParseKeyIDVersion(t *testing.T) {
	for id, want := range map[string]int{
		"vault:0123456789abcdef:v3": 3, "vault:0123456789abcdef:v12": 12,
		"vault:0123456789ABCDEF:v3": 0, "vault:0123:v3": 0, "localaes:abc": 0,
		"vault:0123456789abcdef:v0": 0, "vault:0123456789abcdef:vx": 0,
	} {
		got, err := ParseKeyID(id)
		if want == 0 {
			if err == nil {
				t.Errorf("ParseKeyID(%q) = %v; want an error", id, got)
			}
			continue
		}
		if err != nil || got.Version() != want || got.Lineage() != "0123456789abcdef" || got.String() != id {
			t.Errorf("ParseKeyID(%q) = version %d, lineage %q, %v; want version %d", id, got.Version(), got.Lineage(), err, want)
		}
	}
}

// FuzzParseKeyID: whatever ParseKeyID accepts, String gives back unchanged, so one key id
// never has two spellings.
func FuzzParseKeyID(f *testing.F) {
	for _, s := range []string{"vault:0123456789abcdef:v1", "vault:0123456789abcdef:v123456789", "vault:0123456789abcdef:v01", "vault::v1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		keyVer, err := ParseKeyID(id)
		if err != nil {
			if !errors.Is(err, dek.ErrUnknownKey) {
				t.Fatalf("ParseKeyID(%q): %v, want dek.ErrUnknownKey", id, err)
			}
			return
		}
		if keyVer.String() != id || keyVer.Version() < 1 {
			t.Fatalf("ParseKeyID(%q) = %+v, which prints as %q", id, keyVer, keyVer.String())
		}
	})
}

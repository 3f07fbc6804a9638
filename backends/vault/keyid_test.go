package vault

import (
	"errors"
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

// TestLineage: the lineage (key-id format 2) is a function of the named version's creation
// time alone, pinned to a known value: a change of it would change every installation's key
// id (the apiserver sees a rotation) and must be deliberate.
func TestLineage(t *testing.T) {
	base := lineage(1700000000)
	if base != "b497d6f57b4e2435" {
		t.Fatalf("lineage(1700000000) = %q; the format changed (want b497d6f57b4e2435)", base)
	}
	if lineage(1700000001) == base {
		t.Error("changing the creation time keeps the lineage")
	}
	// Nothing else goes in: not the cluster, namespace, mount or key name (format 1's fields).
	for _, l := range []string{
		legacyLineage("", "", "", "", 1700000000), legacyLineage("cluster", "", "transit", "k", 1700000000),
	} {
		if l == base {
			t.Errorf("format 1 lineage %s equals format 2's", l)
		}
	}
}

// TestLegacyLineage: format 1, which every version before format 2 wrote into envelopes,
// still computes as it did (pinned to the value those versions gave), and hashed each field.
func TestLegacyLineage(t *testing.T) {
	base := legacyLineage("cluster", "", "transit", "k", 1700000000)
	if base != "6527cf2b7748d9ce" {
		t.Fatalf("legacyLineage = %q; want 6527cf2b7748d9ce, as format 1 gave", base)
	}
	for name, other := range map[string]string{
		"cluster":   legacyLineage("cluster2", "", "transit", "k", 1700000000),
		"namespace": legacyLineage("cluster", "ns", "transit", "k", 1700000000),
		"mount":     legacyLineage("cluster", "", "transit2", "k", 1700000000),
		"key":       legacyLineage("cluster", "", "transit", "k2", 1700000000),
		"created":   legacyLineage("cluster", "", "transit", "k", 1700000001),
		"shifted":   legacyLineage("cluster", "", "transitk", "", 1700000000),
	} {
		if other == base {
			t.Errorf("changing the %s keeps the lineage", name)
		}
	}
}

// TestOurs: which lineages count as naming one of the key's versions when Vault cannot
// authenticate a wrapped DEK (ErrTampered rather than ErrUnknownKey): format 2, and format 1
// of this cluster, namespace, mount and name.
func TestOurs(t *testing.T) {
	st := &keyState{created: map[int]int64{1: 100, 2: 200},
		legacyOf: func(c int64) string { return legacyLineage("cluster", "", "transit", "k", c) }}
	for _, c := range []struct {
		kv   KeyVersion
		ours bool
	}{
		{KeyVersion{lineage(100), 1}, true},
		{KeyVersion{lineage(200), 2}, true},
		{KeyVersion{legacyLineage("cluster", "", "transit", "k", 200), 2}, true},
		{KeyVersion{lineage(200), 1}, false},                                       // another key's v1
		{KeyVersion{legacyLineage("other", "", "transit", "k", 200), 2}, false},    // format 1 of another cluster
		{KeyVersion{legacyLineage("cluster", "", "transit", "k2", 200), 2}, false}, // ... or key name
		{KeyVersion{lineage(300), 3}, false},                                       // not listed
	} {
		if got := st.ours(c.kv); got != c.ours {
			t.Errorf("ours(%s) = %v, want %v", c.kv, got, c.ours)
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
		{seen: v(3), adopted: KeyVersion{}}, // first sight (a lagging replica?): not adopted
		{seen: v(1), adopted: KeyVersion{}}, // disagrees: still none
		{seen: v(1), adopted: v(1)},         // two in a row: adopted
		{seen: v(2), adopted: v(1)},         // new version seen once
		{seen: v(1), adopted: v(1)},         // a lagging node: candidate dropped
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

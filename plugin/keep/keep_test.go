package keep_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/cache"
	"github.com/kmsplugin/kms-plugin/plugin/keep"
)

func sample(entries int) *keep.Snapshot {
	s := &keep.Snapshot{
		Binding: "vault ns/transit/k", KeyID: "vault:v2:abc:1", Answered: time.Unix(1_800_000_000, 123),
		LocalKEK: &dek.LocalKEKState{KeyID: "vault:v2:abc:1", Wrapped: []byte("vault:v1:wrapped-local"), Key: bytes.Repeat([]byte{7}, 32), Created: time.Unix(1_799_000_000, 5), Uses: 42},
	}
	for i := range entries {
		s.Entries = append(s.Entries, cache.Entry{KeyID: "vault:v2:abc:1", Wrapped: fmt.Appendf(nil, "vault:v1:%060d", i), Key: bytes.Repeat([]byte{byte(i)}, 32)})
	}
	return s
}

func TestSnapshotRoundTrip(t *testing.T) {
	want := sample(3)
	b, err := want.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := keep.Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Binding != want.Binding || got.KeyID != want.KeyID || !got.Answered.Equal(want.Answered) ||
		got.LocalKEK.KeyID != want.LocalKEK.KeyID || !bytes.Equal(got.LocalKEK.Key, want.LocalKEK.Key) ||
		!bytes.Equal(got.LocalKEK.Wrapped, want.LocalKEK.Wrapped) || !got.LocalKEK.Created.Equal(want.LocalKEK.Created) || got.LocalKEK.Uses != 42 ||
		len(got.Entries) != 3 || !bytes.Equal(got.Entries[2].Key, want.Entries[2].Key) || !bytes.Equal(got.Entries[1].Wrapped, want.Entries[1].Wrapped) {
		t.Fatalf("round trip: got %+v", got)
	}
	got.Clear()
	if !bytes.Equal(got.LocalKEK.Key, make([]byte, 32)) || !bytes.Equal(got.Entries[0].Key, make([]byte, 32)) {
		t.Fatal("Clear left key bytes")
	}
	none := &keep.Snapshot{KeyID: "k", Answered: time.Unix(1, 0)}
	b, _ = none.Marshal()
	if got, err := keep.Unmarshal(b); err != nil || got.LocalKEK != nil || len(got.Entries) != 0 {
		t.Fatalf("snapshot without local KEK or entries: %+v, %v", got, err)
	}
}

// The default number of entries fits the size bound with Vault's sizes; beyond the bound the
// least recently used entries are left out.
func TestSnapshotBound(t *testing.T) {
	b, err := sample(keep.DefaultEntries).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := keep.Unmarshal(b)
	if len(got.Entries) != keep.DefaultEntries {
		t.Fatalf("%d of %d entries kept: the default must fit MaxSize (%d bytes)", len(got.Entries), keep.DefaultEntries, len(b))
	}
	t.Logf("%d entries: %d bytes", keep.DefaultEntries, len(b))
	big := sample(10 * keep.DefaultEntries)
	b, err = big.Marshal()
	if err != nil || len(b) > keep.MaxSize {
		t.Fatalf("%d bytes, %v; want at most %d", len(b), err, keep.MaxSize)
	}
	got, err = keep.Unmarshal(b)
	if err != nil || len(got.Entries) == 0 || len(got.Entries) == len(big.Entries) || !bytes.Equal(got.Entries[0].Wrapped, big.Entries[0].Wrapped) {
		t.Fatalf("bounded: %d entries, %v; want the most recent ones first, not all", len(got.Entries), err)
	}
	if _, err := keep.Unmarshal(make([]byte, keep.MaxSize+1)); err == nil {
		t.Fatal("Unmarshal accepted an oversized state")
	}
}

func TestUnmarshalRejects(t *testing.T) {
	good, _ := sample(2).Marshal()
	for name, b := range map[string][]byte{
		"empty":     nil,
		"magic":     append([]byte("kms-plugin-keep\x02"), good[16:]...),
		"truncated": good[:len(good)-1],
		"trailing":  append(append([]byte(nil), good...), 0),
	} {
		if _, err := keep.Unmarshal(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Any changed byte of a kept state fails to load: a local KEK restored with a damaged key
// would write envelopes that Vault's copy of it cannot open.
func TestUnmarshalRejectsAnyChangedByte(t *testing.T) {
	good, err := sample(3).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 0x01
		if _, err := keep.Unmarshal(bad); err == nil {
			t.Fatalf("byte %d of %d changed: accepted", i, len(good))
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	good, _ := sample(2).Marshal()
	f.Add(good)
	f.Add([]byte("kms-plugin-keep\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := keep.Unmarshal(b)
		if err != nil {
			return
		}
		again, err := s.Marshal()
		if err != nil {
			t.Fatalf("a state that parsed does not marshal: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("Unmarshal then Marshal changed the bytes")
		}
	})
}

// tmpfsDir is a fresh directory on tmpfs (/dev/shm). A machine without one fails the test,
// naming what is missing: the tmpfs store is tested, not skipped.
func tmpfsDir(t *testing.T) string {
	t.Helper()
	if err := keep.OnTmpfs("/dev/shm"); err != nil {
		t.Fatalf("the tmpfs store's tests need a tmpfs at /dev/shm: %v", err)
	}
	dir, err := os.MkdirTemp("/dev/shm", "keep-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "state")
}

func TestTmpfsStore(t *testing.T) {
	dir := tmpfsDir(t)
	s, err := keep.NewTmpfs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(dir); err != nil || info.Mode().Perm() != 0o700 {
		t.Fatalf("directory %v, %v; want mode 0700", info, err)
	}
	if _, err := s.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of nothing: %v", err)
	}
	if err := s.Save([]byte("state")); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(filepath.Join(dir, keep.FileName)); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("state file %v, %v; want mode 0600", info, err)
	}
	if b, err := s.Load(); err != nil || string(b) != "state" {
		t.Fatalf("Load: %q, %v", b, err)
	}
	if err := s.Erase(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load after Erase: %v", err)
	}
	if err := s.Erase(); err != nil {
		t.Fatalf("Erase of nothing: %v", err)
	}
	os.Chmod(dir, 0o750)
	if err := s.Save([]byte("x")); err == nil || !strings.Contains(err.Error(), "chmod 700") {
		t.Fatalf("Save into a directory others may read: %v", err)
	}
}

// A directory on disk is refused: a plaintext state there would outlive a reboot.
func TestTmpfsStoreRefusesDisk(t *testing.T) {
	dir := t.TempDir()
	if keep.OnTmpfs(dir) == nil {
		// TMPDIR is on tmpfs here: the package's own directory is on disk.
		var err error
		if dir, err = os.MkdirTemp(".", "disk"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if keep.OnTmpfs(dir) == nil {
			t.Fatal("this test needs a directory on disk: both TMPDIR and the source tree are on tmpfs")
		}
	}
	if _, err := keep.NewTmpfs(dir); err == nil || !strings.Contains(err.Error(), "not on tmpfs") {
		t.Fatalf("NewTmpfs on disk: %v", err)
	}
}

// A save and an erase take turns, and a Keeper whose snapshot says nothing may be kept saves
// nothing: what is erased after a refusal stays erased.
func TestKeeperSaveAndErase(t *testing.T) {
	s, err := keep.NewTmpfs(tmpfsDir(t))
	if err != nil {
		t.Fatal(err)
	}
	refused := false
	k := keep.NewKeeper(s, func() *keep.Snapshot {
		if refused {
			return nil
		}
		return sample(1)
	}, slog.New(slog.DiscardHandler))
	if err := k.Save(); err != nil {
		t.Fatal(err)
	}
	if got, err := k.Load(); err != nil || got.KeyID != "vault:v2:abc:1" {
		t.Fatalf("Load: %+v, %v", got, err)
	}
	refused = true
	if err := k.Erase(errors.New("denied")); err != nil {
		t.Fatal(err)
	}
	k.Save()
	if _, err := k.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load after erase and save: %v", err)
	}
	// A state that does not parse is erased by Load.
	s.Save([]byte("garbage"))
	if _, err := k.Load(); err == nil {
		t.Fatal("garbage loaded")
	}
	if _, err := s.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("garbage still kept: %v", err)
	}
}

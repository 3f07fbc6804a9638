package localaes_test

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/kektest"
)

func newKeyFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.yaml")
	if _, err := localaes.AddKey(path, "first", true); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestContract(t *testing.T) {
	path := newKeyFile(t)
	b, err := localaes.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	kektest.Run(t, kektest.Backend{KEK: b, Rotate: func(t *testing.T) {
		if _, err := localaes.AddKey(path, "second", true); err != nil {
			t.Fatal(err)
		}
		if err := b.Reload(); err != nil {
			t.Fatal(err)
		}
	}})
}

func TestKeyFileIsCreatedPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "keys.yaml")
	id, err := localaes.AddKey(path, "", true)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("mode %04o, want 0600", perm)
	}
	if !regexp.MustCompile(`^localaes:key1:[0-9a-f]{16}$`).MatchString(id) {
		t.Fatalf("key id %q", id)
	}
}

func TestKeyIDNamesTheKeyWithoutRevealingIt(t *testing.T) {
	path := newKeyFile(t)
	raw, _ := os.ReadFile(path)
	var f localaes.File
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	secret, _ := base64.StdEncoding.DecodeString(f.Keys[0].Secret)
	b, _ := localaes.Open(path)
	id := b.CurrentID()
	if !strings.HasPrefix(id, "localaes:first:") {
		t.Fatalf("key id %q", id)
	}
	for _, leak := range []string{f.Keys[0].Secret, string(secret)} {
		if strings.Contains(id, leak) {
			t.Fatal("key id contains the key")
		}
	}
	// A different secret under the same name is a different key id.
	other := writeKeys(t, localaes.FileKey{Name: "first", Secret: b64(bytesOf(7, 32))})
	ob, err := localaes.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	if ob.CurrentID() == id {
		t.Fatal("same id for different secrets")
	}
}

func TestWriteKeyIsFirstEveryKeyDecrypts(t *testing.T) {
	path := newKeyFile(t)
	b, _ := localaes.Open(path)
	ctx := context.Background()
	first := b.CurrentID()
	wrapped, _ := b.Wrap(ctx, first, bytesOf(1, 32))

	// Step 1 of a rollout: the new key is decrypt-only; the write key does not change.
	second, err := localaes.AddKey(path, "second", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	if b.CurrentID() != first {
		t.Fatalf("after adding a decrypt-only key, write key = %s", b.CurrentID())
	}
	if ids := b.KeyIDs(); len(ids) != 2 || ids[1] != second {
		t.Fatalf("KeyIDs = %v", ids)
	}
	// Step 2: make it the write key by moving it first.
	raw, _ := os.ReadFile(path)
	var f localaes.File
	yaml.Unmarshal(raw, &f)
	f.Keys[0], f.Keys[1] = f.Keys[1], f.Keys[0]
	out, _ := yaml.Marshal(f)
	os.WriteFile(path, out, 0o600)
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	if b.CurrentID() != second {
		t.Fatalf("write key = %s, want %s", b.CurrentID(), second)
	}
	if _, err := b.Unwrap(ctx, first, wrapped); err != nil {
		t.Fatalf("old key no longer decrypts: %v", err)
	}
}

func TestBadKeyFilesAreRefused(t *testing.T) {
	good := b64(bytesOf(1, 32))
	cases := []struct {
		name, want string
		keys       []localaes.FileKey
		raw        string
		mode       os.FileMode
	}{
		{name: "no keys", want: "no keys", raw: "keys: []\n"},
		{name: "empty file", want: "no keys", raw: ""},
		{name: "short key", want: "16 bytes, must be 32", keys: []localaes.FileKey{{Name: "a", Secret: b64(bytesOf(1, 16))}}},
		{name: "long key", want: "33 bytes, must be 32", keys: []localaes.FileKey{{Name: "a", Secret: b64(bytesOf(1, 33))}}},
		{name: "not base64", want: "not valid base64", keys: []localaes.FileKey{{Name: "a", Secret: "%%%"}}},
		{name: "zero key", want: "all zeros", keys: []localaes.FileKey{{Name: "a", Secret: b64(make([]byte, 32))}}},
		{name: "duplicate names", want: `duplicate name "a"`, keys: []localaes.FileKey{{Name: "a", Secret: good}, {Name: "a", Secret: b64(bytesOf(2, 32))}}},
		{name: "same secret twice", want: "same secret as a", keys: []localaes.FileKey{{Name: "a", Secret: good}, {Name: "b", Secret: good}}},
		{name: "bad name", want: "name", keys: []localaes.FileKey{{Name: "a:b", Secret: good}}},
		{name: "empty name", want: "name", keys: []localaes.FileKey{{Name: "", Secret: good}}},
		{name: "unknown field", want: "unknown field", raw: "keys:\n- name: a\n  secret: " + good + "\n  sekret: x\n"},
		{name: "not yaml", want: "key file", raw: "keys: [\n"},
		{name: "group readable", want: "mode 0640", keys: []localaes.FileKey{{Name: "a", Secret: good}}, mode: 0o640},
		{name: "world readable", want: "mode 0604", keys: []localaes.FileKey{{Name: "a", Secret: good}}, mode: 0o604},
		{name: "mode 0644", want: "mode 0644", keys: []localaes.FileKey{{Name: "a", Secret: good}}, mode: 0o644},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys.yaml")
			raw := []byte(tc.raw)
			if tc.keys != nil {
				raw, _ = yaml.Marshal(localaes.File{Keys: tc.keys})
			}
			mode := tc.mode
			if mode == 0 {
				mode = 0o600
			}
			os.WriteFile(path, raw, mode)
			os.Chmod(path, mode)
			_, err := localaes.Open(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), good) {
				t.Fatal("error message contains a key")
			}
		})
	}
	if _, err := localaes.Open(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestFailedReloadKeepsKeys(t *testing.T) {
	path := newKeyFile(t)
	b, _ := localaes.Open(path)
	id := b.CurrentID()
	os.WriteFile(path, []byte("keys: []\n"), 0o600)
	if err := b.Reload(); err == nil {
		t.Fatal("reload of an empty key file succeeded")
	}
	if b.CurrentID() != id {
		t.Fatal("failed reload changed the write key")
	}
	if _, err := b.Wrap(context.Background(), id, bytesOf(3, 32)); err != nil {
		t.Fatalf("failed reload broke wrapping: %v", err)
	}
}

// Reloads while requests are in flight must not break them (run with -race).
func TestReloadDuringTraffic(t *testing.T) {
	path := newKeyFile(t)
	b, _ := localaes.Open(path)
	ctx := context.Background()
	id := b.CurrentID()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				wrapped, err := b.Wrap(ctx, id, bytesOf(byte(i), 32))
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := b.Unwrap(ctx, id, wrapped); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		if err := b.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

func TestAddKeyRefusesABrokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.yaml")
	os.WriteFile(path, []byte("keys: [\n"), 0o600)
	if _, err := localaes.AddKey(path, "", false); err == nil {
		t.Fatal("AddKey extended a broken key file")
	}
	if raw, _ := os.ReadFile(path); string(raw) != "keys: [\n" {
		t.Fatal("AddKey changed a broken key file")
	}
}

func TestUnknownKeyIsFailedPrecondition(t *testing.T) {
	path := newKeyFile(t)
	b, _ := localaes.Open(path)
	_, err := b.Unwrap(context.Background(), "localaes:gone:0123456789abcdef", bytesOf(1, 60))
	if !errors.Is(err, dek.ErrUnknownKey) || !strings.Contains(err.Error(), path) {
		t.Fatalf("err = %v; want ErrUnknownKey naming the key file for the log", err)
	}
	// The gRPC client is told the key id it sent, never the key file's path.
	if msg := dek.ClientMessage(err); strings.Contains(msg, path) || !strings.Contains(msg, "localaes:gone:0123456789abcdef is not held") {
		t.Fatalf("client message %q", msg)
	}
	var _ dek.KEK = b
}

func writeKeys(t *testing.T, keys ...localaes.FileKey) string {
	path := filepath.Join(t.TempDir(), "keys.yaml")
	raw, _ := yaml.Marshal(localaes.File{Keys: keys})
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func bytesOf(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b + byte(i)
	}
	return out
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

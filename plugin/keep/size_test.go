package keep_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/cache"
	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/plugin/keep"
)

// vaultSizedKEK wraps as Transit does in size: "vault:v1:" and the base64 of a 12-byte nonce,
// the 32-byte key and a 16-byte tag (89 bytes); its key id has the length of Vault's.
type vaultSizedKEK struct{}

const vaultKeyID = "vault:0123456789abcdef:v1"

func (vaultSizedKEK) CurrentID() string           { return vaultKeyID }
func (vaultSizedKEK) Check(context.Context) error { return nil }
func (vaultSizedKEK) Wrap(_ context.Context, _ string, d []byte) ([]byte, error) {
	return []byte("vault:v1:" + base64.StdEncoding.EncodeToString(make([]byte, 12+len(d)+16))), nil
}
func (vaultSizedKEK) Unwrap(context.Context, string, []byte) ([]byte, error) { return nil, nil }

// The size per DEK cache entry that docs/vault.md and DefaultEntries state, measured with
// Vault's sizes in local KEK mode (the default), with and without a recovery seal.
func TestSnapshotEntrySize(t *testing.T) {
	priv, err := recovery.Generate(recovery.KEMX25519)
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]dek.LocalKEKConfig{"local KEK": {}, "local KEK, recovery seal": {Recovery: priv.Public()}} {
		s := dek.NewLocalSealer(vaultSizedKEK{}, cfg)
		snap := &keep.Snapshot{KeyID: vaultKeyID}
		empty, err := snap.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		for range keep.DefaultEntries {
			seed := make([]byte, 32)
			rand.Read(seed)
			ct, err := s.Encrypt(context.Background(), vaultKeyID, seed)
			if err != nil {
				t.Fatal(err)
			}
			snap.Entries = append(snap.Entries, cache.Entry{KeyID: vaultKeyID, Wrapped: ct, Key: seed})
		}
		full, err := snap.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		per := (len(full) - len(empty)) / keep.DefaultEntries
		t.Logf("%s: %d bytes per entry, %d bytes at %d", name, per, len(full), keep.DefaultEntries)
		// docs/vault.md: about 300 bytes, about 390 with a seal; all DefaultEntries fit.
		if per > 400 || len(full) > keep.MaxSize {
			t.Fatalf("%s: %d bytes per entry, %d in all: docs/vault.md and DefaultEntries say otherwise", name, per, len(full))
		}
	}
}

package dek_test

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/sha256"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
)

// fixedKEK has keys derived from their ids, so the checked-in corpus (testdata/fuzz) and
// every fuzz worker process share them.
func fixedKEK() *memKEK {
	k := &memKEK{keys: map[string]cipher.AEAD{}, current: "k1"}
	for _, id := range []string{"k1", "k2"} {
		key := sha256.Sum256([]byte("fuzz key " + id))
		k.addKey(id, key[:])
	}
	return k
}

// fuzzPlaintexts are the only plaintexts ever sealed for the fuzz corpus.
var fuzzPlaintexts = [][]byte{{}, []byte("a 32-byte DEK seed, more or less"), bytes.Repeat([]byte{0xff}, 300)}

// FuzzDecrypt feeds arbitrary bytes to the envelope parser and Decrypt, with the backend and
// with the recovery key alone (format v3's fields: recovery id, KEM, encapsulated key, sealed
// local KEK). Whatever the input, Decrypt must not panic; when it succeeds, the plaintext must
// be one that was really sealed and the key id the one the envelope names: a changed byte can
// never yield other plaintext.
func FuzzDecrypt(f *testing.F) {
	s := dek.NewSealer(fixedKEK())
	local := dek.NewLocalSealer(fixedKEK(), dek.LocalKEKConfig{}) // format v2
	priv := goldenRecoveryKey(f)
	sealed := dek.NewLocalSealer(fixedKEK(), dek.LocalKEKConfig{Recovery: priv.Public()}) // format v3
	offline := dek.NewSealer(&goneKEK{}).OpenWith(dek.NewRecovery(priv))
	for _, pt := range fuzzPlaintexts {
		for _, id := range []string{"k1", "k2"} {
			for _, sealer := range []*dek.Sealer{s, local, sealed} {
				ct, err := sealer.Encrypt(context.Background(), id, pt)
				if err != nil {
					f.Fatal(err)
				}
				f.Add(ct)
			}
		}
	}
	f.Fuzz(func(t *testing.T, ct []byte) {
		check(t, s, ct)
		check(t, offline, ct)
	})
}

func check(t *testing.T, s *dek.Sealer, ct []byte) {
	plain, id, err := s.Decrypt(context.Background(), ct)
	if err != nil {
		return
	}
	if id != "k1" && id != "k2" {
		t.Fatalf("Decrypt succeeded with key id %q", id)
	}
	if kid, perr := dek.KeyIDOf(ct); perr != nil || kid != id {
		t.Fatalf("Decrypt succeeded but KeyIDOf = %q, %v", kid, perr)
	}
	for _, want := range fuzzPlaintexts {
		if bytes.Equal(plain, want) {
			return
		}
	}
	t.Fatalf("Decrypt returned plaintext that was never sealed: %x", plain)
}

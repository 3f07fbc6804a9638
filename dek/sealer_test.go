package dek_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
)

// memKEK is an in-memory KEK for unit tests of the envelope; the backends have their own
// tests against real keys and servers.
type memKEK struct {
	mu      sync.Mutex
	current string
	keys    map[string]cipher.AEAD
	err     error // returned by every call when set
	wraps   int
}

func newMemKEK(t testing.TB, ids ...string) *memKEK {
	k := &memKEK{keys: map[string]cipher.AEAD{}}
	for _, id := range ids {
		k.add(t, id)
	}
	k.current = ids[0]
	return k
}

func (k *memKEK) add(t testing.TB, id string) {
	key := make([]byte, 32)
	rand.Read(key)
	k.addKey(id, key)
}

func (k *memKEK) addKey(id string, key []byte) {
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	k.mu.Lock()
	k.keys[id] = aead
	k.mu.Unlock()
}

func (k *memKEK) CurrentID() string               { k.mu.Lock(); defer k.mu.Unlock(); return k.current }
func (k *memKEK) Check(ctx context.Context) error { return k.err }

func (k *memKEK) Wrap(_ context.Context, id string, d []byte) ([]byte, error) {
	k.mu.Lock()
	k.wraps++
	k.mu.Unlock()
	aead, err := k.aead(id)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, 12)
	rand.Read(nonce)
	return aead.Seal(nonce, nonce, d, []byte(id)), nil
}

func (k *memKEK) Unwrap(_ context.Context, id string, w []byte) ([]byte, error) {
	aead, err := k.aead(id)
	if err != nil {
		return nil, err
	}
	if len(w) < 12 {
		return nil, dek.ErrMalformed
	}
	p, err := aead.Open(nil, w[:12], w[12:], []byte(id))
	if err != nil {
		return nil, dek.ErrTampered
	}
	return p, nil
}

func (k *memKEK) aead(id string) (cipher.AEAD, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.err != nil {
		return nil, k.err
	}
	a, ok := k.keys[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", dek.ErrUnknownKey, id)
	}
	return a, nil
}

func TestRoundTrip(t *testing.T) {
	kek := newMemKEK(t, "k1")
	s := dek.NewSealer(kek)
	ctx := context.Background()
	for _, size := range []int{0, 1, 32, 1000, dek.MaxPlaintextSize} {
		plain := make([]byte, size)
		rand.Read(plain)
		ct, err := s.Encrypt(ctx, "k1", plain)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if size >= 16 && bytes.Contains(ct, plain) {
			t.Fatalf("size %d: ciphertext contains the plaintext", size)
		}
		got, id, err := s.Decrypt(ctx, ct)
		if err != nil || id != "k1" || !bytes.Equal(got, plain) {
			t.Fatalf("size %d: Decrypt = %x, %q, %v", size, got, id, err)
		}
		if kid, err := dek.KeyIDOf(ct); err != nil || kid != "k1" {
			t.Fatalf("KeyIDOf = %q, %v", kid, err)
		}
	}
}

// kube-apiserver rejects an Encrypt response over 1 kB; its plaintexts are 32-byte seeds.
func TestSeedCiphertextFitsTheAPILimit(t *testing.T) {
	id := "vault:0123456789abcdef:v1234567"
	for name, s := range map[string]*dek.Sealer{
		"format 1": dek.NewSealer(newMemKEK(t, id)), "format 2 (local KEK)": dek.NewLocalSealer(newMemKEK(t, id), dek.LocalKEKConfig{}),
	} {
		ct, err := s.Encrypt(context.Background(), id, make([]byte, 32))
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) >= 1024 {
			t.Fatalf("%s: ciphertext of a 32-byte seed is %d bytes; the API limit is 1 kB", name, len(ct))
		}
		t.Logf("%s: ciphertext of a 32-byte seed: %d bytes (with a 60-byte wrapped key, as Vault's raw transit ciphertext is)", name, len(ct))
	}
}

func TestFreshDEKAndNoncePerEncrypt(t *testing.T) {
	s := dek.NewSealer(newMemKEK(t, "k1"))
	plain := []byte("the same plaintext")
	a, _ := s.Encrypt(context.Background(), "k1", plain)
	b, _ := s.Encrypt(context.Background(), "k1", plain)
	if bytes.Equal(a, b) {
		t.Fatal("two encryptions of one plaintext are identical")
	}
}

func TestOldKeysStillDecrypt(t *testing.T) {
	kek := newMemKEK(t, "k1")
	s := dek.NewSealer(kek)
	ctx := context.Background()
	old, _ := s.Encrypt(ctx, "k1", []byte("before rotation"))
	kek.add(t, "k2")
	kek.current = "k2"
	cur, _ := s.Encrypt(ctx, "k2", []byte("after rotation"))
	for _, ct := range [][]byte{old, cur} {
		if _, _, err := s.Decrypt(ctx, ct); err != nil {
			t.Fatal(err)
		}
	}
}

func TestEveryChangedByteFails(t *testing.T) {
	s := dek.NewSealer(newMemKEK(t, "k1", "k2"))
	ctx := context.Background()
	plain := []byte("secret value")
	ct, err := s.Encrypt(ctx, "k1", plain)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ct {
		for _, flip := range []byte{0x01, 0x80} {
			bad := bytes.Clone(ct)
			bad[i] ^= flip
			got, _, err := s.Decrypt(ctx, bad)
			if err == nil {
				t.Fatalf("byte %d ^ %#x: Decrypt succeeded with %q", i, flip, got)
			}
			if !isClientError(err) {
				t.Fatalf("byte %d ^ %#x: err = %v, want malformed, tampered or unknown key", i, flip, err)
			}
		}
	}
}

func TestTruncationsFail(t *testing.T) {
	s := dek.NewSealer(newMemKEK(t, "k1"))
	ct, _ := s.Encrypt(context.Background(), "k1", []byte("x"))
	for n := 0; n < len(ct); n++ {
		if _, _, err := s.Decrypt(context.Background(), ct[:n]); !isClientError(err) {
			t.Fatalf("truncated to %d bytes: err = %v", n, err)
		}
	}
	if _, _, err := s.Decrypt(context.Background(), append(bytes.Clone(ct), 0)); !isClientError(err) {
		t.Fatalf("one byte appended: err = %v", err)
	}
}

func TestLimits(t *testing.T) {
	s := dek.NewSealer(newMemKEK(t, "k1"))
	ctx := context.Background()
	if _, err := s.Encrypt(ctx, "k1", make([]byte, dek.MaxPlaintextSize+1)); !errors.Is(err, dek.ErrTooLarge) {
		t.Fatalf("oversized plaintext: err = %v", err)
	}
	if _, _, err := s.Decrypt(ctx, make([]byte, dek.MaxCiphertextSize+1)); !errors.Is(err, dek.ErrMalformed) {
		t.Fatalf("oversized ciphertext: err = %v", err)
	}
	if _, _, err := s.Decrypt(ctx, nil); !errors.Is(err, dek.ErrMalformed) {
		t.Fatalf("empty ciphertext: err = %v", err)
	}
	// The KEK holds the over-long id, so only the envelope's limit can refuse it, and it does
	// so before spending a backend call.
	long := strings.Repeat("k", dek.MaxKeyIDSize+1)
	longKEK := newMemKEK(t, long)
	if _, err := dek.NewSealer(longKEK).Encrypt(ctx, long, []byte("x")); err == nil {
		t.Fatal("over-long key id accepted")
	}
	if longKEK.wraps != 0 {
		t.Fatalf("over-long key id: %d backend wraps, want 0", longKEK.wraps)
	}
}

func TestBackendErrorsPassThrough(t *testing.T) {
	kek := newMemKEK(t, "k1")
	s := dek.NewSealer(kek)
	ctx := context.Background()
	ct, _ := s.Encrypt(ctx, "k1", []byte("x"))
	kek.err = fmt.Errorf("connection refused: %w", dek.ErrUnavailable)
	if _, err := s.Encrypt(ctx, "k1", []byte("x")); !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("Encrypt: err = %v", err)
	}
	if _, _, err := s.Decrypt(ctx, ct); !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("Decrypt: err = %v", err)
	}
}

func isClientError(err error) bool {
	return errors.Is(err, dek.ErrMalformed) || errors.Is(err, dek.ErrTampered) || errors.Is(err, dek.ErrUnknownKey)
}

package dek_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/kmsplugin/kms-plugin/dek"
)

// transitKEK stands in for the Vault backend's reading of vault-kubernetes-kms envelopes in
// unit tests: one AES-GCM key per transit version, no associated data, ciphertext = nonce ||
// sealed, as Transit's aes256-gcm96 does. The real thing is tested against Vault
// (backends/vault, integration).
type transitKEK struct {
	memKEK
	versions map[int]cipher.AEAD
}

func newTransitKEK(seed string, versions ...int) *transitKEK {
	k := &transitKEK{memKEK: *fixedKEK(), versions: map[int]cipher.AEAD{}}
	for _, v := range versions {
		key := sha256.Sum256([]byte(seed + strconv.Itoa(v)))
		block, _ := aes.NewCipher(key[:])
		k.versions[v], _ = cipher.NewGCM(block)
	}
	return k
}

func (k *transitKEK) ReadsVaultKubernetesKMS() bool { return true }

// encrypt is what vault-kubernetes-kms's Encrypt returns: Transit's text itself.
func (k *transitKEK) encrypt(t testing.TB, version int, plain []byte) []byte {
	aead := k.versions[version]
	nonce := make([]byte, 12)
	rand.Read(nonce)
	raw := aead.Seal(nonce, nonce, plain, nil)
	return []byte("vault:v" + strconv.Itoa(version) + ":" + base64.StdEncoding.EncodeToString(raw))
}

func (k *transitKEK) Unwrap(ctx context.Context, keyID string, w []byte) ([]byte, error) {
	v, ok := dek.VaultKMSVersion(keyID)
	if !ok {
		return k.memKEK.Unwrap(ctx, keyID, w)
	}
	aead, ok := k.versions[v]
	if !ok {
		return nil, fmt.Errorf("%w: version %d", dek.ErrUnknownKey, v)
	}
	if len(w) < 12 {
		return nil, dek.ErrMalformed
	}
	p, err := aead.Open(nil, w[:12], w[12:], nil)
	if err != nil {
		return nil, dek.ErrTampered
	}
	return p, nil
}

func TestVaultKMSEnvelopeReads(t *testing.T) {
	kek := newTransitKEK("ours", 1, 2)
	s := dek.NewSealer(kek)
	var read []int
	s.ReadVaultKubernetesKMS(func(v int) { read = append(read, v) })
	seed := make([]byte, dek.SeedSize)
	rand.Read(seed)
	for _, v := range []int{1, 2} {
		got, id, err := s.Decrypt(context.Background(), kek.encrypt(t, v, seed))
		if err != nil || !bytes.Equal(got, seed) || id != "vault:v"+strconv.Itoa(v) {
			t.Fatalf("version %d: Decrypt = %x, %q, %v", v, got, id, err)
		}
	}
	if fmt.Sprint(read) != "[1 2]" {
		t.Fatalf("reads counted: %v", read)
	}
	// Our own envelopes still read beside them.
	ct, err := s.Encrypt(context.Background(), "k1", seed)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := s.Decrypt(context.Background(), ct); err != nil || !bytes.Equal(got, seed) {
		t.Fatalf("own envelope: %x, %v", got, err)
	}
}

// With the reader off, such an envelope is refused with a message naming the flag, and the
// backend is not asked.
func TestVaultKMSEnvelopeOff(t *testing.T) {
	kek := newTransitKEK("ours", 1)
	s := dek.NewSealer(kek)
	seed := make([]byte, dek.SeedSize)
	_, id, err := s.Decrypt(context.Background(), kek.encrypt(t, 1, seed))
	if !errors.Is(err, dek.ErrFormatOff) || id != "vault:v1" {
		t.Fatalf("Decrypt = %q, %v; want ErrFormatOff", id, err)
	}
	if c := dek.Classify(context.Background(), err); c.Code != codes.FailedPrecondition {
		t.Fatalf("class %v", c)
	}
	if msg := dek.ClientMessage(err); !strings.Contains(msg, "--vault-read-vault-kubernetes-kms") {
		t.Fatalf("client message does not name the flag: %q", msg)
	}
}

// A tampered, truncated, other-key, wrong-version or wrong-size envelope fails with a clear
// error, never with plaintext.
func TestVaultKMSEnvelopeRefusals(t *testing.T) {
	kek := newTransitKEK("ours", 1, 2)
	other := newTransitKEK("another key", 1)
	s := dek.NewSealer(kek)
	s.ReadVaultKubernetesKMS(nil)
	seed := bytes.Repeat([]byte{7}, dek.SeedSize)
	good := kek.encrypt(t, 1, seed)
	// A changed byte of the decoded ciphertext, re-encoded canonically.
	raw, _ := base64.StdEncoding.DecodeString(string(good[len("vault:v1:"):]))
	raw[20] ^= 1
	flipped := []byte("vault:v1:" + base64.StdEncoding.EncodeToString(raw))
	underV2 := kek.encrypt(t, 2, seed)
	relabeled := append([]byte("vault:v1:"), underV2[len("vault:v2:"):]...)

	for _, tc := range []struct {
		name string
		ct   []byte
		want error
	}{
		{"tampered", flipped, dek.ErrTampered},
		{"truncated base64", good[:len(good)-4], dek.ErrTampered},
		{"truncated mid-quantum", good[:len(good)-1], dek.ErrMalformed},
		{"prefix only", []byte("vault:v1:"), dek.ErrMalformed},
		{"other transit key", other.encrypt(t, 1, seed), dek.ErrTampered},
		{"version from the prefix only", relabeled, dek.ErrTampered},
		{"16-byte plaintext", kek.encrypt(t, 1, seed[:16]), dek.ErrTampered},
		{"33-byte plaintext", kek.encrypt(t, 1, append(seed, 1)), dek.ErrTampered},
		{"empty plaintext", kek.encrypt(t, 1, nil), dek.ErrTampered},
		{"version 3 not held", []byte("vault:v3:" + string(good[len("vault:v1:"):])), dek.ErrUnknownKey},
	} {
		got, _, err := s.Decrypt(context.Background(), tc.ct)
		if got != nil || !errors.Is(err, tc.want) {
			t.Errorf("%s: Decrypt = %x, %v; want %v", tc.name, got, err, tc.want)
		}
	}
}

func TestParseVaultKMS(t *testing.T) {
	for _, tc := range []struct {
		in      string
		version int
		ok      bool
	}{
		{"vault:v1:AAAA", 1, true},
		{"vault:v123456789:AA==", 123456789, true},
		{"vault:v0:AAAA", 0, false},
		{"vault:v01:AAAA", 0, false},
		{"vault:v1234567890:AAAA", 0, false},
		{"vault:v:AAAA", 0, false},
		{"vault:v1AAAA", 0, false},
		{"vault:v1:", 0, false},
		{"vault:v1:AAA", 0, false},                          // not padded
		{"vault:v1:AB==", 0, false},                         // not canonical (Strict)
		{"vault:v1:AAAA\n", 0, false},                       // trailing newline
		{"vault:v1:AA AA", 0, false},                        // space
		{"vault:v-1:AAAA", 0, false},                        // sign
		{"vault:1:AAAA", 0, false},                          // not Transit's
		{"vault:v1:" + strings.Repeat("A", 1016), 0, false}, // over 1 KiB
	} {
		env, err := dek.ParseVaultKMS([]byte(tc.in))
		if (err == nil) != tc.ok || (tc.ok && env.Version != tc.version) {
			t.Errorf("ParseVaultKMS(%q) = %+v, %v", tc.in, env, err)
		}
		if err != nil && !errors.Is(err, dek.ErrMalformed) {
			t.Errorf("ParseVaultKMS(%q): %v is not ErrMalformed", tc.in, err)
		}
	}
	for _, id := range []string{"vault:v1", "vault:v42"} {
		if v, ok := dek.VaultKMSVersion(id); !ok || dek.VaultKMSKeyID(v) != id {
			t.Errorf("VaultKMSVersion(%q) = %d, %v", id, v, ok)
		}
	}
	for _, id := range []string{"vault:0123456789abcdef:v1", "vault:v1:", "vault:v01", "k1", "vault:v1:AA=="} {
		if v, ok := dek.VaultKMSVersion(id); ok {
			t.Errorf("VaultKMSVersion(%q) = %d, true", id, v)
		}
	}
}

// FuzzVaultKMS feeds arbitrary bytes to the foreign reader. It must not panic; when Decrypt
// succeeds the input parses, and the plaintext is a seed that was really sealed.
func FuzzVaultKMS(f *testing.F) {
	kek := newTransitKEK("fuzz", 1, 2)
	s := dek.NewSealer(kek)
	s.ReadVaultKubernetesKMS(nil)
	seeds := [][]byte{bytes.Repeat([]byte{1}, dek.SeedSize), bytes.Repeat([]byte{2}, dek.SeedSize)}
	for _, v := range []int{1, 2} {
		for _, seed := range seeds {
			f.Add(kek.encrypt(f, v, seed))
		}
		f.Add(kek.encrypt(f, v, seeds[0][:16]))
	}
	f.Add([]byte("vault:v1:"))
	f.Add([]byte("vault:v99999999:AAAA"))
	f.Fuzz(func(t *testing.T, ct []byte) {
		plain, _, err := s.Decrypt(context.Background(), ct)
		env, perr := dek.ParseVaultKMS(ct)
		if dek.IsVaultKMS(ct) && perr != nil && err == nil {
			t.Fatalf("Decrypt succeeded on an envelope that does not parse: %v", perr)
		}
		if perr == nil && dek.VaultKMSKeyID(env.Version) != "vault:v"+strconv.Itoa(env.Version) {
			t.Fatalf("version %d does not round-trip", env.Version)
		}
		if err != nil {
			return
		}
		for _, want := range seeds {
			if bytes.Equal(plain, want) {
				return
			}
		}
		t.Fatalf("Decrypt returned plaintext that was never sealed: %x", plain)
	})
}

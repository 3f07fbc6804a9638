package providers

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"

	"golang.org/x/crypto/nacl/secretbox"
)

const secretboxNonceSize = 24

// Secretbox is the apiserver's secretbox provider: a random 24-byte nonce, then NaCl secretbox
// (XSalsa20-Poly1305: tag, then ciphertext) under a 32-byte key, with no additional data, so
// a value copied to another etcd key still decrypts. 192-bit random nonces never collide in
// practice.
type Secretbox struct{ key [32]byte }

// NewSecretbox returns the secretbox transformer of one 32-byte key.
func NewSecretbox(key []byte) (*Secretbox, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("key of %d bytes: want 32", len(key))
	}
	t := &Secretbox{}
	copy(t.key[:], key)
	return t, nil
}

// NewSecretboxProvider returns the "k8s:enc:secretbox:v1:" link of a provider with these keys.
func NewSecretboxProvider(keys []Key) (Link, error) {
	return keyChain("secretbox", SecretboxPrefix, keys, func(k []byte) (Transformer, error) { return NewSecretbox(k) })
}

// Encrypt appends nonce || tag || ciphertext to dst.
func (t *Secretbox) Encrypt(_ context.Context, dst, plaintext, _ []byte) ([]byte, error) {
	dst = slices.Grow(dst, secretboxNonceSize+secretbox.Overhead+len(plaintext))
	var nonce [secretboxNonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("secretbox: reading a random nonce: %w", err)
	}
	return secretbox.Seal(append(dst, nonce[:]...), plaintext, &nonce, &t.key), nil
}

// Decrypt opens nonce || tag || ciphertext.
func (t *Secretbox) Decrypt(_ context.Context, data, _ []byte) ([]byte, error) {
	if len(data) < secretboxNonceSize+secretbox.Overhead {
		return nil, fmt.Errorf("%w: secretbox value of %d bytes is shorter than nonce and tag", ErrMalformed, len(data))
	}
	var nonce [secretboxNonceSize]byte
	copy(nonce[:], data)
	body := data[secretboxNonceSize:]
	out, ok := secretbox.Open(make([]byte, 0, len(body)-secretbox.Overhead), body, &nonce, &t.key)
	if !ok {
		return nil, fmt.Errorf("%w: secretbox", ErrAuthentication)
	}
	return out, nil
}

package providers

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"slices"
)

const (
	gcmNonceSize = 12
	gcmTagSize   = 16
)

// AESGCM is the apiserver's aesgcm provider: a random 12-byte nonce, then AES-GCM ciphertext
// and tag, with the etcd key as additional data. Random 96-bit nonces make a key safe for
// about 2^32 writes; the apiserver's docs ask for rotation well before 200,000 writes.
type AESGCM struct{ aead cipher.AEAD }

// NewAESGCM returns the aesgcm transformer of one key of 16, 24 or 32 bytes.
func NewAESGCM(key []byte) (*AESGCM, error) {
	if err := checkAESKeySize(key); err != nil {
		return nil, err
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	return &AESGCM{aead: aead}, nil
}

// NewAESGCMProvider returns the "k8s:enc:aesgcm:v1:" link of a provider with these keys.
func NewAESGCMProvider(keys []Key) (Link, error) {
	return keyChain("aesgcm", AESGCMPrefix, keys, func(k []byte) (Transformer, error) { return NewAESGCM(k) })
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Encrypt appends nonce || ciphertext || tag to dst.
func (t *AESGCM) Encrypt(_ context.Context, dst, plaintext, etcdKey []byte) ([]byte, error) {
	return gcmSeal(t.aead, dst, plaintext, etcdKey)
}

// Decrypt opens nonce || ciphertext || tag with the etcd key as additional data.
func (t *AESGCM) Decrypt(_ context.Context, data, etcdKey []byte) ([]byte, error) {
	return gcmOpen(t.aead, "aesgcm", data, etcdKey)
}

func gcmSeal(aead cipher.AEAD, dst, plaintext, ad []byte) ([]byte, error) {
	dst = slices.Grow(dst, gcmNonceSize+len(plaintext)+gcmTagSize)
	nonce := dst[len(dst) : len(dst)+gcmNonceSize]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("reading a random nonce: %w", err)
	}
	return aead.Seal(dst[:len(dst)+gcmNonceSize], nonce, plaintext, ad), nil
}

func gcmOpen(aead cipher.AEAD, what string, data, ad []byte) ([]byte, error) {
	if len(data) < gcmNonceSize+gcmTagSize {
		return nil, fmt.Errorf("%w: %s value of %d bytes is shorter than nonce and tag", ErrMalformed, what, len(data))
	}
	out, err := aead.Open(nil, data[:gcmNonceSize], data[gcmNonceSize:], ad)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrAuthentication, what)
	}
	return out, nil
}

package dek

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// DEKSize is the size of a data key: AES-256.
const DEKSize = 32

// Sealer seals plaintexts under fresh DEKs that a KEK wraps, and opens them again.
type Sealer struct {
	kek     KEK
	local   *localKEKs     // local KEK mode (localkek.go) when set
	foreign *foreignReader // vault-kubernetes-kms envelopes (foreign.go) when set
	// recovery opens the recovery seals of its key (recoveryseal.go) when set
	recovery *Recovery
}

// NewSealer returns a Sealer whose DEKs the given KEK wraps.
func NewSealer(kek KEK) *Sealer { return &Sealer{kek: kek} }

// Encrypt seals plaintext under a fresh DEK wrapped by the KEK named keyID.
func (s *Sealer) Encrypt(ctx context.Context, keyID string, plaintext []byte) ([]byte, error) {
	if len(plaintext) > MaxPlaintextSize {
		return nil, Public(fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(plaintext), MaxPlaintextSize))
	}
	if err := checkKeyID(keyID); err != nil {
		return nil, err // before Wrap: an id the envelope cannot carry must not cost a backend call
	}
	dek := make([]byte, DEKSize)
	defer clear(dek)
	if _, err := rand.Read(dek); err != nil {
		return nil, fmt.Errorf("generating DEK: %w", err)
	}
	if s.local != nil {
		return s.encryptLocal(ctx, keyID, dek, plaintext)
	}
	wrapped, err := s.kek.Wrap(ctx, keyID, dek)
	if err != nil {
		return nil, fmt.Errorf("wrapping DEK with %s: %w", keyID, err)
	}
	out := make([]byte, 0, 1+1+len(keyID)+2+len(wrapped)+nonceSize+len(plaintext)+tagSize)
	out, err = appendHeader(out, formatV1, keyID, wrapped)
	if err != nil {
		return nil, err
	}
	return seal(out, dek, plaintext)
}

// seal appends a fresh nonce and the plaintext sealed under dek to header, which is the
// additional data.
func seal(header, dek, plaintext []byte) ([]byte, error) {
	aead, err := newGCM(dek)
	if err != nil {
		return nil, err
	}
	return sealWith(aead, header, plaintext)
}

// sealWith appends a fresh nonce and the plaintext sealed by aead to header, which is the
// additional data. header's capacity must hold both.
func sealWith(aead cipher.AEAD, header, plaintext []byte) ([]byte, error) {
	nonce := header[len(header) : len(header)+nonceSize]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("generating nonce: %w", err)
	}
	return aead.Seal(header[:len(header)+nonceSize], nonce, plaintext, header), nil
}

// Decrypt opens a ciphertext that Encrypt made, with whichever KEK it names, and returns the
// plaintext and that KEK's id.
func (s *Sealer) Decrypt(ctx context.Context, ciphertext []byte) ([]byte, string, error) {
	if IsVaultKMS(ciphertext) {
		return s.decryptForeign(ctx, ciphertext)
	}
	env, err := parseEnvelope(ciphertext)
	if err != nil {
		return nil, "", err
	}
	var dek []byte
	if env.version != formatV1 {
		dek, err = s.unwrapLocal(ctx, env)
	} else if dek, err = s.kek.Unwrap(ctx, env.keyID, env.wrappedDEK); err != nil {
		err = fmt.Errorf("unwrapping DEK with %s: %w", env.keyID, err)
	}
	if err != nil {
		return nil, env.keyID, err
	}
	defer clear(dek)
	if len(dek) != DEKSize {
		return nil, env.keyID, Public(fmt.Errorf("%w: unwrapped DEK has %d bytes", ErrTampered, len(dek)))
	}
	aead, err := newGCM(dek)
	if err != nil {
		return nil, env.keyID, err
	}
	plaintext, err := aead.Open(nil, env.nonce, env.sealed, env.header)
	if err != nil {
		return nil, env.keyID, Public(fmt.Errorf("%w: sealed data", ErrTampered))
	}
	return plaintext, env.keyID, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, errors.New("dek: AES cipher: " + err.Error())
	}
	return cipher.NewGCM(block)
}

package providers

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"slices"
)

// AESCBC is the apiserver's aescbc provider: a random 16-byte IV, then AES-CBC of the
// PKCS#7-padded plaintext. It is not authenticated: a wrong key or a changed byte fails only
// when the padding happens not to check out, and otherwise yields garbage.
type AESCBC struct{ block cipher.Block }

// NewAESCBC returns the aescbc transformer of one key of 16, 24 or 32 bytes.
func NewAESCBC(key []byte) (*AESCBC, error) {
	if err := checkAESKeySize(key); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return &AESCBC{block: block}, nil
}

// NewAESCBCProvider returns the "k8s:enc:aescbc:v1:" link of a provider with these keys.
func NewAESCBCProvider(keys []Key) (Link, error) {
	return keyChain("aescbc", AESCBCPrefix, keys, func(k []byte) (Transformer, error) { return NewAESCBC(k) })
}

// Encrypt appends IV || CBC(plaintext || padding) to dst.
func (t *AESCBC) Encrypt(_ context.Context, dst, plaintext, _ []byte) ([]byte, error) {
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	n := aes.BlockSize + len(plaintext) + pad
	dst = slices.Grow(dst, n)
	out := dst[len(dst) : len(dst)+n]
	iv, body := out[:aes.BlockSize], out[aes.BlockSize:]
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("aescbc: reading a random IV: %w", err)
	}
	copy(body, plaintext)
	for i := len(plaintext); i < len(body); i++ {
		body[i] = byte(pad)
	}
	cipher.NewCBCEncrypter(t.block, iv).CryptBlocks(body, body)
	return dst[:len(dst)+n], nil
}

// Decrypt accepts exactly what the apiserver accepts, except that a value of only an IV is an
// error here where the apiserver panics. Like the apiserver, it checks that every padding byte
// equals the padding length, allowing lengths above the block size.
func (t *AESCBC) Decrypt(_ context.Context, data, _ []byte) ([]byte, error) {
	if len(data) < aes.BlockSize {
		return nil, fmt.Errorf("%w: aescbc value of %d bytes is shorter than its IV", ErrMalformed, len(data))
	}
	iv, body := data[:aes.BlockSize], data[aes.BlockSize:]
	if len(body) == 0 || len(body)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("%w: aescbc ciphertext of %d bytes is not a positive multiple of the block size", ErrMalformed, len(body))
	}
	out := make([]byte, len(body))
	cipher.NewCBCDecrypter(t.block, iv).CryptBlocks(out, body)
	pad := int(out[len(out)-1])
	if pad == 0 || pad > len(out) {
		return nil, fmt.Errorf("%w: aescbc padding is invalid (wrong key or changed bytes)", ErrAuthentication)
	}
	for _, b := range out[len(out)-pad:] {
		if int(b) != pad {
			return nil, fmt.Errorf("%w: aescbc padding is invalid (wrong key or changed bytes)", ErrAuthentication)
		}
	}
	return out[:len(out)-pad], nil
}

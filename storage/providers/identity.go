package providers

import "context"

// Identity stores plaintext as it is. It refuses to read a value that starts with "k8s:enc:",
// so that encrypted data is never served as if it were the object (the apiserver's
// identity.NewEncryptCheckTransformer).
type Identity struct{}

// Encrypt appends plaintext unchanged.
func (Identity) Encrypt(_ context.Context, dst, plaintext, _ []byte) ([]byte, error) {
	return append(dst, plaintext...), nil
}

// Decrypt returns data itself, unless it is encrypted.
func (Identity) Decrypt(_ context.Context, data, _ []byte) ([]byte, error) {
	if hasPrefix(data, EncryptedPrefix) {
		return nil, ErrEncrypted
	}
	return data, nil
}

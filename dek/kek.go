// Package dek is the plugin's envelope encryption: a fresh data key (DEK) per Encrypt, an
// AES-256-GCM seal of the plaintext with it, and the DEK wrapped by a key-encryption key (KEK)
// that a backend holds.
package dek

import "context"

// KEK is what a backend provides: a set of key-encryption keys, one of which wraps new DEKs.
// Every key the backend still holds can unwrap. Implementations must be safe for concurrent use.
type KEK interface {
	// CurrentID names the key that should wrap new DEKs; it is the key_id Status reports.
	// It answers from memory and returns "" while the backend has never learned its key.
	CurrentID() string

	// Wrap wraps dek under the key named keyID, which need not be the current one.
	Wrap(ctx context.Context, keyID string, dek []byte) ([]byte, error)

	// Unwrap recovers a DEK that Wrap wrapped under keyID.
	Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error)

	// Check refreshes the backend's view of its keys and credentials (key versions, tokens)
	// and reports why it cannot serve, if it cannot. It neither wraps nor unwraps.
	Check(ctx context.Context) error
}

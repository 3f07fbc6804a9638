package dek

import "errors"

// Error kinds. Backends wrap these (fmt.Errorf("...: %w", dek.ErrUnavailable)) so that the gRPC
// layer can answer with the right code without knowing the backend; docs/errors.md has the table.
var (
	// ErrMalformed: the ciphertext is empty, truncated, oversized or not one of our envelopes.
	ErrMalformed = errors.New("malformed ciphertext")
	// ErrTampered: the ciphertext parsed but failed authentication (changed bytes, wrong key).
	ErrTampered = errors.New("ciphertext failed authentication")
	// ErrTooLarge: the plaintext exceeds MaxPlaintextSize.
	ErrTooLarge = errors.New("plaintext too large")
	// ErrUnknownKey: no key of that id is held, or it is retired (for example below Vault's
	// min_decryption_version). The data is intact; an operator must restore the key.
	ErrUnknownKey = errors.New("key-encryption key unknown or retired")
	// ErrUnavailable: the backend cannot be reached or is not ready (sealed, file unreadable).
	ErrUnavailable = errors.New("backend unavailable")
	// ErrDenied: the backend refused the operation (policy, revoked credentials).
	ErrDenied = errors.New("backend denied the operation")
	// ErrOverloaded: too many backend calls are in progress and waiting; nothing was tried.
	ErrOverloaded = errors.New("too many backend calls in progress")
)

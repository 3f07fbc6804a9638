package dek

import (
	"encoding/binary"
	"fmt"
)

// Format v1 of the plugin's ciphertext (docs/format.md):
//
//	version    1 byte, 0x01
//	idLen      1 byte, 1..255
//	keyID      idLen bytes: the KEK that wrapped the DEK
//	wrappedLen 2 bytes, big endian, 1..MaxWrappedDEKSize
//	wrappedDEK wrappedLen bytes: the DEK as the backend wrapped it
//	nonce      12 bytes
//	sealed     AES-256-GCM ciphertext of the plaintext, then its 16-byte tag
//
// Everything before the nonce (the header) is the GCM additional data, so a changed version,
// key id or wrapped DEK fails authentication like a changed ciphertext byte does.
const (
	formatV1 = 0x01

	nonceSize = 12
	tagSize   = 16

	// MaxKeyIDSize bounds a KEK id; ids travel in every envelope and in Status.
	MaxKeyIDSize = 255
	// MaxWrappedDEKSize bounds a backend's wrapped DEK (Vault's is under 100 bytes).
	MaxWrappedDEKSize = 4096
	// MaxPlaintextSize bounds what Encrypt accepts. kube-apiserver sends 32-byte DEK seeds;
	// the margin serves v1beta1 clients and tools, never bulk data.
	MaxPlaintextSize = 4096
	// MaxCiphertextSize bounds what Decrypt accepts: the largest envelope Encrypt can make.
	MaxCiphertextSize = 1 + 1 + MaxKeyIDSize + 2 + MaxWrappedDEKSize + nonceSize + MaxPlaintextSize + tagSize
)

// envelope is one parsed ciphertext. Its slices alias the buffer it was parsed from.
type envelope struct {
	header     []byte // version .. wrappedDEK: the additional data
	keyID      string
	wrappedDEK []byte
	nonce      []byte
	sealed     []byte
}

// appendHeader appends the v1 header for keyID and wrappedDEK to b.
func appendHeader(b []byte, keyID string, wrappedDEK []byte) ([]byte, error) {
	if err := checkKeyID(keyID); err != nil {
		return nil, err
	}
	if len(wrappedDEK) == 0 || len(wrappedDEK) > MaxWrappedDEKSize {
		return nil, fmt.Errorf("wrapped DEK of %d bytes: must be 1 to %d", len(wrappedDEK), MaxWrappedDEKSize)
	}
	b = append(b, formatV1, byte(len(keyID)))
	b = append(b, keyID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(wrappedDEK)))
	return append(b, wrappedDEK...), nil
}

// checkKeyID refuses a key id that the envelope's one-byte length cannot carry.
func checkKeyID(keyID string) error {
	if len(keyID) == 0 || len(keyID) > MaxKeyIDSize {
		return fmt.Errorf("key id of %d bytes: must be 1 to %d", len(keyID), MaxKeyIDSize)
	}
	return nil
}

// parseEnvelope splits a v1 ciphertext into its parts without decrypting anything.
func parseEnvelope(b []byte) (*envelope, error) {
	if len(b) == 0 {
		return nil, Public(fmt.Errorf("%w: empty", ErrMalformed))
	}
	if len(b) > MaxCiphertextSize {
		return nil, Public(fmt.Errorf("%w: %d bytes, the limit is %d", ErrMalformed, len(b), MaxCiphertextSize))
	}
	if b[0] != formatV1 {
		return nil, Public(fmt.Errorf("%w: unknown format version %d", ErrMalformed, b[0]))
	}
	rest := b[1:]
	if len(rest) < 1 {
		return nil, Public(fmt.Errorf("%w: truncated key id", ErrMalformed))
	}
	idLen := int(rest[0])
	rest = rest[1:]
	if idLen == 0 || len(rest) < idLen {
		return nil, Public(fmt.Errorf("%w: truncated key id", ErrMalformed))
	}
	keyID := string(rest[:idLen])
	rest = rest[idLen:]
	if len(rest) < 2 {
		return nil, Public(fmt.Errorf("%w: truncated wrapped DEK", ErrMalformed))
	}
	wrappedLen := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if wrappedLen == 0 || wrappedLen > MaxWrappedDEKSize || len(rest) < wrappedLen {
		return nil, Public(fmt.Errorf("%w: truncated wrapped DEK", ErrMalformed))
	}
	wrapped := rest[:wrappedLen]
	rest = rest[wrappedLen:]
	if len(rest) < nonceSize+tagSize {
		return nil, Public(fmt.Errorf("%w: truncated sealed data", ErrMalformed))
	}
	return &envelope{
		header:     b[:len(b)-len(rest)],
		keyID:      keyID,
		wrappedDEK: wrapped,
		nonce:      rest[:nonceSize],
		sealed:     rest[nonceSize:],
	}, nil
}

// KeyIDOf returns the id of the KEK that wrapped the DEK of ciphertext, without decrypting.
func KeyIDOf(ciphertext []byte) (string, error) {
	env, err := parseEnvelope(ciphertext)
	if err != nil {
		return "", err
	}
	return env.keyID, nil
}

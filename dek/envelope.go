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
//
// Format v2 (local KEK mode, localkek.go) carries a local KEK that the backend wrapped, and the
// DEK wrapped by that local KEK:
//
//	version    1 byte, 0x02
//	idLen      1 byte, 1..255
//	keyID      idLen bytes: the backend's KEK that wrapped the local KEK (Status's key id)
//	localLen   2 bytes, big endian, 1..MaxWrappedDEKSize
//	localKEK   localLen bytes: the local KEK as the backend wrapped it
//	wrappedDEK 60 bytes: nonce(12) || AES-256-GCM(DEK) || tag under the local KEK, with
//	           version .. localKEK as additional data
//	nonce      12 bytes
//	sealed     AES-256-GCM ciphertext of the plaintext, then its tag
//
// Everything before the nonce is again the sealed data's additional data.
const (
	formatV1 = 0x01
	formatV2 = 0x02

	// localWrappedSize is a DEK wrapped by a local KEK: nonce, DEK, tag.
	localWrappedSize = nonceSize + DEKSize + tagSize

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
	MaxCiphertextSize = 1 + 1 + MaxKeyIDSize + 2 + MaxWrappedDEKSize + localWrappedSize + nonceSize + MaxPlaintextSize + tagSize
)

// envelope is one parsed ciphertext. Its slices alias the buffer it was parsed from.
type envelope struct {
	version    byte
	header     []byte // version .. wrappedDEK: the additional data
	keyID      string
	wrappedDEK []byte // v1: the backend's; v2: the local KEK's
	localKEK   []byte // v2: the local KEK as the backend wrapped it
	localAD    []byte // v2: version .. localKEK, the wrapped DEK's additional data
	nonce      []byte
	sealed     []byte
}

// appendHeader appends the header of version for keyID and the backend's wrapped key (v1:
// the DEK; v2: the local KEK, which the caller follows with the locally wrapped DEK) to b.
func appendHeader(b []byte, version byte, keyID string, wrapped []byte) ([]byte, error) {
	if err := checkKeyID(keyID); err != nil {
		return nil, err
	}
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedDEKSize {
		return nil, fmt.Errorf("wrapped key of %d bytes: must be 1 to %d", len(wrapped), MaxWrappedDEKSize)
	}
	b = append(b, version, byte(len(keyID)))
	b = append(b, keyID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(wrapped)))
	return append(b, wrapped...), nil
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
	if b[0] != formatV1 && b[0] != formatV2 {
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
	env := &envelope{version: b[0], keyID: keyID, wrappedDEK: wrapped}
	if env.version == formatV2 {
		if len(rest) < localWrappedSize {
			return nil, Public(fmt.Errorf("%w: truncated locally wrapped DEK", ErrMalformed))
		}
		env.localKEK, env.localAD = wrapped, b[:len(b)-len(rest)]
		env.wrappedDEK, rest = rest[:localWrappedSize], rest[localWrappedSize:]
	}
	if len(rest) < nonceSize+tagSize {
		return nil, Public(fmt.Errorf("%w: truncated sealed data", ErrMalformed))
	}
	env.header, env.nonce, env.sealed = b[:len(b)-len(rest)], rest[:nonceSize], rest[nonceSize:]
	return env, nil
}

// KeyIDOf returns the id of the KEK that wrapped the DEK of ciphertext, without decrypting.
func KeyIDOf(ciphertext []byte) (string, error) {
	env, err := parseEnvelope(ciphertext)
	if err != nil {
		return "", err
	}
	return env.keyID, nil
}

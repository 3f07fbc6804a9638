package dek

import (
	"encoding/binary"
	"fmt"

	"github.com/kmsplugin/kms-plugin/dek/recovery"
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
//
// Format v3 (local KEK mode with a recovery public key, recoveryseal.go) is v2 with the local
// KEK also sealed to the offline recovery key (HPKE), between the local KEK and the wrapped DEK:
//
//	version    1 byte, 0x03
//	idLen, keyID, localLen, localKEK as in v2
//	recoveryID 8 bytes: the recovery key (SHA-256 of its suite and public key, first 8 bytes)
//	kem        2 bytes, big endian: the HPKE KEM (0x0020 X25519, 0x0010 P-256); KDF HKDF-SHA256
//	           and AEAD AES-256-GCM are fixed
//	encLen     1 byte, 1..65
//	enc        encLen bytes: HPKE's encapsulated key
//	sealedLen  1 byte, 1..255 (48 today)
//	sealedKEK  sealedLen bytes: the local KEK sealed by HPKE, with version .. kem as its
//	           additional data (so the seal belongs to this key id and this wrapped local KEK)
//	wrappedDEK, nonce, sealed as in v2; the wrapped DEK's and the sealed data's additional
//	           data cover everything before them, the recovery fields included
const (
	formatV1 = 0x01
	formatV2 = 0x02
	formatV3 = 0x03

	// maxRecoverySize is the recovery fields' largest size.
	maxRecoverySize = recovery.IDSize + 2 + 1 + recovery.MaxEncSize + 1 + 255

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
	MaxCiphertextSize = 1 + 1 + MaxKeyIDSize + 2 + MaxWrappedDEKSize + maxRecoverySize + localWrappedSize + nonceSize + MaxPlaintextSize + tagSize
)

// envelope is one parsed ciphertext. Its slices alias the buffer it was parsed from.
type envelope struct {
	version    byte
	header     []byte // version .. wrappedDEK: the additional data
	keyID      string
	wrappedDEK []byte // v1: the backend's; v2: the local KEK's
	localKEK   []byte // v2, v3: the local KEK as the backend wrapped it
	localAD    []byte // v2, v3: version .. localKEK (v3: .. sealedKEK), the wrapped DEK's additional data
	// v3: the recovery seal of the local KEK, and its HPKE additional data (version .. kem)
	recoveryID recovery.ID
	kem        uint16
	sealAD     []byte
	enc        []byte
	sealedKEK  []byte
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

// parseEnvelope splits a ciphertext into its parts without decrypting anything.
func parseEnvelope(b []byte) (*envelope, error) {
	if len(b) == 0 {
		return nil, Public(fmt.Errorf("%w: empty", ErrMalformed))
	}
	if len(b) > MaxCiphertextSize {
		return nil, Public(fmt.Errorf("%w: %d bytes, the limit is %d", ErrMalformed, len(b), MaxCiphertextSize))
	}
	if b[0] != formatV1 && b[0] != formatV2 && b[0] != formatV3 {
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
	if env.version != formatV1 {
		env.localKEK = wrapped
	}
	var err error
	if env.version == formatV3 {
		if rest, err = env.parseRecovery(b, rest); err != nil {
			return nil, err
		}
	}
	if env.version == formatV2 || env.version == formatV3 {
		if len(rest) < localWrappedSize {
			return nil, Public(fmt.Errorf("%w: truncated locally wrapped DEK", ErrMalformed))
		}
		env.localAD = b[:len(b)-len(rest)]
		env.wrappedDEK, rest = rest[:localWrappedSize], rest[localWrappedSize:]
	}
	if len(rest) < nonceSize+tagSize {
		return nil, Public(fmt.Errorf("%w: truncated sealed data", ErrMalformed))
	}
	env.header, env.nonce, env.sealed = b[:len(b)-len(rest)], rest[:nonceSize], rest[nonceSize:]
	return env, nil
}

// parseRecovery reads a v3 envelope's recovery fields from rest, the bytes after the local
// KEK of b, and returns what follows them.
func (env *envelope) parseRecovery(b, rest []byte) ([]byte, error) {
	if len(rest) < recovery.IDSize+2+1 {
		return nil, Public(fmt.Errorf("%w: truncated recovery seal", ErrMalformed))
	}
	copy(env.recoveryID[:], rest)
	rest = rest[recovery.IDSize:]
	env.kem = binary.BigEndian.Uint16(rest)
	rest = rest[2:]
	env.sealAD = b[:len(b)-len(rest)]
	encLen := int(rest[0])
	rest = rest[1:]
	if encLen == 0 || encLen > recovery.MaxEncSize || len(rest) < encLen+1 {
		return nil, Public(fmt.Errorf("%w: truncated recovery seal: encapsulated key", ErrMalformed))
	}
	env.enc, rest = rest[:encLen], rest[encLen:]
	sealedLen := int(rest[0])
	rest = rest[1:]
	if sealedLen == 0 || len(rest) < sealedLen {
		return nil, Public(fmt.Errorf("%w: truncated recovery seal: sealed local KEK", ErrMalformed))
	}
	env.sealedKEK, rest = rest[:sealedLen], rest[sealedLen:]
	return rest, nil
}

// KeyIDOf returns the id of the KEK that wrapped the DEK of ciphertext, without decrypting.
func KeyIDOf(ciphertext []byte) (string, error) {
	env, err := parseEnvelope(ciphertext)
	if err != nil {
		return "", err
	}
	return env.keyID, nil
}

// RecoverySeal describes an envelope's recovery seal, as scan reports it.
type RecoverySeal struct {
	KeyID recovery.ID // the recovery key that can open it
	KEM   uint16
}

// RecoverySealOf returns the recovery seal ciphertext carries (ok false: none, formats v1 and
// v2), without opening anything.
func RecoverySealOf(ciphertext []byte) (seal RecoverySeal, ok bool, err error) {
	env, err := parseEnvelope(ciphertext)
	if err != nil || env.version != formatV3 {
		return RecoverySeal{}, false, err
	}
	return RecoverySeal{KeyID: env.recoveryID, KEM: env.kem}, true, nil
}

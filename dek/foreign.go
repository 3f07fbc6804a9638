package dek

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
)

// The foreign reader: envelopes that vault-kubernetes-kms (github.com/FalcoSuessgott/
// vault-kubernetes-kms) wrote, so that an operator can stop that plugin and start this one on
// the same socket, transit key and provider name, and every stored object still reads.
//
// Its KMS v2 Encrypt sends the DEK seed to transit/encrypt/<key> (no context, no associated
// data, the key's latest version) and returns Transit's answer itself as the ciphertext: the
// ASCII text "vault:v<N>:<base64>", not base64'd again. Its key id is its own (the key's
// latest_version as a decimal string since mid-2024, a creation timestamp before) and never
// used here: the version is taken from the "vault:v<N>:" prefix alone, and the transit key is
// this plugin's own (--vault-transit-key), never one the envelope names.
//
// Such an envelope carries no associated data and no key id of ours, so the reader is bounded:
// it is off unless the backend says it reads them (ForeignReader), and it answers only
// plaintexts of SeedSize, the size of every DEK seed (and AES key) the apiserver sends. Our own
// formats start with 0x01, 0x02 or 0x03; Transit's text starts with 'v', so the first byte tells
// them apart without guessing.

// SeedSize is the size of what kube-apiserver's KMS v2 Encrypt sends: a 32-byte DEK seed
// (HKDF_SHA256_XNONCE_AES_GCM_SEED, k8s.io/apiserver aes.MinSeedSizeExtendedNonceGCM) or, from
// apiservers 1.27-1.28, a 32-byte AES-256 key.
const SeedSize = 32

// MaxForeignSize bounds a vault-kubernetes-kms envelope: the apiserver refuses a plugin's
// ciphertext over 1 KiB, so it never stored a bigger one.
const MaxForeignSize = 1024

// ErrFormatOff: the ciphertext is a foreign plugin's envelope that this plugin can read, but
// reading it is not turned on.
var ErrFormatOff = errors.New("envelope format not enabled")

// vaultKMSPrefix starts every Transit ciphertext, and so every vault-kubernetes-kms envelope.
const vaultKMSPrefix = "vault:v"

// ForeignReader is a backend that reads vault-kubernetes-kms's envelopes: its Unwrap takes the
// key id VaultKMSKeyID(version) and the Transit ciphertext's decoded bytes, and asks its own
// transit key to decrypt them at that version, with no associated data. The serving stack
// turns the reader on when the backend says it reads them (serve's
// --vault-read-vault-kubernetes-kms).
type ForeignReader interface {
	ReadsVaultKubernetesKMS() bool
}

// VaultKMSEnvelope is a parsed vault-kubernetes-kms envelope.
type VaultKMSEnvelope struct {
	Version    int    // the transit key version, from the "vault:v<N>:" prefix
	Ciphertext []byte // Transit's ciphertext after the prefix, base64-decoded
}

// IsVaultKMS reports whether b is in vault-kubernetes-kms's format, by its first bytes only.
func IsVaultKMS(b []byte) bool {
	return len(b) >= len(vaultKMSPrefix) && string(b[:len(vaultKMSPrefix)]) == vaultKMSPrefix
}

// ParseVaultKMS reads a vault-kubernetes-kms envelope strictly: "vault:v", a version of 1 to 9
// digits without a leading zero, ":", then canonical padded standard base64 of at least one
// byte, and nothing else.
func ParseVaultKMS(b []byte) (VaultKMSEnvelope, error) {
	bad := func(why string) (VaultKMSEnvelope, error) {
		return VaultKMSEnvelope{}, Public(fmt.Errorf("%w: vault-kubernetes-kms envelope: %s", ErrMalformed, why))
	}
	if len(b) > MaxForeignSize {
		return bad(fmt.Sprintf("%d bytes, the limit is %d", len(b), MaxForeignSize))
	}
	if !IsVaultKMS(b) {
		return bad(`no "vault:v" prefix`)
	}
	rest := b[len(vaultKMSPrefix):]
	i := 0
	for i < len(rest) && i < 10 && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == 0 || i > 9 || rest[0] == '0' || i == len(rest) || rest[i] != ':' {
		return bad("the key version is not 1 to 9 digits followed by ':'")
	}
	version, _ := strconv.Atoi(string(rest[:i])) // 9 digits fit
	b64 := rest[i+1:]
	// encoding/base64 skips '\r' and '\n' even in Strict mode: Transit's text has none.
	if bytes.ContainsAny(b64, "\r\n") {
		return bad("the ciphertext holds a line break")
	}
	raw := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Strict().Decode(raw, b64)
	if err != nil || n == 0 {
		return bad("the ciphertext is not base64 of at least one byte")
	}
	return VaultKMSEnvelope{Version: version, Ciphertext: raw[:n]}, nil
}

// VaultKMSKeyID is the key id under which the Sealer asks the backend (ForeignReader) to
// unwrap a vault-kubernetes-kms envelope of transit key version v. It is Transit's own prefix
// without the colon, and never one of our key ids (those are vault:<lineage>:v<version>).
func VaultKMSKeyID(v int) string { return vaultKMSPrefix + strconv.Itoa(v) }

// VaultKMSVersion is the version that a key id of VaultKMSKeyID names; false for any other id.
func VaultKMSVersion(keyID string) (int, bool) {
	env, err := ParseVaultKMS([]byte(keyID + ":AA=="))
	if err != nil || VaultKMSKeyID(env.Version) != keyID {
		return 0, false
	}
	return env.Version, true
}

// foreignReader is the Sealer's reader of vault-kubernetes-kms envelopes; nil: off.
type foreignReader struct {
	read func(version int) // counts a successful read (the metrics); may be nil
}

// ReadVaultKubernetesKMS turns the reader of vault-kubernetes-kms envelopes on; read, if not
// nil, is told the transit key version of each envelope read. The serving stack calls it before
// serving, when the backend is a ForeignReader that reads them.
func (s *Sealer) ReadVaultKubernetesKMS(read func(version int)) {
	s.foreign = &foreignReader{read: read}
}

// decryptForeign opens a vault-kubernetes-kms envelope: the backend decrypts it with its own
// transit key at the version of its prefix, and only a DEK seed's size is an answer.
func (s *Sealer) decryptForeign(ctx context.Context, ciphertext []byte) ([]byte, string, error) {
	env, err := ParseVaultKMS(ciphertext)
	if err != nil {
		return nil, "", err
	}
	keyID := VaultKMSKeyID(env.Version)
	if s.foreign == nil {
		return nil, keyID, Public(fmt.Errorf("%w: a vault-kubernetes-kms envelope (transit key version %d): this plugin reads them only with the vault backend and --vault-read-vault-kubernetes-kms (docs/migration.md)",
			ErrFormatOff, env.Version))
	}
	plain, err := s.kek.Unwrap(ctx, keyID, env.Ciphertext)
	if err != nil {
		return nil, keyID, fmt.Errorf("vault-kubernetes-kms envelope: decrypting with transit key version %d: %w", env.Version, err)
	}
	if len(plain) != SeedSize {
		clear(plain)
		return nil, keyID, Public(fmt.Errorf("%w: vault-kubernetes-kms envelope: transit key version %d decrypted %d bytes, not a %d-byte DEK seed: not an envelope the apiserver stored",
			ErrTampered, env.Version, len(plain), SeedSize))
	}
	if s.foreign.read != nil {
		s.foreign.read(env.Version)
	}
	return plain, keyID, nil
}

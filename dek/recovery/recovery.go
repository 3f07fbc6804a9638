// Package recovery is the offline recovery key (docs/disaster-recovery.md): an HPKE key pair
// (RFC 9180, Go's crypto/hpke) whose public half the plugin uses to seal each local KEK once,
// and whose private half, kept offline, opens those seals without the backend. It holds the
// key files' format, the suite and the seal itself; dek puts the seal in envelopes (format v3).
package recovery

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// The suite: a KEM, with the KDF and AEAD fixed, so that a KEM id names the whole suite.
// AES-256-GCM matches the envelope's own cipher; HKDF-SHA256 is what both KEMs use inside.
const (
	KEMX25519 uint16 = 0x0020 // DHKEM(X25519, HKDF-SHA256): the default
	KEMP256   uint16 = 0x0010 // DHKEM(P-256, HKDF-SHA256): for FIPS-minded operators
)

// SealedSize is a sealed 32-byte local KEK: the key and AES-256-GCM's tag.
const SealedSize = 32 + 16

// IDSize is a recovery key id's size in envelopes.
const IDSize = 8

// MaxEncSize bounds an encapsulated key: P-256's uncompressed point is 65 bytes.
const MaxEncSize = 65

// PEM block types of the two key files.
const (
	publicType  = "KMS-PLUGIN RECOVERY PUBLIC KEY"
	privateType = "KMS-PLUGIN RECOVERY PRIVATE KEY" // privatefile.HoldsPrivateKey recognises it
)

// info labels every seal: a seal made for another purpose or format cannot pass for ours.
const infoLabel = "kms-plugin recovery seal of a local KEK, envelope format "

// ID names a recovery key in envelopes: the first 8 bytes of SHA-256 over the suite and the
// public key's bytes.
type ID [IDSize]byte

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// KEMName is the suite of a KEM id, as the key files and scan print it.
func KEMName(kem uint16) string {
	switch kem {
	case KEMX25519:
		return "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"
	case KEMP256:
		return "DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"
	}
	return fmt.Sprintf("unknown KEM 0x%04x", kem)
}

// kemOf returns the KEM of id, or an error for one we do not use.
func kemOf(id uint16) (hpke.KEM, error) {
	switch id {
	case KEMX25519:
		return hpke.DHKEM(ecdh.X25519()), nil
	case KEMP256:
		return hpke.DHKEM(ecdh.P256()), nil
	}
	return nil, fmt.Errorf("recovery key suite: unknown KEM 0x%04x (want 0x0020 X25519 or 0x0010 P-256)", id)
}

// KEMByName parses --kem: x25519 or p256.
func KEMByName(name string) (uint16, error) {
	switch strings.ToLower(name) {
	case "x25519":
		return KEMX25519, nil
	case "p256", "p-256":
		return KEMP256, nil
	}
	return 0, fmt.Errorf("--kem %q: want x25519 or p256", name)
}

func idOf(kem uint16, pub []byte) ID {
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint16(nil, kem))
	h.Write(pub)
	var id ID
	copy(id[:], h.Sum(nil))
	return id
}

// PublicKey is a recovery public key: what serve's --recovery-public-key holds.
type PublicKey struct {
	kem uint16
	pk  hpke.PublicKey
	id  ID
}

func (k *PublicKey) ID() ID      { return k.id }
func (k *PublicKey) KEM() uint16 { return k.kem }

// PrivateKey is a recovery private key. crypto/hpke's key object cannot be zeroed: drop every
// reference to it (docs/security.md).
type PrivateKey struct {
	kem uint16
	sk  hpke.PrivateKey
	id  ID
}

func (k *PrivateKey) ID() ID      { return k.id }
func (k *PrivateKey) KEM() uint16 { return k.kem }

// Public returns the private key's public half.
func (k *PrivateKey) Public() *PublicKey {
	return &PublicKey{kem: k.kem, pk: k.sk.PublicKey(), id: k.id}
}

// Generate makes a new key pair of the KEM's suite.
func Generate(kem uint16) (*PrivateKey, error) {
	k, err := kemOf(kem)
	if err != nil {
		return nil, err
	}
	sk, err := k.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("generating a recovery key: %w", err)
	}
	return &PrivateKey{kem: kem, sk: sk, id: idOf(kem, sk.PublicKey().Bytes())}, nil
}

// The key files are PEM blocks whose bytes are the KEM id (2 bytes, big endian) and the key as
// RFC 9180 serialises it; the headers repeat the suite and the key id for people, and a
// Key-Id header that disagrees with the key is refused (an edited or mixed-up file).

// MarshalPublic encodes the public key file.
func (k *PublicKey) MarshalPublic() []byte {
	return encode(publicType, k.kem, k.pk.Bytes(), k.id)
}

// MarshalPrivate encodes the private key file. The caller clears the result once written.
func (k *PrivateKey) MarshalPrivate() ([]byte, error) {
	raw, err := k.sk.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding the recovery private key: %w", err)
	}
	defer clear(raw)
	return encode(privateType, k.kem, raw, k.id), nil
}

func encode(typ string, kem uint16, key []byte, id ID) []byte {
	body := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(key)), kem)
	body = append(body, key...)
	defer clear(body)
	return pem.EncodeToMemory(&pem.Block{Type: typ, Headers: map[string]string{
		"Suite":  KEMName(kem),
		"Key-Id": id.String(),
	}, Bytes: body})
}

// ParsePublic reads a public key file.
func ParsePublic(text []byte) (*PublicKey, error) {
	kem, key, id, err := decode(text, publicType)
	if err != nil {
		return nil, err
	}
	k, _ := kemOf(kem)
	pk, err := k.NewPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("recovery public key: %w", err)
	}
	return &PublicKey{kem: kem, pk: pk, id: id}, nil
}

// ParsePrivate reads a private key file. It clears the decoded key bytes; the caller clears
// text.
func ParsePrivate(text []byte) (*PrivateKey, error) {
	kem, key, _, err := decode(text, privateType)
	defer clear(key)
	if err != nil {
		return nil, err
	}
	k, _ := kemOf(kem)
	sk, err := k.NewPrivateKey(key[2:])
	if err != nil {
		return nil, errors.New("recovery private key: not a valid key of its suite")
	}
	id := idOf(kem, sk.PublicKey().Bytes())
	if err := checkHeaderID(text, id); err != nil {
		return nil, err
	}
	return &PrivateKey{kem: kem, sk: sk, id: id}, nil
}

// decode finds the one block of typ in text. For a public key, key is the key's bytes; for
// a private one the whole body (the caller clears it), of which key[2:] is the key.
func decode(text []byte, typ string) (kem uint16, key []byte, id ID, err error) {
	block, rest := pem.Decode(text)
	if block == nil {
		return 0, nil, id, fmt.Errorf("recovery key file: no PEM block (want %q)", typ)
	}
	if block.Type != typ {
		clear(block.Bytes)
		if block.Type == privateType {
			return 0, nil, id, errors.New("this is the recovery PRIVATE key, where the public key belongs: keep the private key off the nodes")
		}
		return 0, nil, id, fmt.Errorf("recovery key file: a %q block, want %q", block.Type, typ)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		clear(block.Bytes)
		return 0, nil, id, errors.New("recovery key file: text after the key block")
	}
	if len(block.Bytes) < 3 {
		clear(block.Bytes)
		return 0, nil, id, errors.New("recovery key file: key too short")
	}
	kem = binary.BigEndian.Uint16(block.Bytes)
	if _, err := kemOf(kem); err != nil {
		clear(block.Bytes)
		return 0, nil, id, err
	}
	if typ == privateType {
		return kem, block.Bytes, id, nil
	}
	key = block.Bytes[2:]
	id = idOf(kem, key)
	if h, ok := block.Headers["Key-Id"]; ok && h != id.String() {
		return 0, nil, id, fmt.Errorf("recovery key file: Key-Id %s does not match the key (%s): an edited or mixed-up file", h, id)
	}
	return kem, key, id, nil
}

func checkHeaderID(text []byte, id ID) error {
	block, _ := pem.Decode(text)
	if block == nil {
		return nil
	}
	defer clear(block.Bytes)
	if h, ok := block.Headers["Key-Id"]; ok && h != id.String() {
		return fmt.Errorf("recovery key file: Key-Id %s does not match the key (%s): an edited or mixed-up file", h, id)
	}
	return nil
}

func info(format byte) []byte { return append([]byte(infoLabel), format) }

// Seal seals a local KEK to the public key for envelope format `format`; aad binds it to what
// the envelope carries beside it (the key id and the backend-wrapped local KEK), so that a
// seal cannot be moved to another local KEK. It returns the encapsulated key and the sealed KEK.
func Seal(k *PublicKey, format byte, aad, localKEK []byte) (enc, sealed []byte, err error) {
	enc, s, err := hpke.NewSender(k.pk, hpke.HKDFSHA256(), hpke.AES256GCM(), info(format))
	if err != nil {
		return nil, nil, fmt.Errorf("recovery seal: %w", err)
	}
	sealed, err = s.Seal(aad, localKEK)
	if err != nil {
		return nil, nil, fmt.Errorf("recovery seal: %w", err)
	}
	return enc, sealed, nil
}

// ErrOpen is a seal that does not open with the private key: changed bytes, or a seal of
// another local KEK or envelope.
var ErrOpen = errors.New("the recovery seal does not open")

// Open opens a seal that Seal made, returning the local KEK.
func Open(k *PrivateKey, format byte, aad, enc, sealed []byte) ([]byte, error) {
	r, err := hpke.NewRecipient(enc, k.sk, hpke.HKDFSHA256(), hpke.AES256GCM(), info(format))
	if err != nil {
		return nil, ErrOpen // a malformed encapsulated key
	}
	key, err := r.Open(aad, sealed)
	if err != nil {
		return nil, ErrOpen
	}
	return key, nil
}

package scan

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// Storage classes: how a value sits in etcd.
const (
	Plaintext    = "plaintext" // no k8s:enc: prefix: identity, or written before encryption
	AESCBC       = "aescbc"
	AESGCM       = "aesgcm"
	Secretbox    = "secretbox"
	KMSv1        = "kms-v1"
	KMSv2        = "kms-v2"
	Unrecognized = "unrecognized" // k8s:enc: prefix that no known provider writes, or a broken kms v2 value
)

// Storage is how one value is stored. Provider is the KMS provider's name (kms classes only);
// Key is the local provider's key name, or the KMS v2 key id the value was written under.
type Storage struct {
	Class    string `json:"class"`
	Provider string `json:"provider,omitempty"`
	Key      string `json:"key,omitempty"`
}

func (s Storage) String() string {
	out := s.Class
	if s.Provider != "" {
		out += " provider=" + s.Provider
	}
	if s.Key != "" {
		out += " key=" + s.Key
	}
	return out
}

const encPrefix = "k8s:enc:"

// Classify reads a value's storage from its prefix, and for KMS v2 the key id inside its
// EncryptedObject. names holds the local key names and KMS provider names of the
// EncryptionConfiguration, if one is known: they are matched first, so a name that contains
// ':' is still read whole. Classify never decrypts anything.
func Classify(value []byte, names []string) Storage {
	if !bytes.HasPrefix(value, []byte(encPrefix)) {
		return Storage{Class: Plaintext}
	}
	rest := value[len(encPrefix):]
	for _, p := range []struct{ prefix, class string }{
		{"aescbc:v1:", AESCBC}, {"aesgcm:v1:", AESGCM}, {"secretbox:v1:", Secretbox},
		{"kms:v1:", KMSv1}, {"kms:v2:", KMSv2},
	} {
		if !bytes.HasPrefix(rest, []byte(p.prefix)) {
			continue
		}
		name, body, ok := splitName(rest[len(p.prefix):], names)
		if !ok {
			return Storage{Class: Unrecognized}
		}
		switch p.class {
		case KMSv1:
			return Storage{Class: KMSv1, Provider: name}
		case KMSv2:
			keyID, err := EncryptedObjectKeyID(body)
			if err != nil {
				return Storage{Class: Unrecognized, Provider: name}
			}
			return Storage{Class: KMSv2, Provider: name, Key: keyID}
		}
		return Storage{Class: p.class, Key: name}
	}
	return Storage{Class: Unrecognized}
}

// splitName cuts "<name>:<body>", preferring a known name.
func splitName(b []byte, names []string) (name string, body []byte, ok bool) {
	best := ""
	for _, n := range names {
		if len(n) > len(best) && bytes.HasPrefix(b, []byte(n+":")) {
			best = n
		}
	}
	if best != "" {
		return best, b[len(best)+1:], true
	}
	i := bytes.IndexByte(b, ':')
	if i <= 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// maxKeyIDSize is the apiserver's own limit on a KMS v2 key id.
const maxKeyIDSize = 1024

// EncryptedObjectKeyID returns field 2 (keyID) of a KMS v2 EncryptedObject protobuf
// (k8s.io/apiserver pkg/storage/value/encrypt/envelope/kmsv2/v2), checking that the whole
// message is well-formed protobuf.
func EncryptedObjectKeyID(b []byte) (string, error) {
	var keyID string
	var found bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", fmt.Errorf("EncryptedObject: bad tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if num == 2 {
			if typ != protowire.BytesType {
				return "", errors.New("EncryptedObject: keyID is not a string")
			}
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", fmt.Errorf("EncryptedObject: bad keyID: %w", protowire.ParseError(n))
			}
			keyID, found = string(v), true
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", fmt.Errorf("EncryptedObject: bad field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	switch {
	case !found || keyID == "":
		return "", errors.New("EncryptedObject: no keyID")
	case len(keyID) > maxKeyIDSize || !utf8.ValidString(keyID) || strings.ContainsAny(keyID, "\x00\n"):
		return "", errors.New("EncryptedObject: keyID is not a valid key id")
	}
	return keyID, nil
}

package providers

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// The kms v2 EncryptedObject protobuf (k8s.io/apiserver
// pkg/storage/value/encrypt/envelope/kmsv2/v2/api.proto), read and written field by field so
// that the plugin needs no generated code from the apiserver.
const (
	fieldEncryptedData       = 1 // bytes
	fieldKeyID               = 2 // string
	fieldEncryptedDEKSource  = 3 // bytes: what the plugin's Encrypt returned
	fieldAnnotations         = 4 // map<string, bytes>
	fieldEncryptedDEKSrcType = 5 // enum EncryptedDEKSourceType
)

// DEK source types of an EncryptedObject.
const (
	// DEKSourceAESGCMKey (1.27-1.28): the plugin's plaintext is the AES-256-GCM key itself.
	DEKSourceAESGCMKey int32 = 0
	// DEKSourceHKDFSeed: the plugin's plaintext is a 32-byte seed; each value's key is
	// HKDF-Expand(SHA-256, seed, info) with a random 32-byte info stored in the value.
	DEKSourceHKDFSeed int32 = 1
)

// Limits the apiserver enforces on every EncryptedObject (kmsv2.ValidateEncryptedObject).
const (
	maxKeyIDSize              = 1024
	maxEncryptedDEKSourceSize = 1024
	maxAnnotationsSize        = 32 * 1024
)

// EncryptedObject is what a kms v2 value holds after its prefix.
type EncryptedObject struct {
	EncryptedData      []byte
	KeyID              string
	EncryptedDEKSource []byte
	Annotations        map[string][]byte
	DEKSourceType      int32
}

// ParseEncryptedObject decodes and validates an EncryptedObject as the apiserver does
// (proto.Unmarshal, then ValidateEncryptedObject): unknown fields and fields of an unexpected
// wire type are skipped, the last occurrence of a field wins, strings must be UTF-8.
func ParseEncryptedObject(b []byte) (*EncryptedObject, error) {
	o := &EncryptedObject{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protoErr(n)
		}
		b = b[n:]
		switch {
		case num == fieldEncryptedData && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protoErr(n)
			}
			o.EncryptedData, b = v, b[n:]
		case num == fieldKeyID && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protoErr(n)
			}
			if !utf8.Valid(v) {
				return nil, fmt.Errorf("%w: kms v2 key id is not UTF-8", ErrMalformed)
			}
			o.KeyID, b = string(v), b[n:]
		case num == fieldEncryptedDEKSource && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protoErr(n)
			}
			o.EncryptedDEKSource, b = v, b[n:]
		case num == fieldAnnotations && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protoErr(n)
			}
			k, val, err := parseMapEntry(v)
			if err != nil {
				return nil, err
			}
			if o.Annotations == nil {
				o.Annotations = map[string][]byte{}
			}
			o.Annotations[k], b = val, b[n:]
		case num == fieldEncryptedDEKSrcType && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return nil, protoErr(n)
			}
			o.DEKSourceType, b = int32(v), b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return nil, protoErr(n)
			}
			b = b[n:]
		}
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

func parseMapEntry(b []byte) (string, []byte, error) {
	var key string
	val := []byte{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", nil, protoErr(n)
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", nil, protoErr(n)
			}
			if !utf8.Valid(v) {
				return "", nil, fmt.Errorf("%w: kms v2 annotation name is not UTF-8", ErrMalformed)
			}
			key, b = string(v), b[n:]
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", nil, protoErr(n)
			}
			val, b = v, b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return "", nil, protoErr(n)
			}
			b = b[n:]
		}
	}
	return key, val, nil
}

func protoErr(n int) error {
	return fmt.Errorf("%w: kms v2 EncryptedObject: %v", ErrMalformed, protowire.ParseError(n))
}

// Validate applies the apiserver's checks (kmsv2.ValidateEncryptedObject).
func (o *EncryptedObject) Validate() error {
	switch o.DEKSourceType {
	case DEKSourceAESGCMKey, DEKSourceHKDFSeed:
	default:
		return fmt.Errorf("%w: kms v2 DEK source type %d is unknown", ErrMalformed, o.DEKSourceType)
	}
	if len(o.EncryptedData) == 0 {
		return fmt.Errorf("%w: kms v2 encrypted data is empty", ErrMalformed)
	}
	if len(o.EncryptedDEKSource) == 0 || len(o.EncryptedDEKSource) > maxEncryptedDEKSourceSize {
		return fmt.Errorf("%w: kms v2 encrypted DEK source of %d bytes: want 1 to %d", ErrMalformed, len(o.EncryptedDEKSource), maxEncryptedDEKSourceSize)
	}
	if len(o.KeyID) == 0 || len(o.KeyID) > maxKeyIDSize {
		return fmt.Errorf("%w: kms v2 key id of %d bytes: want 1 to %d", ErrMalformed, len(o.KeyID), maxKeyIDSize)
	}
	total := 0
	for k, v := range o.Annotations {
		if !isFQDN(k) {
			return fmt.Errorf("%w: kms v2 annotation name %q is not a fully qualified domain name", ErrMalformed, k)
		}
		total += len(k) + len(v)
	}
	if total > maxAnnotationsSize {
		return fmt.Errorf("%w: kms v2 annotations of %d bytes exceed %d", ErrMalformed, total, maxAnnotationsSize)
	}
	return nil
}

var dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// isFQDN is apimachinery's IsFullyQualifiedDomainName: a DNS-1123 subdomain of at least two
// labels, a trailing dot allowed.
func isFQDN(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if len(name) == 0 || len(name) > 253 {
		return false
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if len(l) > 63 || !dns1123Label.MatchString(l) {
			return false
		}
	}
	return true
}

// Marshal encodes o as proto.Marshal does, with fields in number order, zero values left out
// and annotations sorted by name.
func (o *EncryptedObject) Marshal() []byte {
	var b []byte
	if len(o.EncryptedData) > 0 {
		b = protowire.AppendTag(b, fieldEncryptedData, protowire.BytesType)
		b = protowire.AppendBytes(b, o.EncryptedData)
	}
	if o.KeyID != "" {
		b = protowire.AppendTag(b, fieldKeyID, protowire.BytesType)
		b = protowire.AppendString(b, o.KeyID)
	}
	if len(o.EncryptedDEKSource) > 0 {
		b = protowire.AppendTag(b, fieldEncryptedDEKSource, protowire.BytesType)
		b = protowire.AppendBytes(b, o.EncryptedDEKSource)
	}
	names := make([]string, 0, len(o.Annotations))
	for k := range o.Annotations {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, k)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendBytes(entry, o.Annotations[k])
		b = protowire.AppendTag(b, fieldAnnotations, protowire.BytesType)
		b = protowire.AppendBytes(b, entry)
	}
	if o.DEKSourceType != 0 {
		b = protowire.AppendTag(b, fieldEncryptedDEKSrcType, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(o.DEKSourceType)))
	}
	return b
}

package providers

import (
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
)

// A kms v2 value holds, after its prefix, the apiserver's EncryptedObject protobuf. We decode
// and encode it with the apiserver's generated type (which needs only google.golang.org/protobuf),
// so that what proto.Unmarshal refuses we refuse too.

// Limits the apiserver enforces on every EncryptedObject (kmsv2.ValidateEncryptedObject); the
// key id's is kmsclient.MaxKeyIDSize.
const (
	maxEncryptedDEKSourceSize = 1024
	maxAnnotationsSize        = 32 * 1024
)

// ParseEncryptedObject decodes and validates an EncryptedObject as the apiserver does
// (proto.Unmarshal, then ValidateEncryptedObject).
func ParseEncryptedObject(b []byte) (*kmstypes.EncryptedObject, error) {
	o, err := unmarshalEncryptedObject(b)
	if err != nil {
		return nil, err
	}
	if err := validateEncryptedObject(o); err != nil {
		return nil, err
	}
	return o, nil
}

// EncryptedObjectKeyID returns the key id of an EncryptedObject, checking that the message is
// well-formed and its key id valid, but not the other fields: for tools that report which key
// a value is on and decrypt nothing.
func EncryptedObjectKeyID(b []byte) (string, error) {
	keyID, _, err := EncryptedObjectSource(b)
	return keyID, err
}

// EncryptedObjectSource is EncryptedObjectKeyID that also returns the encrypted DEK source:
// the plugin's ciphertext, whose format (ours or vault-kubernetes-kms's) and recovery seal scan reports.
func EncryptedObjectSource(b []byte) (keyID string, source []byte, err error) {
	o, err := unmarshalEncryptedObject(b)
	if err != nil {
		return "", nil, err
	}
	if err := kmsclient.ValidateKeyID(o.KeyID); err != nil {
		return "", nil, fmt.Errorf("%w: kms v2 %v", ErrMalformed, err)
	}
	return o.KeyID, o.EncryptedDEKSource, nil
}

func unmarshalEncryptedObject(b []byte) (*kmstypes.EncryptedObject, error) {
	o := &kmstypes.EncryptedObject{}
	if err := proto.Unmarshal(b, o); err != nil {
		return nil, fmt.Errorf("%w: kms v2 EncryptedObject: %v", ErrMalformed, err)
	}
	return o, nil
}

// validateEncryptedObject applies the apiserver's checks (kmsv2.ValidateEncryptedObject).
func validateEncryptedObject(o *kmstypes.EncryptedObject) error {
	switch o.EncryptedDEKSourceType {
	case kmstypes.EncryptedDEKSourceType_AES_GCM_KEY, kmstypes.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED:
	default:
		return fmt.Errorf("%w: kms v2 DEK source type %d is unknown", ErrMalformed, o.EncryptedDEKSourceType)
	}
	if len(o.EncryptedData) == 0 {
		return fmt.Errorf("%w: kms v2 encrypted data is empty", ErrMalformed)
	}
	if len(o.EncryptedDEKSource) == 0 || len(o.EncryptedDEKSource) > maxEncryptedDEKSourceSize {
		return fmt.Errorf("%w: kms v2 encrypted DEK source of %d bytes: want 1 to %d", ErrMalformed, len(o.EncryptedDEKSource), maxEncryptedDEKSourceSize)
	}
	if err := kmsclient.ValidateKeyID(o.KeyID); err != nil {
		return fmt.Errorf("%w: kms v2 %v", ErrMalformed, err)
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

// Package providers reads and writes values the way kube-apiserver's encryption providers store
// them in etcd (k8s.io/apiserver pkg/storage/value/encrypt), byte for byte: identity, aescbc,
// aesgcm, secretbox, and the kms v2 (and v1, read-only) envelopes. Of k8s.io/apiserver it uses
// only the generated EncryptedObject type, which needs nothing but google.golang.org/protobuf;
// the tests use the apiserver's own transformers as the reference.
package providers

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Transformer turns plaintext into one provider's stored form and back. etcdKey is the
// object's etcd key ("/registry/secrets/ns/name"), which aesgcm and kms authenticate.
type Transformer interface {
	// Encrypt appends the stored form of plaintext to dst, as cipher.AEAD.Seal does, so that
	// a chain of prefixes costs no extra copies. plaintext must not overlap dst.
	Encrypt(ctx context.Context, dst, plaintext, etcdKey []byte) ([]byte, error)
	// Decrypt returns the plaintext of data, the stored value with this transformer's prefix
	// already removed. It never modifies data.
	Decrypt(ctx context.Context, data, etcdKey []byte) ([]byte, error)
}

// Error kinds; errors wrap one of them, so callers can tell them apart with errors.Is.
var (
	// ErrNoMatch: the value names a provider or key that the configuration does not have.
	ErrNoMatch = errors.New("no configured provider or key matches the value")
	// ErrMalformed: the value is truncated or not in the provider's format.
	ErrMalformed = errors.New("malformed value")
	// ErrAuthentication: the value failed authentication: wrong key, changed bytes, or (aesgcm,
	// kms) a value copied from another etcd key.
	ErrAuthentication = errors.New("value failed authentication (wrong key, changed bytes, or moved from another etcd key)")
	// ErrEncrypted: identity met a value that starts with "k8s:enc:", which it never reads.
	ErrEncrypted = errors.New("identity refuses a value that starts with k8s:enc: (encrypted by a provider the configuration lacks?)")
	// ErrKMS: the KMS plugin failed to encrypt or decrypt the data key.
	ErrKMS = errors.New("kms plugin call failed")
)

// EncryptedPrefix starts every value that a provider other than identity wrote.
const EncryptedPrefix = "k8s:enc:"

// Prefix strings of the providers, followed in stored values by "<key or provider name>:".
const (
	AESCBCPrefix    = "k8s:enc:aescbc:v1:"
	AESGCMPrefix    = "k8s:enc:aesgcm:v1:"
	SecretboxPrefix = "k8s:enc:secretbox:v1:"
	KMSv1Prefix     = "k8s:enc:kms:v1:"
	KMSv2Prefix     = "k8s:enc:kms:v2:"
)

// Link is one transformer of a Chain and the prefix its values carry.
type Link struct {
	Prefix      string
	Transformer Transformer
}

// Chain is kube-apiserver's prefix transformer (value.NewPrefixTransformers): the first link
// writes; on read every link whose prefix matches is tried in order, and the first success
// wins. A link with an empty prefix (identity) that fails is skipped silently, as the
// apiserver does. Chains nest: a provider's link holds a chain of its keys.
type Chain struct {
	what  string // "provider" or "aesgcm key", for errors
	links []Link
}

// NewChain returns a chain of links; what names its members in errors.
func NewChain(what string, links ...Link) *Chain {
	return &Chain{what: what, links: links}
}

// Links returns the chain's links in order.
func (c *Chain) Links() []Link { return c.links }

// Encrypt writes with the first link.
func (c *Chain) Encrypt(ctx context.Context, dst, plaintext, etcdKey []byte) ([]byte, error) {
	if len(c.links) == 0 {
		return nil, fmt.Errorf("%w: the chain has no %s", ErrNoMatch, c.what)
	}
	l := c.links[0]
	return l.Transformer.Encrypt(ctx, append(dst, l.Prefix...), plaintext, etcdKey)
}

// Decrypt tries every link whose prefix matches.
func (c *Chain) Decrypt(ctx context.Context, data, etcdKey []byte) ([]byte, error) {
	var errs []error
	for _, l := range c.links {
		if !hasPrefix(data, l.Prefix) {
			continue
		}
		out, err := l.Transformer.Decrypt(ctx, data[len(l.Prefix):], etcdKey)
		if err == nil {
			return out, nil
		}
		if l.Prefix == "" {
			continue
		}
		errs = append(errs, fmt.Errorf("%s %q: %w", c.what, strings.TrimSuffix(l.Prefix, ":"), err))
	}
	switch len(errs) {
	case 0:
		if c.what != "provider" {
			// A provider's chain of keys sees the value after the provider's prefix: name
			// the key it asks for.
			return nil, fmt.Errorf("%w: the value names %s %q; configured %ss: %s", ErrNoMatch, c.what, keyName(data), c.what, c.names())
		}
		return nil, fmt.Errorf("%w: the value starts %q; configured %ss: %s", ErrNoMatch, describePrefix(data), c.what, c.names())
	case 1:
		return nil, errs[0]
	}
	return nil, errors.Join(errs...)
}

func (c *Chain) names() string {
	var names []string
	for _, l := range c.links {
		if l.Prefix == "" {
			names = append(names, "identity")
			continue
		}
		names = append(names, strings.TrimSuffix(l.Prefix, ":"))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// describePrefix shows the start of a value that no link matched, up to its provider's key
// name, without printing ciphertext or plaintext.
func describePrefix(data []byte) string {
	if !hasPrefix(data, EncryptedPrefix) {
		if len(data) == 0 {
			return ""
		}
		return "(no k8s:enc: prefix)"
	}
	// k8s:enc:<provider>:v<n>:<name>: is five colons.
	colons := 0
	for i, b := range data {
		if i >= 300 || b < 0x20 || b > 0x7e {
			break
		}
		if b == ':' {
			colons++
			if colons == 5 {
				return string(data[:i+1])
			}
		}
	}
	return EncryptedPrefix + "..."
}

// keyName is the key name at the start of a value after its provider's prefix ("<name>:").
func keyName(data []byte) string {
	for i, b := range data {
		if i >= 256 || b < 0x20 || b > 0x7e {
			break
		}
		if b == ':' {
			return string(data[:i])
		}
	}
	return "(unreadable)"
}

func hasPrefix(data []byte, prefix string) bool {
	return len(data) >= len(prefix) && string(data[:len(prefix)]) == prefix
}

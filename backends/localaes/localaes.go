// Package localaes is the KEK backend whose keys are AES-256 keys in a local YAML file.
package localaes

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"sync/atomic"

	"github.com/kmsplugin/kms-plugin/dek"
)

const (
	nonceSize = 12
	tagSize   = 16
)

// KEK is the localaes dek.KEK: the keys of one key file. Reload swaps them atomically: a request in flight
// finishes with the keys it started with.
type KEK struct {
	path string
	keys atomic.Pointer[keySet]
}

var _ dek.KEK = (*KEK)(nil)

// Open loads the key file at path.
func Open(path string) (*KEK, error) {
	set, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	b := &KEK{path: path}
	b.keys.Store(set)
	return b, nil
}

// Reload re-reads the key file. On error the keys in use stay as they were.
func (b *KEK) Reload() error {
	set, err := readKeyFile(b.path)
	if err != nil {
		return err
	}
	b.keys.Store(set)
	return nil
}

// KeyIDs lists the ids of the loaded keys, the write key first.
func (b *KEK) KeyIDs() []string {
	set := b.keys.Load()
	ids := make([]string, len(set.keys))
	for i, k := range set.keys {
		ids[i] = k.id
	}
	return ids
}

// CurrentID is the id of the write key, the first in the file.
func (b *KEK) CurrentID() string { return b.keys.Load().keys[0].id }

// Check has nothing remote to refresh: loaded keys are always usable.
func (b *KEK) Check(context.Context) error { return nil }

// Wrap seals dek with AES-256-GCM under the key named keyID: nonce || ciphertext || tag, with
// the key id as additional data.
func (b *KEK) Wrap(_ context.Context, keyID string, plain []byte) ([]byte, error) {
	aead, err := b.aead(keyID)
	if err != nil {
		return nil, err
	}
	out := make([]byte, nonceSize, nonceSize+len(plain)+tagSize)
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	return aead.Seal(out, out, plain, []byte(keyID)), nil
}

// Unwrap opens what Wrap sealed under keyID.
func (b *KEK) Unwrap(_ context.Context, keyID string, wrapped []byte) ([]byte, error) {
	aead, err := b.aead(keyID)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < nonceSize+tagSize {
		return nil, dek.Public(fmt.Errorf("%w: wrapped DEK of %d bytes", dek.ErrMalformed, len(wrapped)))
	}
	plain, err := aead.Open(nil, wrapped[:nonceSize], wrapped[nonceSize:], []byte(keyID))
	if err != nil {
		return nil, dek.Public(fmt.Errorf("%w: wrapped DEK", dek.ErrTampered))
	}
	return plain, nil
}

func (b *KEK) aead(keyID string) (cipher.AEAD, error) {
	k, ok := b.keys.Load().byID[keyID]
	if !ok {
		// The client learns the key id it sent; the key file's path is for the log only.
		return nil, fmt.Errorf("%w (key file %s)", dek.Public(fmt.Errorf("%w: %s is not held by this plugin", dek.ErrUnknownKey, keyID)), b.path)
	}
	return k.aead, nil
}

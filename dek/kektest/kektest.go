// Package kektest is the contract every dek.KEK backend must meet. Each backend's tests run
// it against a real instance of the backend.
package kektest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
)

// Backend is a backend under test. Rotate makes a new key current, keeping the old one able
// to unwrap; the contract calls Check afterwards until CurrentID changes (backends may need
// more than one check to adopt a new key).
type Backend struct {
	KEK    dek.KEK
	Rotate func(t *testing.T)
}

// Run checks the contract: wrap/unwrap round trips, ids, tamper detection, unknown keys and
// rotation that keeps old data readable.
func Run(t *testing.T, b Backend) {
	ctx := context.Background()
	kek := b.KEK
	if err := kek.Check(ctx); err != nil {
		t.Fatalf("Check on a healthy backend: %v", err)
	}
	id := kek.CurrentID()
	if id == "" || len(id) > dek.MaxKeyIDSize {
		t.Fatalf("CurrentID = %q: want 1 to %d bytes", id, dek.MaxKeyIDSize)
	}

	key := randomDEK(t)
	wrapped, err := kek.Wrap(ctx, id, key)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	if len(wrapped) == 0 || len(wrapped) > dek.MaxWrappedDEKSize {
		t.Fatalf("wrapped DEK of %d bytes: want 1 to %d", len(wrapped), dek.MaxWrappedDEKSize)
	}
	if bytes.Contains(wrapped, key) {
		t.Fatal("wrapped DEK contains the DEK in the clear")
	}
	again, err := kek.Wrap(ctx, id, key)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(again, wrapped) {
		t.Fatal("two wraps of one DEK are identical: wrapping must be randomised")
	}
	got, err := kek.Unwrap(ctx, id, wrapped)
	if err != nil {
		t.Fatalf("Unwrap: %v", err)
	}
	if !bytes.Equal(got, key) {
		t.Fatal("Unwrap returned a different DEK")
	}

	t.Run("tampered", func(t *testing.T) {
		for _, i := range []int{0, len(wrapped) / 2, len(wrapped) - 1} {
			bad := bytes.Clone(wrapped)
			bad[i] ^= 0x01
			if got, err := kek.Unwrap(ctx, id, bad); err == nil && bytes.Equal(got, key) {
				t.Errorf("byte %d flipped: Unwrap still returned the DEK", i)
			} else if err == nil {
				t.Errorf("byte %d flipped: Unwrap returned a wrong DEK without error", i)
			}
		}
		if _, err := kek.Unwrap(ctx, id, wrapped[:len(wrapped)/2]); err == nil {
			t.Error("truncated wrapped DEK: Unwrap succeeded")
		}
		if _, err := kek.Unwrap(ctx, id, nil); err == nil {
			t.Error("empty wrapped DEK: Unwrap succeeded")
		}
	})

	t.Run("unknown key", func(t *testing.T) {
		for _, other := range []string{id + "x", "localaes:nope:0000000000000000", "vault:0000000000000000:v1"} {
			if other == id {
				continue
			}
			if _, err := kek.Unwrap(ctx, other, wrapped); !errors.Is(err, dek.ErrUnknownKey) {
				t.Errorf("Unwrap with key id %q: err = %v, want dek.ErrUnknownKey", other, err)
			}
			if _, err := kek.Wrap(ctx, other, key); !errors.Is(err, dek.ErrUnknownKey) {
				t.Errorf("Wrap with key id %q: err = %v, want dek.ErrUnknownKey", other, err)
			}
		}
	})

	if b.Rotate == nil {
		return
	}
	t.Run("rotation keeps old keys", func(t *testing.T) {
		b.Rotate(t)
		var newID string
		for i := 0; i < 5 && newID == ""; i++ {
			if err := kek.Check(ctx); err != nil {
				t.Fatalf("Check after rotation: %v", err)
			}
			if cur := kek.CurrentID(); cur != id {
				newID = cur
			}
		}
		if newID == "" {
			t.Fatalf("CurrentID still %q after rotation and 5 checks", id)
		}
		got, err := kek.Unwrap(ctx, id, wrapped)
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("old key no longer unwraps after rotation: %v", err)
		}
		w2, err := kek.Wrap(ctx, newID, key)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := kek.Unwrap(ctx, newID, w2); err != nil || !bytes.Equal(got, key) {
			t.Fatalf("new key round trip: %v", err)
		}
		// A DEK wrapped by one key must not unwrap as if wrapped by the other.
		if got, err := kek.Unwrap(ctx, id, w2); err == nil && bytes.Equal(got, key) {
			t.Fatal("a DEK wrapped by the new key unwrapped under the old key id")
		}
	})
}

func randomDEK(t *testing.T) []byte {
	b := make([]byte, dek.DEKSize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

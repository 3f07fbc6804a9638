package dek

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// clearKEK "wraps" by copying, so a test can relabel an envelope's key id and still unwrap:
// only the envelope's own additional data can then catch the change.
type clearKEK struct{}

func (clearKEK) CurrentID() string           { return "k1" }
func (clearKEK) Check(context.Context) error { return nil }
func (clearKEK) Wrap(_ context.Context, _ string, d []byte) ([]byte, error) {
	return bytes.Clone(d), nil
}
func (clearKEK) Unwrap(_ context.Context, _ string, w []byte) ([]byte, error) {
	return bytes.Clone(w), nil
}

func TestKeyIDIsAuthenticated(t *testing.T) {
	s := NewSealer(clearKEK{})
	ct, err := s.Encrypt(context.Background(), "k1", []byte("value"))
	if err != nil {
		t.Fatal(err)
	}
	env, err := parseEnvelope(ct)
	if err != nil {
		t.Fatal(err)
	}
	relabelled, _ := appendHeader(nil, formatV1, "k2", env.wrappedDEK)
	relabelled = append(append(relabelled, env.nonce...), env.sealed...)
	if _, _, err := s.Decrypt(context.Background(), relabelled); !errors.Is(err, ErrTampered) {
		t.Fatalf("envelope relabelled to another key id: err = %v, want ErrTampered", err)
	}
	if _, _, err := s.Decrypt(context.Background(), ct); err != nil {
		t.Fatalf("original: %v", err)
	}
}

func TestEnvelopeLayout(t *testing.T) {
	s := NewSealer(clearKEK{})
	ct, _ := s.Encrypt(context.Background(), "k1", []byte("value"))
	// version, id length, id, wrapped length (32), wrapped DEK, nonce, sealed value + tag
	if ct[0] != formatV1 || ct[1] != 2 || string(ct[2:4]) != "k1" || ct[4] != 0 || ct[5] != DEKSize {
		t.Fatalf("header = %x", ct[:6])
	}
	if want := 6 + DEKSize + nonceSize + len("value") + tagSize; len(ct) != want {
		t.Fatalf("len = %d, want %d", len(ct), want)
	}
}

func TestEnvelopeLayoutV2(t *testing.T) {
	s := NewLocalSealer(clearKEK{}, LocalKEKConfig{})
	ct, err := s.Encrypt(context.Background(), "k1", []byte("value"))
	if err != nil {
		t.Fatal(err)
	}
	// version, id length, id, local KEK length (32), wrapped local KEK, locally wrapped DEK,
	// nonce, sealed value + tag
	if ct[0] != formatV2 || ct[1] != 2 || string(ct[2:4]) != "k1" || ct[4] != 0 || ct[5] != DEKSize {
		t.Fatalf("header = %x", ct[:6])
	}
	if want := 6 + DEKSize + localWrappedSize + nonceSize + len("value") + tagSize; len(ct) != want {
		t.Fatalf("len = %d, want %d", len(ct), want)
	}
	env, err := parseEnvelope(ct)
	if err != nil || env.version != formatV2 || len(env.localKEK) != DEKSize || len(env.wrappedDEK) != localWrappedSize {
		t.Fatalf("parsed: %+v, %v", env, err)
	}
}

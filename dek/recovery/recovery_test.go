package recovery

import (
	"bytes"
	"testing"
)

// FuzzParseKeyFiles: whatever the bytes, the key file parsers never panic, and a key they
// accept re-encodes to a file that parses to the same key id.
func FuzzParseKeyFiles(f *testing.F) {
	for _, kem := range []uint16{KEMX25519, KEMP256} {
		k, err := Generate(kem)
		if err != nil {
			f.Fatal(err)
		}
		priv, _ := k.MarshalPrivate()
		f.Add(priv)
		f.Add(k.Public().MarshalPublic())
	}
	f.Add([]byte("-----BEGIN KMS-PLUGIN RECOVERY PUBLIC KEY-----\nAA==\n-----END KMS-PLUGIN RECOVERY PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		if pub, err := ParsePublic(bytes.Clone(text)); err == nil {
			again, err := ParsePublic(pub.MarshalPublic())
			if err != nil || again.ID() != pub.ID() {
				t.Fatalf("public key re-encoded: %v", err)
			}
		}
		if priv, err := ParsePrivate(bytes.Clone(text)); err == nil {
			b, err := priv.MarshalPrivate()
			if err != nil {
				t.Fatal(err)
			}
			again, err := ParsePrivate(b)
			if err != nil || again.ID() != priv.ID() || priv.Public().ID() != priv.ID() {
				t.Fatalf("private key re-encoded: %v", err)
			}
		}
	})
}

// A seal opens with its key, info and additional data only.
func TestSealOpen(t *testing.T) {
	k, _ := Generate(KEMX25519)
	other, _ := Generate(KEMX25519)
	enc, sealed, err := Seal(k.Public(), 3, []byte("aad"), []byte("local KEK"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Open(k, 3, []byte("aad"), enc, sealed); err != nil || string(got) != "local KEK" {
		t.Fatalf("Open: %q, %v", got, err)
	}
	for name, open := range map[string]func() ([]byte, error){
		"another key":    func() ([]byte, error) { return Open(other, 3, []byte("aad"), enc, sealed) },
		"another format": func() ([]byte, error) { return Open(k, 4, []byte("aad"), enc, sealed) },
		"another aad":    func() ([]byte, error) { return Open(k, 3, []byte("aae"), enc, sealed) },
		"short enc":      func() ([]byte, error) { return Open(k, 3, []byte("aad"), enc[:5], sealed) },
	} {
		if got, err := open(); err != ErrOpen {
			t.Errorf("%s: %q, %v; want ErrOpen", name, got, err)
		}
	}
}

package dek_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// goneKEK is a backend that lost every key: what a plugin reading with the recovery key alone
// has behind it. It counts the calls that reach it.
type goneKEK struct{ calls int }

func (*goneKEK) CurrentID() string           { return "" }
func (*goneKEK) Check(context.Context) error { return dek.ErrUnknownKey }
func (g *goneKEK) Wrap(context.Context, string, []byte) ([]byte, error) {
	g.calls++
	return nil, fmt.Errorf("%w: transit key destroyed", dek.ErrUnknownKey)
}
func (g *goneKEK) Unwrap(context.Context, string, []byte) ([]byte, error) {
	g.calls++
	return nil, fmt.Errorf("%w: transit key destroyed", dek.ErrUnknownKey)
}

func newRecoveryKey(t testing.TB, kem uint16) *recovery.PrivateKey {
	k, err := recovery.Generate(kem)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A v3 envelope reads with the backend (every Sealer, the mode on or off) and with the
// recovery private key alone, which makes no backend call; HPKE runs once per local KEK.
func TestRecoverySealRoundTrip(t *testing.T) {
	for _, kem := range []uint16{recovery.KEMX25519, recovery.KEMP256} {
		t.Run(recovery.KEMName(kem), func(t *testing.T) {
			ctx := context.Background()
			priv := newRecoveryKey(t, kem)
			kek := newMemKEK(t, "k1", "k2")
			s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{Recovery: priv.Public()})
			var cts [][]byte
			for i := 0; i < 200; i++ {
				id := "k1"
				if i%2 == 1 {
					id = "k2" // two local KEKs, two seals
				}
				ct, err := s.Encrypt(ctx, id, []byte(fmt.Sprint("seed ", i)))
				if err != nil {
					t.Fatal(err)
				}
				if seal, ok, err := dek.RecoverySealOf(ct); err != nil || !ok || seal.KeyID != priv.ID() || seal.KEM != kem {
					t.Fatalf("RecoverySealOf = %+v, %v, %v", seal, ok, err)
				}
				cts = append(cts, ct)
			}
			gone := &goneKEK{}
			offline := dek.NewSealer(gone).OpenWith(dek.NewRecovery(priv))
			for i, ct := range cts {
				for name, r := range map[string]*dek.Sealer{"backend": s, "mode off": dek.NewSealer(kek), "recovery key": offline} {
					got, _, err := r.Decrypt(ctx, ct)
					if err != nil || string(got) != fmt.Sprint("seed ", i) {
						t.Fatalf("%s: envelope %d: %q, %v", name, i, got, err)
					}
				}
			}
			if gone.calls != 0 {
				t.Fatalf("reading with the recovery key made %d backend calls", gone.calls)
			}
		})
	}
}

// Without a recovery key the envelope stays v2; a v2 envelope has no seal.
func TestNoRecoveryKeyIsV2(t *testing.T) {
	s := dek.NewLocalSealer(newMemKEK(t, "k1"), dek.LocalKEKConfig{})
	ct, err := s.Encrypt(context.Background(), "k1", []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	if ct[0] != 2 {
		t.Fatalf("format %d, want 2", ct[0])
	}
	if _, ok, err := dek.RecoverySealOf(ct); ok || err != nil {
		t.Fatalf("RecoverySealOf(v2) = %v, %v", ok, err)
	}
}

// Another recovery key does not open the seal: the envelope goes to the backend, which has
// lost the key, and fails; and a dropped recovery key (break-glass expired) says so.
func TestWrongOrDroppedRecoveryKey(t *testing.T) {
	ctx := context.Background()
	priv := newRecoveryKey(t, recovery.KEMX25519)
	s := dek.NewLocalSealer(newMemKEK(t, "k1"), dek.LocalKEKConfig{Recovery: priv.Public()})
	ct, err := s.Encrypt(ctx, "k1", []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	other := dek.NewSealer(&goneKEK{}).OpenWith(dek.NewRecovery(newRecoveryKey(t, recovery.KEMX25519)))
	if got, _, err := other.Decrypt(ctx, ct); err == nil || !errors.Is(err, dek.ErrUnknownKey) {
		t.Fatalf("another recovery key: %q, %v", got, err)
	}
	r := dek.NewRecovery(priv)
	breakGlass := dek.NewSealer(&goneKEK{}).OpenWith(r)
	if _, _, err := breakGlass.Decrypt(ctx, ct); err != nil {
		t.Fatal(err)
	}
	r.Drop("break-glass expired at 2026-12-03T10:00:00Z")
	_, _, err = breakGlass.Decrypt(ctx, ct)
	if err == nil || !strings.Contains(err.Error(), "break-glass expired") || !strings.Contains(err.Error(), priv.ID().String()) {
		t.Fatalf("after Drop: %v", err)
	}
}

// An expiring recovery key refuses every read once the wall clock reaches its expiry, with
// nothing else happening (no timer, no Drop): a VM suspended past the expiry, whose monotonic
// timers stood still, does not serve on. The local KEK opened before is not used either.
func TestRecoveryExpiresByTheWallClock(t *testing.T) {
	ctx := context.Background()
	priv := newRecoveryKey(t, recovery.KEMX25519)
	s := dek.NewLocalSealer(newMemKEK(t, "k1"), dek.LocalKEKConfig{Recovery: priv.Public()})
	ct, err := s.Encrypt(ctx, "k1", []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	until := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	clk := clock.NewFake(until.Add(-time.Minute))
	gone := &goneKEK{}
	breakGlass := dek.NewSealer(gone).OpenWith(dek.NewRecovery(priv).Expire(until, clk, "break-glass mode ended at 2026-12-03T12:00:00Z"))
	if got, _, err := breakGlass.Decrypt(ctx, ct); err != nil || string(got) != "seed" {
		t.Fatalf("before the expiry: %q, %v", got, err)
	}
	clk.Advance(time.Minute) // at the expiry: over
	got, _, err := breakGlass.Decrypt(ctx, ct)
	if err == nil || !strings.Contains(err.Error(), "break-glass mode ended at 2026-12-03T12:00:00Z") || got != nil {
		t.Fatalf("at the expiry: %q, %v", got, err)
	}
	if gone.calls == 0 {
		t.Fatal("after the expiry the envelope must go to the backend like any other")
	}
}

// Every byte of a v3 envelope is authenticated, for the backend's reader and the recovery
// key's: a changed recovery field fails normal Decrypt too, and a changed seal fails with
// the recovery key alone, naming the seal. No change ever yields other plaintext.
func TestRecoverySealTamperedBytesFail(t *testing.T) {
	ctx := context.Background()
	priv := newRecoveryKey(t, recovery.KEMX25519)
	kek := newMemKEK(t, "k1")
	s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{Recovery: priv.Public()})
	ct, err := s.Encrypt(ctx, "k1", []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	offline := dek.NewSealer(&goneKEK{}).OpenWith(dek.NewRecovery(priv))
	// version, id length, "k1", local KEK length, wrapped local KEK: where the seal starts.
	sealStart := 6 + (int(ct[4])<<8 | int(ct[5]))
	sealEnd := sealStart + recovery.IDSize + 2 + 1 + 32 + 1 + recovery.SealedSize
	for i := range ct {
		bad := bytes.Clone(ct)
		bad[i] ^= 0x01
		for name, r := range map[string]*dek.Sealer{"backend": s, "recovery key": offline} {
			got, _, err := r.Decrypt(ctx, bad)
			if err == nil {
				t.Fatalf("%s: byte %d changed: decrypted to %q", name, i, got)
			}
			if !errors.Is(err, dek.ErrTampered) && !errors.Is(err, dek.ErrMalformed) && !errors.Is(err, dek.ErrUnknownKey) {
				t.Fatalf("%s: byte %d changed: %v", name, i, err)
			}
		}
		// The encapsulated key and the sealed KEK: the recovery reader names the seal.
		if encStart := sealStart + recovery.IDSize + 2 + 1; i >= encStart && i < sealEnd && i != encStart+32 {
			_, _, err := offline.Decrypt(ctx, bad)
			if !errors.Is(err, dek.ErrTampered) || !strings.Contains(err.Error(), "recovery seal") {
				t.Fatalf("seal byte %d changed: %v, want ErrTampered naming the recovery seal", i, err)
			}
		}
	}
}

// A seal moved to an envelope of another local KEK does not open there: it is bound to the
// key id and the backend-wrapped local KEK it came with.
func TestRecoverySealCannotMove(t *testing.T) {
	ctx := context.Background()
	priv := newRecoveryKey(t, recovery.KEMX25519)
	kek := newMemKEK(t, "k1")
	a := dek.NewLocalSealer(kek, dek.LocalKEKConfig{Recovery: priv.Public()})
	b := dek.NewLocalSealer(kek, dek.LocalKEKConfig{Recovery: priv.Public()})
	ctA, _ := a.Encrypt(ctx, "k1", []byte("seed a"))
	ctB, _ := b.Encrypt(ctx, "k1", []byte("seed b"))
	start := 6 + (int(ctA[4])<<8 | int(ctA[5]))
	end := start + recovery.IDSize + 2 + 1 + 32 + 1 + recovery.SealedSize
	moved := append(append(bytes.Clone(ctB[:start]), ctA[start:end]...), ctB[end:]...)
	offline := dek.NewSealer(&goneKEK{}).OpenWith(dek.NewRecovery(priv))
	if got, _, err := offline.Decrypt(ctx, moved); !errors.Is(err, dek.ErrTampered) || !strings.Contains(err.Error(), "recovery seal") {
		t.Fatalf("a seal moved to another local KEK's envelope: %q, %v", got, err)
	}
}

// The largest v3 envelope the Vault backend makes fits in the apiserver's 1 KiB cap on the
// plugin's ciphertext (k8s.io/apiserver envelope/kmsv2), with either KEM, even with a key id
// of the envelope's largest size.
func TestRecoveryEnvelopeFitsTheAPIServerCap(t *testing.T) {
	const apiserverCap = 1024
	vaultID := "vault:0123456789abcdef:v4294967295" // the longest id backends/vault makes
	vaultWrapped := 18 + 80                         // "vault:v4294967295:" + base64 of nonce, key, tag
	for _, keyID := range []string{vaultID, strings.Repeat("k", dek.MaxKeyIDSize)} {
		for _, kem := range []uint16{recovery.KEMX25519, recovery.KEMP256} {
			kek := &sizedKEK{size: vaultWrapped}
			s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{Recovery: newRecoveryKey(t, kem).Public()})
			ct, err := s.Encrypt(context.Background(), keyID, make([]byte, 32))
			if err != nil {
				t.Fatal(err)
			}
			v2, _ := dek.NewLocalSealer(kek, dek.LocalKEKConfig{}).Encrypt(context.Background(), keyID, make([]byte, 32))
			t.Logf("key id %d bytes, %s: v3 %d bytes, v2 %d bytes, seal %d bytes", len(keyID), recovery.KEMName(kem), len(ct), len(v2), len(ct)-len(v2))
			if len(ct) >= apiserverCap {
				t.Errorf("v3 envelope of %d bytes: the apiserver refuses %d and more", len(ct), apiserverCap)
			}
		}
	}
}

// sizedKEK wraps into size bytes, as Vault's "vault:vN:<base64>" does.
type sizedKEK struct{ size int }

func (*sizedKEK) CurrentID() string           { return "k1" }
func (*sizedKEK) Check(context.Context) error { return nil }
func (k *sizedKEK) Wrap(_ context.Context, _ string, d []byte) ([]byte, error) {
	return append(bytes.Clone(d), make([]byte, k.size-len(d))...), nil
}
func (k *sizedKEK) Unwrap(_ context.Context, _ string, w []byte) ([]byte, error) {
	return bytes.Clone(w[:dek.DEKSize]), nil
}

var writeGolden = flag.Bool("write-golden", false, "write testdata/golden-v3.txt anew (only for a new format)")

// goldenRecoveryKey is the test-only recovery key of the golden envelopes and the fuzz corpus.
func goldenRecoveryKey(t testing.TB) *recovery.PrivateKey {
	text, err := os.ReadFile("testdata/recovery-test-only.key")
	if err != nil {
		t.Fatal(err)
	}
	k, err := recovery.ParsePrivate(text)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Golden v3 envelopes, made once by this version: every later version must read them, with
// the backend's keys (fixedKEK) and with the recovery key alone.
func TestGoldenV3Envelopes(t *testing.T) {
	const path = "testdata/golden-v3.txt"
	ctx := context.Background()
	priv := goldenRecoveryKey(t)
	if *writeGolden {
		s := dek.NewLocalSealer(fixedKEK(), dek.LocalKEKConfig{Recovery: priv.Public()})
		var out strings.Builder
		for _, pt := range fuzzPlaintexts {
			ct, err := s.Encrypt(ctx, "k1", pt)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&out, "%x:%x\n", pt, ct)
		}
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != len(fuzzPlaintexts) {
		t.Fatalf("%d golden envelopes, want %d", len(lines), len(fuzzPlaintexts))
	}
	for _, line := range lines {
		ptHex, ctHex, _ := strings.Cut(line, ":")
		want, _ := hex.DecodeString(ptHex)
		ct, err := hex.DecodeString(ctHex)
		if err != nil || ct[0] != 3 {
			t.Fatalf("golden line %q: %v", line, err)
		}
		for name, s := range map[string]*dek.Sealer{
			"backend":      dek.NewSealer(fixedKEK()),
			"recovery key": dek.NewSealer(&goneKEK{}).OpenWith(dek.NewRecovery(priv)),
		} {
			got, id, err := s.Decrypt(ctx, ct)
			if err != nil || id != "k1" || !bytes.Equal(got, want) {
				t.Fatalf("%s: %x: %x, %q, %v", name, ct[:8], got, id, err)
			}
		}
	}
}

// The key files round trip; a public key file refuses a private key and the reverse, and a
// Key-Id header that does not match the key.
func TestRecoveryKeyFiles(t *testing.T) {
	for _, kem := range []uint16{recovery.KEMX25519, recovery.KEMP256} {
		priv := newRecoveryKey(t, kem)
		privText, err := priv.MarshalPrivate()
		if err != nil {
			t.Fatal(err)
		}
		pubText := priv.Public().MarshalPublic()
		p2, err := recovery.ParsePrivate(privText)
		if err != nil || p2.ID() != priv.ID() || p2.KEM() != kem {
			t.Fatalf("ParsePrivate: %v", err)
		}
		pub, err := recovery.ParsePublic(pubText)
		if err != nil || pub.ID() != priv.ID() {
			t.Fatalf("ParsePublic: %v", err)
		}
		if !strings.Contains(string(pubText), recovery.KEMName(kem)) || !strings.Contains(string(pubText), priv.ID().String()) {
			t.Fatalf("public key file does not name its suite and id:\n%s", pubText)
		}
		if _, err := recovery.ParsePublic(privText); err == nil || !strings.Contains(err.Error(), "PRIVATE") {
			t.Fatalf("ParsePublic(private key) = %v", err)
		}
		if _, err := recovery.ParsePrivate(pubText); err == nil {
			t.Fatal("ParsePrivate(public key) succeeded")
		}
		edited := strings.Replace(string(pubText), priv.ID().String(), "0000000000000000", 1)
		if _, err := recovery.ParsePublic([]byte(edited)); err == nil || !strings.Contains(err.Error(), "does not match") {
			t.Fatalf("edited Key-Id: %v", err)
		}
	}
}

// BenchmarkEncryptRecovery compares Encrypt with and without a recovery seal: the seal is made
// once per local KEK, so they should be within noise.
func BenchmarkEncryptRecovery(b *testing.B) {
	for _, withSeal := range []bool{false, true} {
		b.Run(fmt.Sprint("seal=", withSeal), func(b *testing.B) {
			cfg := dek.LocalKEKConfig{}
			if withSeal {
				cfg.Recovery = newRecoveryKey(b, recovery.KEMX25519).Public()
			}
			s := dek.NewLocalSealer(newMemKEK(b, "k1"), cfg)
			seed := make([]byte, 32)
			for b.Loop() {
				if _, err := s.Encrypt(context.Background(), "k1", seed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A local KEK restored after a restart (the kept state holds no seal) is sealed to the recovery
// key again, so that the restarted plugin keeps writing envelopes the private key opens.
func TestRestoredLocalKEKIsSealedAgain(t *testing.T) {
	ctx := context.Background()
	priv := newRecoveryKey(t, recovery.KEMX25519)
	kek := newMemKEK(t, "k1")
	before := dek.NewLocalSealer(kek, dek.LocalKEKConfig{Recovery: priv.Public()})
	if _, err := before.Encrypt(ctx, "k1", []byte("before")); err != nil {
		t.Fatal(err)
	}
	st, ok := before.LocalKEK()
	if !ok {
		t.Fatal("no local KEK to keep")
	}
	after := dek.NewLocalSealer(kek, dek.LocalKEKConfig{Recovery: priv.Public()})
	if err := after.RestoreLocalKEK(st); err != nil {
		t.Fatal(err)
	}
	wraps := kek.wrapCount()
	ct, err := after.Encrypt(ctx, "k1", []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	if kek.wrapCount() != wraps {
		t.Fatal("Encrypt after the restore made a new local KEK")
	}
	if seal, ok, err := dek.RecoverySealOf(ct); err != nil || !ok || seal.KeyID != priv.ID() {
		t.Fatalf("envelope after the restore: seal %+v, %v, %v; want a seal of the recovery key", seal, ok, err)
	}
	got, _, err := dek.NewSealer(&goneKEK{}).OpenWith(dek.NewRecovery(priv)).Decrypt(ctx, ct)
	if err != nil || string(got) != "after" {
		t.Fatalf("read with the recovery key alone: %q, %v", got, err)
	}
}

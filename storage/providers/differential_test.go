package providers_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// sizes returns n plaintext sizes from 0 to 1 MiB: the block and tag boundaries, then random
// sizes spread over every order of magnitude.
func sizes(r *rand.Rand, n int) []int {
	out := []int{0, 1, 15, 16, 17, 31, 32, 33, 255, 256, 4096, 1 << 20}
	for len(out) < n {
		out = append(out, r.IntN(1<<(1+r.IntN(20)))+1)
	}
	return out
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestDifferential writes with the apiserver's transformers and reads with ours, and the
// other way round, for random keys, key positions and sizes, with the same provider chain on
// both sides (the provider under test first, identity after it, as a migration config has).
func TestDifferential(t *testing.T) {
	for _, kind := range []providerKind{kindAESCBC, kindAESGCM, kindSecretbox, kindIdentity} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			r := rand.New(rand.NewPCG(1, uint64(len(kind))))
			for round := range 8 {
				p := randomProvider(r, kind)
				// A second configuration in which the writer's key is not the first: reads
				// must find any key by its name.
				rotated := p
				if len(p.keys) > 1 {
					rotated.keys = append(append([]providers.Key{}, p.keys[1:]...), p.keys[0])
				}
				ref, refRotated := refChain(t, p, provider{kind: kindIdentity}), refChain(t, rotated)
				ours, oursRotated := ourChain(t, p, provider{kind: kindIdentity}), ourChain(t, rotated)
				for _, n := range sizes(r, 40) {
					plain := randomBytes(r, n)
					etcdKey := "/registry/secrets/ns" + string(rune('a'+round)) + "/s"

					stored := refEncrypt(t, ref, plain, etcdKey)
					for name, reader := range map[string]*providers.Chain{"same": ours, "rotated": oursRotated} {
						got, err := reader.Decrypt(context.Background(), stored, []byte(etcdKey))
						if err != nil || !bytes.Equal(got, plain) {
							t.Fatalf("%s, %d bytes: apiserver wrote, ours (%s config) read: %v (equal %v)", p, n, name, err, bytes.Equal(got, plain))
						}
					}

					stored, err := ours.Encrypt(context.Background(), nil, plain, []byte(etcdKey))
					if err != nil {
						t.Fatal(err)
					}
					for _, reader := range []struct {
						name string
						tr   func([]byte) ([]byte, error)
					}{
						{"same", func(b []byte) ([]byte, error) { return refDecrypt(ref, b, etcdKey) }},
						{"rotated", func(b []byte) ([]byte, error) { return refDecrypt(refRotated, b, etcdKey) }},
					} {
						got, err := reader.tr(stored)
						if err != nil || !bytes.Equal(got, plain) {
							t.Fatalf("%s, %d bytes: ours wrote, apiserver (%s config) read: %v", p, n, reader.name, err)
						}
					}
					if kind == kindIdentity {
						if !bytes.Equal(stored, plain) {
							t.Fatal("identity changed the value")
						}
						continue
					}
					if n > 0 && bytes.Contains(stored, plain) && n > 8 {
						t.Fatalf("%s: plaintext visible in the stored value", p)
					}
					checkTamperAndMove(t, r, p, ours, stored, plain, etcdKey)
				}
			}
		})
	}
}

// checkTamperAndMove changes one byte of the stored value's body, and reads it under another
// etcd key. Authenticated providers must refuse both where that applies; aescbc, which is
// not authenticated, must at least behave exactly like the apiserver.
func checkTamperAndMove(t *testing.T, r *rand.Rand, p provider, ours *providers.Chain, stored, plain []byte, etcdKey string) {
	t.Helper()
	refTr := refChain(t, p)
	prefixLen := len(providers.AESCBCPrefix)
	switch p.kind {
	case kindAESGCM:
		prefixLen = len(providers.AESGCMPrefix)
	case kindSecretbox:
		prefixLen = len(providers.SecretboxPrefix)
	}
	prefixLen += len(p.keys[0].Name) + 1

	tampered := bytes.Clone(stored)
	i := prefixLen + r.IntN(len(stored)-prefixLen)
	tampered[i] ^= byte(1 + r.IntN(255))
	got, err := ours.Decrypt(context.Background(), tampered, []byte(etcdKey))
	refGot, refErr := refDecrypt(refTr, tampered, etcdKey)
	switch p.kind {
	case kindAESCBC:
		if (err == nil) != (refErr == nil) || !bytes.Equal(got, refGot) {
			t.Fatalf("%s: tampered byte %d: ours %v, apiserver %v; outputs equal %v", p, i, err, refErr, bytes.Equal(got, refGot))
		}
	default:
		if err == nil || !errors.Is(err, providers.ErrAuthentication) && !errors.Is(err, providers.ErrMalformed) {
			t.Fatalf("%s: tampered byte %d: ours = %v", p, i, err)
		}
		if refErr == nil {
			t.Fatalf("%s: tampered value read by the apiserver", p)
		}
	}

	moved := "/registry/secrets/other/s"
	got, err = ours.Decrypt(context.Background(), stored, []byte(moved))
	switch p.kind {
	case kindAESGCM:
		if !errors.Is(err, providers.ErrAuthentication) {
			t.Fatalf("%s: value moved to another etcd key: %v", p, err)
		}
		if _, refErr := refDecrypt(refTr, stored, moved); refErr == nil {
			t.Fatalf("%s: the apiserver read a moved value", p)
		}
	default: // no additional data: a moved value still reads, in both implementations
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%s: moved value: %v", p, err)
		}
	}
}

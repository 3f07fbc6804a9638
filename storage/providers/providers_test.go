package providers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/storage/providers"
)

var bg = context.Background()

// The apiserver's aescbc reader indexes past the end of a value that holds only an IV and
// panics; ours must return an error.
func TestAESCBCBareIVIsAnError(t *testing.T) {
	p := randomProvider(rand.New(rand.NewPCG(3, 3)), kindAESCBC)
	value := []byte(providers.AESCBCPrefix + p.keys[0].Name + ":" + strings.Repeat("i", 16))
	if _, err := refDecrypt(refChain(t, p), value, "/registry/secrets/a/b"); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("apiserver on a bare IV: %v (expected its panic; if fixed upstream, drop this check)", err)
	}
	_, err := ourChain(t, p).Decrypt(bg, value, []byte("/registry/secrets/a/b"))
	if !errors.Is(err, providers.ErrMalformed) {
		t.Fatalf("ours on a bare IV: %v", err)
	}
}

func TestKeySizes(t *testing.T) {
	for n := range 70 {
		key := make([]byte, n)
		_, cbcErr := providers.NewAESCBC(key)
		_, gcmErr := providers.NewAESGCM(key)
		_, sbErr := providers.NewSecretbox(key)
		aesOK := n == 16 || n == 24 || n == 32
		if (cbcErr == nil) != aesOK || (gcmErr == nil) != aesOK || (sbErr == nil) != (n == 32) {
			t.Errorf("key of %d bytes: aescbc %v, aesgcm %v, secretbox %v", n, cbcErr, gcmErr, sbErr)
		}
	}
}

// Values whose provider or key is not configured, wrong keys and corrupted values each get an
// error that says which.
func TestErrorsSayWhatIsWrong(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	etcdKey := []byte("/registry/secrets/default/s")
	plain := []byte("k8s\x00 some object")
	for _, kind := range []providerKind{kindAESCBC, kindAESGCM, kindSecretbox} {
		t.Run(string(kind), func(t *testing.T) {
			p := randomProvider(r, kind)
			stored, err := ourChain(t, p).Encrypt(bg, nil, plain, etcdKey)
			if err != nil {
				t.Fatal(err)
			}

			// Another provider entirely.
			other := kindAESGCM
			if kind == kindAESGCM {
				other = kindSecretbox
			}
			_, err = ourChain(t, randomProvider(r, other), provider{kind: kindIdentity}).Decrypt(bg, stored, etcdKey)
			if !errors.Is(err, providers.ErrNoMatch) || !strings.Contains(err.Error(), "k8s:enc:"+string(kind)+":v1:"+p.keys[0].Name+":") {
				t.Fatalf("provider not configured: %v", err)
			}

			// The right provider without that key name.
			renamed := p
			renamed.keys = []providers.Key{{Name: "another", Secret: p.keys[0].Secret}}
			_, err = ourChain(t, renamed).Decrypt(bg, stored, etcdKey)
			// The error names the key the value asks for, and the keys configured.
			if !errors.Is(err, providers.ErrNoMatch) || !strings.Contains(err.Error(), fmt.Sprintf("%q", p.keys[0].Name)) || !strings.Contains(err.Error(), "another") {
				t.Fatalf("key not configured: %v", err)
			}

			// The right name with another secret.
			wrong := p
			wrong.keys = []providers.Key{{Name: p.keys[0].Name, Secret: bytes.Repeat([]byte{7}, len(p.keys[0].Secret))}}
			got, err := ourChain(t, wrong).Decrypt(bg, stored, etcdKey)
			if kind == kindAESCBC {
				// Not authenticated: a wrong key fails only through the padding check, about
				// 255 times in 256; it must never give back the plaintext.
				if bytes.Equal(got, plain) {
					t.Fatal("wrong aescbc key gave the plaintext")
				}
			} else if !errors.Is(err, providers.ErrAuthentication) {
				t.Fatalf("wrong key: %v", err)
			}

			// Truncated.
			for _, n := range []int{len(stored) - 1, len(stored) / 2, len(providers.AESCBCPrefix) + 3} {
				if _, err := ourChain(t, p).Decrypt(bg, stored[:n], etcdKey); err == nil {
					t.Fatalf("value truncated to %d bytes was read", n)
				}
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	ch := ourChain(t, provider{kind: kindIdentity})
	if got, err := ch.Decrypt(bg, []byte("k8s\x00plain"), nil); err != nil || string(got) != "k8s\x00plain" {
		t.Fatalf("plaintext: %q, %v", got, err)
	}
	_, err := ch.Decrypt(bg, []byte("k8s:enc:aesgcm:v1:key1:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), nil)
	if !errors.Is(err, providers.ErrNoMatch) || !strings.Contains(err.Error(), "k8s:enc:aesgcm:v1:key1:") {
		t.Fatalf("identity on encrypted data: %v", err)
	}
	if _, err := (providers.Identity{}).Decrypt(bg, []byte("k8s:enc:x"), nil); !errors.Is(err, providers.ErrEncrypted) {
		t.Fatalf("identity alone on encrypted data: %v", err)
	}
	out, err := ch.Encrypt(bg, nil, []byte("abc"), nil)
	if err != nil || string(out) != "abc" {
		t.Fatalf("identity write: %q, %v", out, err)
	}
}

package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/testing/vaultkms"
)

// vault-kubernetes-kms's envelopes, made by a stand-in of its Encrypt against a real Vault,
// read with the same transit key when (and only when) the backend is told to; whatever else
// looks like one fails with a clear error and the right gRPC code.
func TestVaultKubernetesKMSEnvelopes(t *testing.T) {
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	ctx := context.Background()
	f := newFixture(t, v)
	theirs := vaultkms.Transit{Client: v.Client(t, f.token), Mount: f.mount, Key: f.key}
	other := newFixture(t, v)
	otherKey := vaultkms.Transit{Client: v.Client(t, other.token), Mount: other.mount, Key: other.key}

	seed1, seed2 := make([]byte, dek.SeedSize), make([]byte, dek.SeedSize)
	rand.Read(seed1)
	rand.Read(seed2)
	encrypt := func(tr vaultkms.Transit, plain []byte) []byte {
		t.Helper()
		ct, _, err := tr.Encrypt(ctx, plain)
		if err != nil {
			t.Fatal(err)
		}
		return ct
	}
	ct1 := encrypt(theirs, seed1)
	v.RotateKey(t, f.mount, f.key)
	ct2 := encrypt(theirs, seed2)
	if !bytes.HasPrefix(ct1, []byte("vault:v1:")) || !bytes.HasPrefix(ct2, []byte("vault:v2:")) {
		t.Fatalf("stand-in ciphertexts %q, %q", ct1, ct2)
	}

	cfg := f.config(t, StaticToken{f.token})
	cfg.ReadVaultKubernetesKMS = true
	k, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mustCheck(t, k)
	p := servePluginTo(t, k)

	for _, c := range []struct {
		ct, want []byte
	}{{ct1, seed1}, {ct2, seed2}} {
		resp, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "u", Ciphertext: c.ct, KeyId: "1"})
		if err != nil || !bytes.Equal(resp.GetPlaintext(), c.want) {
			t.Fatalf("Decrypt(%.12q) = %v; want the seed", c.ct, err)
		}
	}

	raw := []byte(string(ct1))
	raw[len(raw)-10] ^= 0x01 // another base64 letter: a changed byte
	for _, tc := range []struct {
		name string
		ct   []byte
		code codes.Code
		msg  string
	}{
		{"tampered", raw, codes.InvalidArgument, ""},
		{"truncated", ct1[:len(ct1)-8], codes.InvalidArgument, ""},
		{"another transit key", encrypt(otherKey, seed1), codes.InvalidArgument, ""},
		{"version from the prefix only", append([]byte("vault:v1:"), ct2[len("vault:v2:"):]...), codes.InvalidArgument, ""},
		{"not a seed's size", encrypt(theirs, []byte("a password, not a DEK seed")), codes.InvalidArgument, "not a 32-byte DEK seed"},
		{"a version never made", append([]byte("vault:v9:"), ct2[len("vault:v2:"):]...), codes.Unavailable, "newer than the latest"},
	} {
		_, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "u", Ciphertext: tc.ct, KeyId: "1"})
		if st, _ := status.FromError(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
			t.Errorf("%s: Decrypt = %v; want %v with %q", tc.name, err, tc.code, tc.msg)
		}
	}

	// Our own wrap (a local KEK, a DEK) relabelled as vault-kubernetes-kms's: with an AEAD key
	// type and a format-2 key id it is bound to its key id, and fails without it.
	ours, err := k.Wrap(ctx, k.CurrentID(), seed1)
	if err != nil {
		t.Fatal(err)
	}
	relabelled := []byte("vault:v2:" + base64.StdEncoding.EncodeToString(ours))
	if resp, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "u", Ciphertext: relabelled}); status.Code(err) != codes.InvalidArgument || resp.GetPlaintext() != nil {
		t.Errorf("our own wrap relabelled: Decrypt = %v, want InvalidArgument", err)
	}

	// A key type without associated data (RSA): our wraps under it are not bound, so the
	// reader is refused, saying why; Vault is never asked.
	rsaKey := fmt.Sprintf("kek-rsa-%d", keySeq.Add(1))
	v.Write(t, f.mount+"/keys/"+rsaKey, map[string]any{"type": "rsa-2048"})
	v.WritePolicy(t, rsaKey, vaultd.TransitPolicy(f.mount, rsaKey))
	rsaToken := v.CreateToken(t, vaultd.TokenOptions{Policies: []string{rsaKey}, TTL: "1h", Renewable: true})
	rsaCT := encrypt(vaultkms.Transit{Client: v.Client(t, rsaToken), Mount: f.mount, Key: rsaKey}, seed1)
	rsaCfg := Config{Address: v.Addr, Mount: f.mount, Key: rsaKey, Auth: StaticToken{rsaToken}, Log: testLogger(t), ReadVaultKubernetesKMS: true}
	rsaKEK, err := Open(rsaCfg)
	if err != nil {
		t.Fatal(err)
	}
	mustCheck(t, rsaKEK)
	_, err = servePluginTo(t, rsaKEK).Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "u", Ciphertext: rsaCT})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "needs a transit key of an AEAD type") {
		t.Errorf("RSA key: Decrypt = %v; want FailedPrecondition naming AEAD types", err)
	}

	// The DEK cache keeps what it read under such key ids while the key accepts them (Usable),
	// and drops them once the version is retired.
	if err := k.Usable(dek.VaultKMSKeyID(1)); err != nil {
		t.Errorf("Usable(vault:v1) = %v", err)
	}
	// A retired version is refused as our own key ids are.
	v.SetMinDecryptionVersion(t, f.mount, f.key, 2)
	mustCheck(t, k)
	if err := k.Usable(dek.VaultKMSKeyID(1)); !errors.Is(err, dek.ErrUnknownKey) {
		t.Errorf("Usable(vault:v1) after retiring v1 = %v", err)
	}
	if _, err := p.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "u", Ciphertext: ct1}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("retired version: Decrypt = %v, want FailedPrecondition", err)
	}

	// Off (the default): refused with the flag's name, Vault never asked.
	off, err := Open(f.config(t, StaticToken{f.token}))
	if err != nil {
		t.Fatal(err)
	}
	mustCheck(t, off)
	_, err = servePluginTo(t, off).Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "u", Ciphertext: ct2})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "--vault-read-vault-kubernetes-kms") {
		t.Errorf("format off: Decrypt = %v; want FailedPrecondition naming the flag", err)
	}
	// And a backend that is off refuses such key ids even if asked directly.
	if _, err := off.Unwrap(ctx, dek.VaultKMSKeyID(2), []byte("x")); !errors.Is(err, dek.ErrUnknownKey) {
		t.Errorf("off backend: Unwrap = %v", err)
	}
	if err := off.Usable(dek.VaultKMSKeyID(2)); !errors.Is(err, dek.ErrUnknownKey) {
		t.Errorf("off backend: Usable = %v", err)
	}
}

func servePluginTo(t *testing.T, k *KEK) kmsapi.KeyManagementServiceClient {
	_, c := servePlugin(t, k)
	return c
}

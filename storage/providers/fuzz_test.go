package providers_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// fuzzKey derives fixed keys, so that the checked-in corpus and every fuzz worker agree.
func fuzzKey(name string, n int) []byte {
	k := sha256.Sum256([]byte("fuzz " + name))
	return k[:n]
}

// fuzzProviders is one chain with every local provider, each with two keys.
func fuzzProviders() []provider {
	var ps []provider
	for _, kind := range []providerKind{kindAESCBC, kindAESGCM, kindSecretbox} {
		n := 16
		if kind == kindSecretbox {
			n = 32
		}
		ps = append(ps, provider{kind: kind, keys: []providers.Key{
			{Name: "k1", Secret: fuzzKey(string(kind)+"k1", n)}, {Name: "k2", Secret: fuzzKey(string(kind)+"k2", 32)},
		}})
	}
	return append(ps, provider{kind: kindIdentity})
}

const fuzzEtcdKey = "/registry/secrets/default/fuzz"

var writeCorpus = flag.Bool("write-corpus", false, "rewrite the checked-in fuzz seed corpus under testdata/fuzz")

// FuzzChainDecrypt feeds arbitrary values to our chain and to the apiserver's, configured
// alike. They must agree: both fail, or both return the same plaintext. Where the apiserver
// panics (aescbc on a bare IV), ours must fail.
func FuzzChainDecrypt(f *testing.F) {
	ps := fuzzProviders()
	ours, ref := ourChain(f, ps...), refChain(f, ps...)
	for _, seed := range chainSeeds(f, ps) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ours.Decrypt(context.Background(), data, []byte(fuzzEtcdKey))
		refGot, refErr := refDecrypt(ref, data, fuzzEtcdKey)
		if (err == nil) != (refErr == nil) || !bytes.Equal(got, refGot) {
			t.Fatalf("ours: %v; apiserver: %v; outputs equal: %v", err, refErr, bytes.Equal(got, refGot))
		}
	})
}

func chainSeeds(t testing.TB, ps []provider) [][]byte {
	seeds := [][]byte{{}, []byte("k8s\x00plain"), []byte("k8s:enc:"), []byte("k8s:enc:aescbc:v1:k1:0123456789abcdef")}
	for i, p := range ps[:3] {
		for _, n := range []int{0, 1, 16, 100} {
			plain := bytes.Repeat([]byte{byte(i)}, n)
			seeds = append(seeds, refEncrypt(t, refChain(t, p), plain, fuzzEtcdKey))
		}
	}
	return seeds
}

// FuzzParseEncryptedObject compares our reading of an EncryptedObject with the apiserver's:
// proto.Unmarshal into its generated type followed by its ValidateEncryptedObject. Both decode
// with the same generated type; this holds our copy of the validation to the apiserver's.
func FuzzParseEncryptedObject(f *testing.F) {
	for _, seed := range encryptedObjectSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := providers.ParseEncryptedObject(data)
		ref := &kmstypes.EncryptedObject{}
		refErr := proto.Unmarshal(data, ref)
		if refErr == nil {
			refErr = kmsv2.ValidateEncryptedObject(ref)
		}
		if (err == nil) != (refErr == nil) {
			t.Fatalf("ours: %v; apiserver: %v", err, refErr)
		}
		if err != nil {
			return
		}
		if !proto.Equal(o, ref) {
			t.Fatalf("fields differ: ours %v; apiserver %v", o, ref)
		}
	})
}

func encryptedObjectSeeds() [][]byte {
	var seeds [][]byte
	for _, o := range []*kmstypes.EncryptedObject{
		{EncryptedData: []byte("data"), KeyID: "key-1", EncryptedDEKSource: []byte("dek"), EncryptedDEKSourceType: 1},
		{EncryptedData: []byte("data"), KeyID: "key-1", EncryptedDEKSource: []byte("dek")},
		{EncryptedData: []byte("d"), KeyID: "k", EncryptedDEKSource: []byte("s"), Annotations: map[string][]byte{"a.example.com": []byte("v"), "b.example.com.": nil}},
		{EncryptedData: []byte("d"), KeyID: "k", EncryptedDEKSource: []byte("s"), Annotations: map[string][]byte{"Not_A_Domain": []byte("v")}},
		{EncryptedData: []byte("d"), KeyID: "k", EncryptedDEKSource: []byte("s"), EncryptedDEKSourceType: 7},
		{KeyID: "k", EncryptedDEKSource: []byte("s")},
	} {
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(o)
		seeds = append(seeds, b)
	}
	return append(seeds, []byte{}, []byte{0x0a, 0x05, 0x01}, []byte{0x00}, []byte{0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
}

// TestWriteFuzzCorpus rewrites testdata/fuzz with the seeds above when run with -write-corpus;
// `go test` then runs every checked-in seed as a regression case.
func TestWriteFuzzCorpus(t *testing.T) {
	if !*writeCorpus {
		return
	}
	write := func(target string, seeds [][]byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("FuzzChainDecrypt", chainSeeds(t, fuzzProviders()))
	write("FuzzParseEncryptedObject", encryptedObjectSeeds())
}

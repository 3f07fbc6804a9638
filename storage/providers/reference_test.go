package providers_test

import (
	"context"
	"crypto/aes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"k8s.io/apiserver/pkg/storage/value"
	aestransformer "k8s.io/apiserver/pkg/storage/value/encrypt/aes"
	"k8s.io/apiserver/pkg/storage/value/encrypt/identity"
	"k8s.io/apiserver/pkg/storage/value/encrypt/secretbox"

	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// The reference: kube-apiserver's own transformers, nested behind value.NewPrefixTransformers
// exactly as its encryptionconfig loader nests them (provider prefix, then "<key name>:").

type providerKind string

const (
	kindAESCBC    providerKind = "aescbc"
	kindAESGCM    providerKind = "aesgcm"
	kindSecretbox providerKind = "secretbox"
	kindIdentity  providerKind = "identity"
)

// provider is one configured provider: its kind and keys, the first of which writes.
type provider struct {
	kind providerKind
	keys []providers.Key
}

func (p provider) String() string {
	s := string(p.kind)
	for _, k := range p.keys {
		s += fmt.Sprintf(" %s/%d", k.Name, len(k.Secret))
	}
	return s
}

func refLink(t testing.TB, p provider) value.PrefixTransformer {
	t.Helper()
	if p.kind == kindIdentity {
		return value.PrefixTransformer{Prefix: []byte{}, Transformer: identity.NewEncryptCheckTransformer()}
	}
	var keyLinks []value.PrefixTransformer
	for _, k := range p.keys {
		var tr value.Transformer
		switch p.kind {
		case kindAESCBC, kindAESGCM:
			block, err := aes.NewCipher(k.Secret)
			if err != nil {
				t.Fatal(err)
			}
			if p.kind == kindAESCBC {
				tr = aestransformer.NewCBCTransformer(block)
			} else if tr, err = aestransformer.NewGCMTransformer(block); err != nil {
				t.Fatal(err)
			}
		case kindSecretbox:
			tr = secretbox.NewSecretboxTransformer([32]byte(k.Secret))
		}
		keyLinks = append(keyLinks, value.PrefixTransformer{Prefix: []byte(k.Name + ":"), Transformer: tr})
	}
	prefix := map[providerKind]string{kindAESCBC: providers.AESCBCPrefix, kindAESGCM: providers.AESGCMPrefix, kindSecretbox: providers.SecretboxPrefix}[p.kind]
	return value.PrefixTransformer{
		Prefix:      []byte(prefix),
		Transformer: value.NewPrefixTransformers(errors.New("no matching key"), keyLinks...),
	}
}

// refChain is the apiserver's chain for a resource configured with these providers.
func refChain(t testing.TB, ps ...provider) value.Transformer {
	t.Helper()
	var links []value.PrefixTransformer
	for _, p := range ps {
		links = append(links, refLink(t, p))
	}
	return value.NewPrefixTransformers(errors.New("no matching prefix found"), links...)
}

func ourLink(t testing.TB, p provider) providers.Link {
	t.Helper()
	var l providers.Link
	var err error
	switch p.kind {
	case kindIdentity:
		return providers.Link{Transformer: providers.Identity{}}
	case kindAESCBC:
		l, err = providers.NewAESCBCProvider(p.keys)
	case kindAESGCM:
		l, err = providers.NewAESGCMProvider(p.keys)
	case kindSecretbox:
		l, err = providers.NewSecretboxProvider(p.keys)
	}
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func ourChain(t testing.TB, ps ...provider) *providers.Chain {
	t.Helper()
	var links []providers.Link
	for _, p := range ps {
		links = append(links, ourLink(t, p))
	}
	return providers.NewChain("provider", links...)
}

// randomProvider has 1 to 3 keys of sizes the apiserver accepts for kind.
func randomProvider(r *rand.Rand, kind providerKind) provider {
	p := provider{kind: kind}
	if kind == kindIdentity {
		return p
	}
	sizes := []int{16, 24, 32}
	if kind == kindSecretbox {
		sizes = []int{32}
	}
	for i := range 1 + r.IntN(3) {
		key := make([]byte, sizes[r.IntN(len(sizes))])
		for j := range key {
			key[j] = byte(r.Uint32())
		}
		p.keys = append(p.keys, providers.Key{Name: fmt.Sprintf("key%d-%d", i, r.IntN(1000)), Secret: key})
	}
	return p
}

// refDecrypt calls the apiserver's reader, turning its panic (aescbc on a bare IV) into an error.
func refDecrypt(tr value.Transformer, data []byte, etcdKey string) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("apiserver panicked: %v", r)
		}
	}()
	out, _, err = tr.TransformFromStorage(context.Background(), data, value.DefaultContext(etcdKey))
	return out, err
}

func refEncrypt(t testing.TB, tr value.Transformer, plain []byte, etcdKey string) []byte {
	t.Helper()
	out, err := tr.TransformToStorage(context.Background(), plain, value.DefaultContext(etcdKey))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

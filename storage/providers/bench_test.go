package providers_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/storage/value"

	ourconfig "github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// BenchmarkProviders compares our providers with kube-apiserver's on the same inputs: the
// same keys, plaintexts and stored values, each side behind its own prefix chain as the
// apiserver builds it. Compare with
//
//	go test -run '^$' -bench BenchmarkProviders -count 8 ./providers > bench.txt
//	benchstat -col /impl bench.txt
func BenchmarkProviders(b *testing.B) {
	r := rand.New(rand.NewPCG(9, 9))
	type pair struct {
		ref  value.Transformer
		ours providers.Transformer
	}
	impls := map[string]pair{}
	for _, kind := range []providerKind{kindIdentity, kindAESCBC, kindAESGCM, kindSecretbox} {
		p := randomProvider(r, kind)
		if kind != kindIdentity {
			p.keys = p.keys[:1]
			p.keys[0].Secret = randomBytes(r, 32)
		}
		impls[string(kind)] = pair{refChain(b, p), ourChain(b, p)}
	}
	socket := startPlugin(b)
	path := writeConfig(b, fmt.Sprintf(`resources:
  - resources: [secrets]
    providers:
      - kms: {apiVersion: v2, name: bench, endpoint: "unix://%s", timeout: 3s}
`, socket))
	ours, err := ourconfig.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	defer ours.Close()
	impls["kmsv2"] = pair{
		apiserverTransformer(b, path, schema.GroupResource{Resource: "secrets"}),
		ours.TransformerFor(ourconfig.GroupResource{Resource: "secrets"}),
	}

	ctx := context.Background()
	etcdKey := "/registry/secrets/default/bench"
	for _, op := range []string{"encrypt", "decrypt"} {
		for _, kind := range []string{"identity", "aescbc", "aesgcm", "secretbox", "kmsv2"} {
			for _, size := range []int{1 << 10, 64 << 10} {
				plain := randomBytes(r, size)
				impl := impls[kind]
				stored := refEncrypt(b, impl.ref, plain, etcdKey)
				name := fmt.Sprintf("op=%s/provider=%s/size=%dKiB", op, kind, size>>10)
				b.Run(name+"/impl=apiserver", func(b *testing.B) {
					b.SetBytes(int64(size))
					b.ReportAllocs()
					dataCtx := value.DefaultContext(etcdKey)
					for b.Loop() {
						var err error
						if op == "encrypt" {
							_, err = impl.ref.TransformToStorage(ctx, plain, dataCtx)
						} else {
							_, _, err = impl.ref.TransformFromStorage(ctx, stored, dataCtx)
						}
						if err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run(name+"/impl=ours", func(b *testing.B) {
					b.SetBytes(int64(size))
					b.ReportAllocs()
					key := []byte(etcdKey)
					for b.Loop() {
						var err error
						if op == "encrypt" {
							_, err = impl.ours.Encrypt(ctx, nil, plain, key)
						} else {
							_, err = impl.ours.Decrypt(ctx, stored, key)
						}
						if err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

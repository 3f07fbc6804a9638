package vault

import (
	"bytes"
	"context"
	"testing"

	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
)

// BenchmarkVault measures Wrap and Unwrap against a real dev-mode Vault on loopback, one
// transit call each: the cost any DEK cache or batching must be compared with.
func BenchmarkVault(b *testing.B) {
	v := vaultd.StartVaultDev(b)
	v.EnableTransit(b, "transit")
	v.CreateKey(b, "transit", "bench")
	v.WritePolicy(b, "bench", vaultd.TransitPolicy("transit", "bench"))
	token := v.CreateToken(b, vaultd.TokenOptions{Policies: []string{"bench"}, TTL: "1h"})
	k, err := Open(Config{Address: v.Addr, Key: "bench", Auth: StaticToken{token}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := k.Check(ctx); err != nil {
		b.Fatal(err)
	}
	id := k.CurrentID()
	key := bytes.Repeat([]byte{1}, 32)
	wrapped, err := k.Wrap(ctx, id, key)
	if err != nil {
		b.Fatal(err)
	}
	// 8 goroutines per CPU: 16 concurrent calls on the 2-core reference machine, as in the
	// floor measurements of DESIGN.md.
	b.Run("Wrap", func(b *testing.B) {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := k.Wrap(ctx, id, key); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("Unwrap", func(b *testing.B) {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := k.Unwrap(ctx, id, wrapped); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

package vault

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
)

// A cold-cache burst of distinct Unwraps against a real Vault goes in a few batch requests,
// not one per DEK, and one tampered envelope fails alone: the requests batched with it succeed.
func TestDecryptsAreBatched(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	f := newFixture(t, v)
	counter := &countingTransport{n: map[string]int{}}
	cfg := f.config(t, StaticToken{Token: f.token})
	cfg.wrapTransport = func(next http.RoundTripper) http.RoundTripper { counter.next = next; return counter }
	k, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := k.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Check(ctx); err != nil { // adopted after two checks
		t.Fatal(err)
	}
	id := k.CurrentID()
	const n = 64
	deks, wrapped := make([][]byte, n), make([][]byte, n)
	for i := range n {
		deks[i] = make([]byte, dek.DEKSize)
		rand.Read(deks[i])
		if wrapped[i], err = k.Wrap(ctx, id, deks[i]); err != nil {
			t.Fatal(err)
		}
	}
	bad := n / 2
	wrapped[bad][len(wrapped[bad])-1] ^= 1 // a tampered tag
	counter.reset()

	var wg sync.WaitGroup
	errs := make([]error, n)
	got := make([][]byte, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = k.Unwrap(ctx, id, wrapped[i])
		}()
	}
	wg.Wait()
	for i := range n {
		switch {
		case i == bad && !errors.Is(errs[i], dek.ErrTampered):
			t.Errorf("the tampered one: %v, want ErrTampered", errs[i])
		case i != bad && (errs[i] != nil || string(got[i]) != string(deks[i])):
			t.Errorf("DEK %d: %v (batched with a tampered one must not fail)", i, errs[i])
		}
	}
	requests := counter.reset()["PUT /v1/transit/decrypt/"+f.key]
	batches, items := k.DecryptBatches()
	t.Logf("%d concurrent Unwraps: %d decrypt requests, %d batches of %d items", n, requests, batches, items)
	if requests >= n/2 {
		t.Fatalf("%d decrypt requests for %d concurrent Unwraps: not batched", requests, n)
	}
}

package plugin_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// The stack New builds drops what it holds in memory when the backend refuses: after Vault
// says yes again, Encrypt has a new local KEK wrapped and Decrypt asks the backend again,
// instead of serving what was cached before the refusal.
func TestStackDropsMemoryOnRefusal(t *testing.T) {
	k := &countingKEK{id: "k1"}
	st := plugin.New(plugin.Config{
		KEK:    k,
		Memory: &plugin.MemoryConfig{LocalKEK: true, LocalKEKMaxAge: time.Hour, Grace: time.Hour},
		Clock:  clock.NewFake(time.Unix(0, 0)),
	})
	ctx := context.Background()
	st.Monitor.Refresh(ctx)
	ct, err := st.Sealer.Encrypt(ctx, "k1", []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	counts := func() (wraps, unwraps int) { k.mu.Lock(); defer k.mu.Unlock(); return k.wraps, k.unwrs }
	if _, _, err := st.Sealer.Decrypt(ctx, ct); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Sealer.Encrypt(ctx, "k1", []byte("seed")); err != nil {
		t.Fatal(err)
	}
	wraps, unwraps := counts()

	st.Monitor.Refused(fmt.Errorf("%w: permission denied", dek.ErrDenied))
	st.Monitor.Refresh(ctx) // a check and a round trip: yes again
	afterRefresh, unwrapsAfterRefresh := counts()
	if _, err := st.Sealer.Encrypt(ctx, "k1", []byte("seed")); err != nil {
		t.Fatal(err)
	}
	if w, _ := counts(); w != afterRefresh+1 {
		t.Fatalf("backend wraps %d → %d for an Encrypt after the refusal; want a new local KEK (%d before the refusal)", afterRefresh, w, wraps)
	}
	if _, _, err := st.Sealer.Decrypt(ctx, ct); err != nil {
		t.Fatal(err)
	}
	if _, u := counts(); u != unwrapsAfterRefresh+1 {
		t.Fatalf("backend unwraps %d → %d for a Decrypt after the refusal; want a backend call, the cache having been cleared (%d before it)", unwrapsAfterRefresh, u, unwraps)
	}
}

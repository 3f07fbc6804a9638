package vault

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// TestVaultOutage seals, stops and restarts a file-storage Vault under a running backend:
// healthz says which failure it is, the key id keeps its last good value, and everything
// recovers without restarting the plugin and without losing data.
func TestVaultOutage(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultFile(t)
	v.EnableTransit(t, "transit")
	f := newFixture(t, v)
	k := f.open(t, StaticToken{f.token})
	m := plugin.NewMonitor(k, plugin.MonitorConfig{CheckInterval: time.Hour, ProofInterval: time.Hour, Timeout: 5 * time.Second}, clock.Real{}, testLogger(t))
	ctx := context.Background()
	refresh := func(wantHealthy bool, wantMsg string) {
		t.Helper()
		m.Refresh(ctx)
		id, err := m.State()
		if id == "" {
			t.Fatal("no key id")
		}
		if wantHealthy != (err == nil) || (err != nil && !strings.Contains(err.Error(), wantMsg)) {
			t.Fatalf("state: %v; want healthy=%v, message containing %q", err, wantHealthy, wantMsg)
		}
		if err != nil && !errors.Is(err, dek.ErrUnavailable) {
			t.Fatalf("state: %v; want dek.ErrUnavailable", err)
		}
	}
	refresh(true, "")
	id, _ := m.State()
	s := dek.NewSealer(k)
	ct, err := s.Encrypt(ctx, id, []byte("survives outages"))
	if err != nil {
		t.Fatal(err)
	}
	sameID := func() {
		t.Helper()
		if got, _ := m.State(); got != id || k.CurrentID() != id {
			t.Fatalf("key id %q / %q during the outage; want the last good %q", got, k.CurrentID(), id)
		}
	}

	v.Seal(t)
	refresh(false, "sealed")
	sameID()
	if _, _, err := s.Decrypt(ctx, ct); !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("Decrypt while sealed: %v; want dek.ErrUnavailable", err)
	}
	v.Unseal(t)
	refresh(true, "")
	sameID()

	v.Stop(t)
	refresh(false, "unreachable")
	sameID()
	v.Start(t) // comes back sealed
	refresh(false, "sealed")
	v.Unseal(t)
	refresh(true, "")
	sameID()
	if got, _, err := s.Decrypt(ctx, ct); err != nil || !bytes.Equal(got, []byte("survives outages")) {
		t.Fatalf("Decrypt after the restart: %q, %v", got, err)
	}

	// A rotation while the plugin runs, then a restart: the new version survives too.
	v.RotateKey(t, f.mount, f.key)
	m.Refresh(ctx)
	m.Refresh(ctx)
	id2, _ := m.State()
	if id2 == id || !strings.HasSuffix(id2, ":v2") {
		t.Fatalf("key id after rotation %q", id2)
	}
	ct2, err := s.Encrypt(ctx, id2, []byte("after rotation"))
	if err != nil {
		t.Fatal(err)
	}
	v.Restart(t)
	refresh(true, "")
	if got, _ := m.State(); got != id2 {
		t.Fatalf("key id after restart %q, want %q", got, id2)
	}
	for _, c := range [][]byte{ct, ct2} {
		if _, _, err := s.Decrypt(ctx, c); err != nil {
			t.Fatalf("Decrypt after rotation and restart: %v", err)
		}
	}
}

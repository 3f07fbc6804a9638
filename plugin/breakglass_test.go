package plugin_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/plugin/metrics"
)

// newKEK is a new backend (a new Vault key): it knows its own key id and no other.
type newKEK struct{ countingKEK }

func (k *newKEK) Unwrap(ctx context.Context, keyID string, w []byte) ([]byte, error) {
	if keyID != k.CurrentID() {
		return nil, fmt.Errorf("%w: %s is not a key of this backend", dek.ErrUnknownKey, keyID)
	}
	return k.countingKEK.Unwrap(ctx, keyID, w)
}

// syncBuffer is a log sink the break-glass goroutine and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func scrape(t *testing.T, m *metrics.Metrics) string {
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("never: %s", what)
}

// sealedBeforeTheDisaster makes a recovery key and an envelope ("seed before") sealed to it,
// written under a transit key now lost.
func sealedBeforeTheDisaster(t *testing.T) (*recovery.PrivateKey, []byte) {
	t.Helper()
	priv, err := recovery.Generate(recovery.KEMX25519)
	if err != nil {
		t.Fatal(err)
	}
	old := dek.NewLocalSealer(&countingKEK{id: "vault:lost:v1"}, dek.LocalKEKConfig{Recovery: priv.Public()})
	before, err := old.Encrypt(context.Background(), "vault:lost:v1", []byte("seed before"))
	if err != nil {
		t.Fatal(err)
	}
	return priv, before
}

// Break-glass mode: envelopes sealed to the recovery key (written under a backend key that is
// gone) are read with its private key and no backend call; new writes go to the new backend;
// it says so at ERROR level and in metrics; at its expiry the key is dropped and those reads
// fail, saying why.
func TestBreakGlass(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	priv, before := sealedBeforeTheDisaster(t)

	start := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	clk := clock.NewFake(start)
	var logs syncBuffer
	backend := &newKEK{countingKEK{id: "vault:new:v1"}}
	m := metrics.New("vault", "test")
	st := plugin.New(plugin.Config{
		KEK:      backend,
		Memory:   &plugin.MemoryConfig{LocalKEK: true, LocalKEKMaxAge: time.Hour, Grace: time.Hour},
		Recovery: &plugin.RecoveryConfig{Seal: priv.Public(), BreakGlass: priv, Until: start.Add(2 * time.Hour)},
		Metrics:  m,
		Clock:    clk,
		Log:      slog.New(slog.NewTextHandler(&logs, nil)),
	})
	st.Start(ctx)
	eventually(t, "a BREAK-GLASS error in the log", func() bool {
		return strings.Contains(logs.String(), "level=ERROR msg=\"BREAK-GLASS: serving reads")
	})
	unwraps := backend.unwrapCount()
	got, id, err := st.Sealer.Decrypt(ctx, before)
	if err != nil || string(got) != "seed before" || id != "vault:lost:v1" {
		t.Fatalf("break-glass read: %q, %q, %v", got, id, err)
	}
	if n := backend.unwrapCount(); n != unwraps {
		t.Fatalf("backend unwraps %d → %d: a break-glass read must not reach the backend", unwraps, n)
	}
	after, err := st.Sealer.Encrypt(ctx, "vault:new:v1", []byte("seed after"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := st.Sealer.Decrypt(ctx, after); err != nil || string(got) != "seed after" {
		t.Fatalf("a new write: %q, %v", got, err)
	}
	metricsText := scrape(t, m)
	for _, want := range []string{`kms_plugin_break_glass{backend="vault"} 1`, fmt.Sprintf(`kms_plugin_break_glass_expiry_timestamp_seconds{backend="vault"} %g`, float64(start.Add(2*time.Hour).Unix()))} {
		if !strings.Contains(metricsText, want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
	if on, until := st.BreakGlass(); !on || !until.Equal(start.Add(2*time.Hour)) {
		t.Fatalf("BreakGlass() = %v, %v", on, until)
	}

	clk.Advance(5 * time.Minute) // the periodic reminder
	eventually(t, "a second BREAK-GLASS reminder", func() bool { return strings.Count(logs.String(), "BREAK-GLASS: serving reads") >= 2 })
	for on, _ := st.BreakGlass(); on; on, _ = st.BreakGlass() {
		clk.Advance(5 * time.Minute)
		time.Sleep(time.Millisecond)
	}
	if _, _, err := st.Sealer.Decrypt(ctx, before); err == nil || !strings.Contains(err.Error(), "break-glass mode ended at 2026-12-03T11:00:00Z") {
		t.Fatalf("a break-glass read after the expiry: %v", err)
	}
	if got, _, err := st.Sealer.Decrypt(ctx, after); err != nil || string(got) != "seed after" {
		t.Fatalf("a new write after the expiry: %q, %v", got, err)
	}
	if !strings.Contains(scrape(t, m), `kms_plugin_break_glass{backend="vault"} 0`) || !strings.Contains(logs.String(), "BREAK-GLASS ended") {
		t.Fatalf("the end of break-glass mode is not in the metrics or the log:\n%s", logs.String())
	}
	// The new writes carry a seal of the (here same) recovery public key.
	if seal, ok, err := dek.RecoverySealOf(after); !ok || err != nil || seal.KeyID != priv.ID() {
		t.Fatalf("new write's seal: %v, %v, %v", seal, ok, err)
	}
}

// suspendedClock is a Fake whose wall clock can jump while its timers stand still: a VM
// suspended and resumed (Go's timers run on the monotonic clock, which stops meanwhile).
type suspendedClock struct {
	*clock.Fake
	mu   sync.Mutex
	jump time.Duration
}

func (c *suspendedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Fake.Now().Add(c.jump)
}

func (c *suspendedClock) suspend(d time.Duration) { c.mu.Lock(); c.jump += d; c.mu.Unlock() }

// A VM suspended past --break-glass-until: on resume no timer has fired, yet the first read
// with the recovery key is refused, saying why, and the metric says break-glass mode is off.
func TestBreakGlassEndsByTheWallClock(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	priv, before := sealedBeforeTheDisaster(t)
	start := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	clk := &suspendedClock{Fake: clock.NewFake(start)}
	m := metrics.New("vault", "test")
	st := plugin.New(plugin.Config{
		KEK:      &newKEK{countingKEK{id: "vault:new:v1"}},
		Memory:   &plugin.MemoryConfig{LocalKEK: true, LocalKEKMaxAge: time.Hour, Grace: time.Hour},
		Recovery: &plugin.RecoveryConfig{BreakGlass: priv, Until: start.Add(2 * time.Hour)},
		Metrics:  m,
		Clock:    clk,
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	st.Start(ctx)
	if got, _, err := st.Sealer.Decrypt(ctx, before); err != nil || string(got) != "seed before" {
		t.Fatalf("break-glass read: %q, %v", got, err)
	}
	clk.suspend(3 * time.Hour)
	if _, _, err := st.Sealer.Decrypt(ctx, before); err == nil || !strings.Contains(err.Error(), "break-glass mode ended at 2026-12-03T11:00:00Z") {
		t.Fatalf("a break-glass read after a suspend past the expiry: %v", err)
	}
	if on, _ := st.BreakGlass(); on || !strings.Contains(scrape(t, m), `kms_plugin_break_glass{backend="vault"} 0`) {
		t.Fatalf("break-glass mode still reported on after its expiry")
	}
}

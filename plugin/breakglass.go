package plugin

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// RecoveryConfig is the offline recovery key's part in serving (docs/disaster-recovery.md).
type RecoveryConfig struct {
	// Seal, when set, is the recovery public key every new local KEK is sealed to (envelope
	// format v3). It needs Memory.LocalKEK: only a local KEK is sealed.
	Seal *recovery.PublicKey
	// BreakGlass, when set, opens the envelopes that carry a seal of its key without the
	// backend, until Until; every other Decrypt and every Encrypt go to the backend.
	BreakGlass *recovery.PrivateKey
	Until      time.Time
}

// BreakGlassLogEvery is how often break-glass mode says so in the log, at ERROR level.
const BreakGlassLogEvery = 5 * time.Minute

// breakGlass is break-glass mode: the recovery private key in the Sealer until its expiry.
type breakGlass struct {
	r     *dek.Recovery
	until time.Time
	on    atomic.Bool
	clock clock.Clock
	log   *slog.Logger
}

func newBreakGlass(key *recovery.PrivateKey, until time.Time, clk clock.Clock, log *slog.Logger) *breakGlass {
	// The Recovery checks the expiry on every read by the wall clock; run's timer, on the
	// monotonic clock, only says so in the log and the metrics (late after a VM suspend).
	b := &breakGlass{r: dek.NewRecovery(key).Expire(until, clk, endedWhy(until)), until: until, clock: clk, log: log}
	b.on.Store(true)
	return b
}

// endedWhy is why the recovery key was dropped at until.
func endedWhy(until time.Time) string {
	return "break-glass mode ended at " + until.UTC().Format(time.RFC3339) + " (--break-glass-until)"
}

// State is whether break-glass mode is on, and until when: off once the wall clock reaches
// until, also before run's timer fires.
func (b *breakGlass) State() (on bool, until time.Time) {
	return b.on.Load() && b.clock.Now().Round(0).Before(b.until), b.until
}

// run says loudly that break-glass mode is on, at start and every BreakGlassLogEvery, and ends
// it at its expiry: the private key is dropped, and the envelopes it opened go to the backend
// again (which fails for those it cannot read, saying the key expired).
func (b *breakGlass) run(ctx context.Context) {
	for {
		left := b.until.Sub(b.clock.Now())
		if left <= 0 {
			b.end()
			return
		}
		b.log.Error("BREAK-GLASS: serving reads with the offline recovery private key, bypassing the backend and its audit log; rewrite to the new key (kmsctl rewrite), then restart without --break-glass-recovery-key",
			"recovery_key", b.r.ID().String(), "until", b.until.UTC().Format(time.RFC3339), "left", left.Round(time.Second).String())
		select {
		case <-ctx.Done():
			return
		case <-b.clock.After(min(left, BreakGlassLogEvery)):
		}
	}
}

func (b *breakGlass) end() {
	if !b.on.Swap(false) {
		return
	}
	b.r.Drop(endedWhy(b.until))
	b.log.Error("BREAK-GLASS ended: the recovery private key is dropped; envelopes that only it could open now fail. Remove --break-glass-recovery-key and the key file from this node",
		"recovery_key", b.r.ID().String(), "until", b.until.UTC().Format(time.RFC3339))
}

package metrics

import (
	"context"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
)

// KEK is a dek.KEK with every Wrap, Unwrap and Check counted and timed. It hides the wrapped
// KEK's other methods (Reload, TokenTTL): use that KEK itself for those.
//
// In serve it sits between the limiter and the backend (plugin/limit's KEK wraps this one),
// so it times the backend alone, not the wait for a slot; the Monitor calls it directly.
type KEK struct {
	dek.KEK
	m *Metrics
}

// NewKEK returns kek measured by m.
func NewKEK(kek dek.KEK, m *Metrics) *KEK {
	for _, op := range []string{"wrap", "unwrap", "check"} {
		m.backendDuration.WithLabelValues(op) // present from the start, so rate() works at once
		m.backendCalls.WithLabelValues(op, "ok")
	}
	return &KEK{KEK: kek, m: m}
}

func (k *KEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	start := time.Now()
	out, err := k.KEK.Wrap(ctx, keyID, plain)
	k.m.backendCall(ctx, "wrap", start, err)
	return out, err
}

func (k *KEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	start := time.Now()
	out, err := k.KEK.Unwrap(ctx, keyID, wrapped)
	k.m.backendCall(ctx, "unwrap", start, err)
	return out, err
}

func (k *KEK) Check(ctx context.Context) error {
	start := time.Now()
	err := k.KEK.Check(ctx)
	k.m.backendCall(ctx, "check", start, err)
	return err
}

func (m *Metrics) backendCall(ctx context.Context, op string, start time.Time, err error) {
	m.backendDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	m.backendCalls.WithLabelValues(op, result(ctx, err)).Inc()
}

// result names the kind of a backend failure from dek.Classify's fixed set, never the
// error's text, so the label stays bounded. ctx is the call's own (with --timeout).
func result(ctx context.Context, err error) string { return dek.Classify(ctx, err).Label }

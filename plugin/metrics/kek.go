package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
)

// KEK returns kek with every Wrap, Unwrap and Check counted and timed. The result hides kek's
// other methods (Reload, TokenTTL): use kek itself for those.
func (m *Metrics) KEK(kek dek.KEK) dek.KEK {
	for _, op := range []string{"wrap", "unwrap", "check"} {
		m.backendDuration.WithLabelValues(op) // present from the start, so rate() works at once
		m.backendCalls.WithLabelValues(op, "ok")
	}
	return &instrumentedKEK{KEK: kek, m: m}
}

type instrumentedKEK struct {
	dek.KEK
	m *Metrics
}

func (k *instrumentedKEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	start := time.Now()
	out, err := k.KEK.Wrap(ctx, keyID, plain)
	k.m.backendCall(ctx, "wrap", start, err)
	return out, err
}

func (k *instrumentedKEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	start := time.Now()
	out, err := k.KEK.Unwrap(ctx, keyID, wrapped)
	k.m.backendCall(ctx, "unwrap", start, err)
	return out, err
}

func (k *instrumentedKEK) Check(ctx context.Context) error {
	start := time.Now()
	err := k.KEK.Check(ctx)
	k.m.backendCall(ctx, "check", start, err)
	return err
}

func (m *Metrics) backendCall(ctx context.Context, op string, start time.Time, err error) {
	m.backendDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	m.backendCalls.WithLabelValues(op, result(ctx, err)).Inc()
}

// result names the kind of a backend failure from a fixed set, never the error's text, so the
// label stays bounded.
func result(ctx context.Context, err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, dek.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, dek.ErrDenied):
		return "denied"
	case errors.Is(err, dek.ErrUnknownKey):
		return "unknown_key"
	case errors.Is(err, dek.ErrMalformed), errors.Is(err, dek.ErrTampered):
		return "invalid"
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		return "canceled"
	}
	return "error"
}

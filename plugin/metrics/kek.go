package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsplugin/kms-plugin/dek"
)

// KEK is a dek.KEK with every Wrap, Unwrap and Check counted and timed. It hides the wrapped
// KEK's other methods (Reload, TokenTTL): use that KEK itself for those.
//
// In serve it sits between the limiter and the backend (plugin/limit's KEK wraps this one),
// so it times the backend alone, not the wait for a slot; the Monitor calls it directly.
type KEK struct {
	dek.KEK
	m                   *Metrics
	wrap, unwrap, check opMetrics
}

// opMetrics are one operation's series, looked up once: a label lookup hashes the labels on
// every call.
type opMetrics struct {
	name     string
	duration prometheus.Observer
	ok       prometheus.Counter
}

// NewKEK returns kek measured by m.
func NewKEK(kek dek.KEK, m *Metrics) *KEK {
	// Present from the start, so that rate() works at once.
	op := func(name string) opMetrics {
		return opMetrics{name: name, duration: m.backendDuration.WithLabelValues(name), ok: m.backendCalls.WithLabelValues(name, "ok")}
	}
	return &KEK{KEK: kek, m: m, wrap: op("wrap"), unwrap: op("unwrap"), check: op("check")}
}

func (k *KEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	start := time.Now()
	out, err := k.KEK.Wrap(ctx, keyID, plain)
	k.finished(ctx, k.wrap, start, err)
	return out, err
}

func (k *KEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	start := time.Now()
	out, err := k.KEK.Unwrap(ctx, keyID, wrapped)
	k.finished(ctx, k.unwrap, start, err)
	return out, err
}

func (k *KEK) Check(ctx context.Context) error {
	start := time.Now()
	err := k.KEK.Check(ctx)
	k.finished(ctx, k.check, start, err)
	return err
}

func (k *KEK) finished(ctx context.Context, op opMetrics, start time.Time, err error) {
	op.duration.Observe(time.Since(start).Seconds())
	if err == nil {
		op.ok.Inc()
		return
	}
	k.m.backendCalls.WithLabelValues(op.name, result(ctx, err)).Inc()
}

// result names the kind of a backend failure from dek.Classify's fixed set, never the
// error's text, so the label stays bounded. ctx is the call's own (with --timeout).
func result(ctx context.Context, err error) string { return dek.Classify(ctx, err).Label }

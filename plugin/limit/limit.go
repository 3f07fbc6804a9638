// Package limit bounds backend calls (wraps and unwraps) in number, so that a burst of
// requests cannot pile unbounded work onto Vault or the process, and in time (Timeout).
//
// Calls beyond the bound wait in a small queue rather than being refused at once: after a
// restart, kube-apiserver fills its watch cache with a burst of Decrypts of the same few DEK
// seeds, and these are cheap to serve a moment later but costly to fail (the apiserver retries
// them, and reads fail meanwhile). A waiting call gives up when its context ends: the caller's
// deadline, or --timeout. Only when the queue itself is full is a call refused at once.
//
// In the serving stack (plugin.New orders it) the limiter sits above metrics.KEK,
// so the backend's latency metrics do not include the wait for a slot. The plugin's Monitor
// calls metrics.KEK directly: its health checks are never queued behind traffic.
package limit

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
)

// KEK is a dek.KEK whose Wrap and Unwrap calls are bounded. Check and CurrentID are not:
// the health Monitor must see the backend even while traffic saturates it.
type KEK struct {
	dek.KEK
	slots      chan struct{} // one token per call in progress
	waiting    atomic.Int64
	maxWaiting int64
}

// New bounds kek to maxInProgress concurrent calls (at least 1) with at most maxWaiting more
// waiting for a free slot (0: refuse at once when all slots are taken).
func New(kek dek.KEK, maxInProgress, maxWaiting int) *KEK {
	return &KEK{KEK: kek, slots: make(chan struct{}, max(maxInProgress, 1)), maxWaiting: int64(max(maxWaiting, 0))}
}

// InProgress is the number of calls the backend is serving now.
func (l *KEK) InProgress() int { return len(l.slots) }

// Waiting is the number of calls queued for a free slot.
func (l *KEK) Waiting() int { return int(l.waiting.Load()) }

// Wrap wraps dek when a slot is free, after waiting for one if need be.
func (l *KEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	if err := l.acquire(ctx); err != nil {
		return nil, err
	}
	defer l.release()
	return l.KEK.Wrap(ctx, keyID, plain)
}

// Unwrap unwraps when a slot is free, after waiting for one if need be.
func (l *KEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	if err := l.acquire(ctx); err != nil {
		return nil, err
	}
	defer l.release()
	return l.KEK.Unwrap(ctx, keyID, wrapped)
}

func (l *KEK) acquire(ctx context.Context) error {
	select {
	case l.slots <- struct{}{}:
		return nil
	default:
	}
	if l.waiting.Add(1) > l.maxWaiting {
		l.waiting.Add(-1)
		return fmt.Errorf("%w: %d in progress and %d waiting, the limits", dek.ErrOverloaded, cap(l.slots), l.maxWaiting)
	}
	defer l.waiting.Add(-1)
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: no free slot among %d before the deadline", dek.ErrOverloaded, cap(l.slots))
	}
}

func (l *KEK) release() { <-l.slots }

// Timeout returns kek with each Wrap and Unwrap bounded by d (--timeout), within the caller's
// own deadline. Put it above New's KEK, so that the wait for a slot counts too. Only a backend
// that waits on another process (Vault) needs it: AES in memory ends on its own, and a timer
// per request costs that path about 5 % of its CPU.
func Timeout(kek dek.KEK, d time.Duration) dek.KEK { return timeoutKEK{KEK: kek, d: d} }

type timeoutKEK struct {
	dek.KEK
	d time.Duration
}

func (t timeoutKEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, t.d)
	defer cancel()
	return t.KEK.Wrap(ctx, keyID, plain)
}

func (t timeoutKEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, t.d)
	defer cancel()
	return t.KEK.Unwrap(ctx, keyID, wrapped)
}

package dek

import (
	"context"
	"sync"
)

// Flights shares one call among concurrent callers that ask for the same key: during a backend
// outage, or a restarted apiserver's burst of identical Decrypts, they wait for one answer
// instead of each calling the backend. A caller that joined a call whose own caller gave up
// (its context ended: Abandoned) is not failed by that: it makes the call itself, within its
// own deadline. The zero value is ready to use.
type Flights[K comparable, V any] struct {
	mu      sync.Mutex
	pending map[K]*flight[V]
}

type flight[V any] struct {
	done chan struct{}
	v    V
	err  error
}

// Do returns call's result for key, making the call unless one for key is under way, in which
// case it waits for that one (or for ctx to end: ctx's error). joined reports that the result
// is another caller's, shared: the caller must not change it.
func (f *Flights[K, V]) Do(ctx context.Context, key K, call func() (V, error)) (v V, err error, joined bool) {
	for {
		f.mu.Lock()
		fl, joined := f.pending[key]
		if !joined {
			fl = &flight[V]{done: make(chan struct{})}
			if f.pending == nil {
				f.pending = map[K]*flight[V]{}
			}
			f.pending[key] = fl
		}
		f.mu.Unlock()
		if !joined {
			fl.v, fl.err = call()
			f.mu.Lock()
			delete(f.pending, key)
			f.mu.Unlock()
			close(fl.done)
			return fl.v, fl.err, false
		}
		select {
		case <-fl.done:
		case <-ctx.Done():
			var zero V
			return zero, ctx.Err(), true
		}
		if fl.err != nil && Abandoned(fl.err) && ctx.Err() == nil {
			continue // the call this one joined ended with its own caller's context: no answer for us
		}
		return fl.v, fl.err, true
	}
}

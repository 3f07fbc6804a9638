package limit_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/plugin/limit"
)

// gateKEK blocks every Wrap until released, and says when one has started.
type gateKEK struct {
	started chan struct{}
	release chan struct{}
}

func (g *gateKEK) CurrentID() string           { return "k" }
func (g *gateKEK) Check(context.Context) error { return nil }
func (g *gateKEK) Wrap(ctx context.Context, _ string, d []byte) ([]byte, error) {
	g.started <- struct{}{}
	<-g.release
	return d, nil
}
func (g *gateKEK) Unwrap(ctx context.Context, id string, w []byte) ([]byte, error) {
	return g.Wrap(ctx, id, w)
}

func TestLimitQueuesThenRefuses(t *testing.T) {
	g := &gateKEK{started: make(chan struct{}, 10), release: make(chan struct{})}
	l := limit.New(g, 2, 1)
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make(chan error, 3)
	call := func() {
		defer wg.Done()
		_, err := l.Wrap(ctx, "k", []byte("x"))
		errs <- err
	}
	wg.Add(2)
	go call()
	go call()
	<-g.started
	<-g.started
	if l.InProgress() != 2 {
		t.Fatalf("in progress %d", l.InProgress())
	}
	// The third waits in the queue...
	wg.Add(1)
	go call()
	for l.Waiting() != 1 {
		waitABit()
	}
	// ...and a fourth finds the queue full: refused at once, nothing reached the backend.
	if _, err := l.Unwrap(ctx, "k", []byte("x")); !errors.Is(err, dek.ErrOverloaded) {
		t.Fatalf("fourth call: %v, want ErrOverloaded", err)
	}
	// Freeing a slot lets the waiting call through.
	g.release <- struct{}{}
	<-g.started
	if l.Waiting() != 0 {
		t.Fatalf("waiting %d", l.Waiting())
	}
	g.release <- struct{}{}
	g.release <- struct{}{}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if l.InProgress() != 0 || l.Waiting() != 0 {
		t.Fatalf("left %d in progress, %d waiting", l.InProgress(), l.Waiting())
	}
}

// A queued call gives up with ErrOverloaded when its context ends.
func TestLimitWaitEndsWithTheContext(t *testing.T) {
	g := &gateKEK{started: make(chan struct{}, 10), release: make(chan struct{})}
	l := limit.New(g, 1, 4)
	done := make(chan struct{})
	go func() { l.Wrap(context.Background(), "k", nil); close(done) }()
	<-g.started

	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() { _, err := l.Wrap(ctx, "k", nil); got <- err }()
	for l.Waiting() != 1 {
		waitABit()
	}
	cancel()
	if err := <-got; !errors.Is(err, dek.ErrOverloaded) {
		t.Fatalf("err = %v, want ErrOverloaded", err)
	}
	if l.Waiting() != 0 {
		t.Fatalf("waiting %d after the context ended", l.Waiting())
	}
	g.release <- struct{}{}
	<-done
}

// Zero waiting means refuse at once.
func TestLimitWithoutQueue(t *testing.T) {
	g := &gateKEK{started: make(chan struct{}, 10), release: make(chan struct{})}
	l := limit.New(g, 1, 0)
	done := make(chan struct{})
	go func() { l.Wrap(context.Background(), "k", nil); close(done) }()
	<-g.started
	if _, err := l.Wrap(context.Background(), "k", nil); !errors.Is(err, dek.ErrOverloaded) {
		t.Fatalf("err = %v", err)
	}
	g.release <- struct{}{}
	<-done
}

// waitABit lets the other goroutines run while a test waits for them to reach a state.
func waitABit() { runtime.Gosched() }

// ctxKEK blocks every call until its context ends, and returns the context's error.
type ctxKEK struct{ gateKEK }

func (ctxKEK) Wrap(ctx context.Context, _ string, _ []byte) ([]byte, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (k ctxKEK) Unwrap(ctx context.Context, id string, w []byte) ([]byte, error) {
	return k.Wrap(ctx, id, w)
}

// Timeout ends a call that hangs, and a wait for a slot, within its duration, while the
// caller's own context is still live; a shorter caller deadline still wins.
func TestTimeoutBoundsCallsAndWaits(t *testing.T) {
	hanging := limit.Timeout(&ctxKEK{}, 50*time.Millisecond)
	if _, err := hanging.Unwrap(context.Background(), "k", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging unwrap: %v", err)
	}

	g := &gateKEK{started: make(chan struct{}, 10), release: make(chan struct{})}
	l := limit.New(g, 1, 4)
	done := make(chan struct{})
	go func() { l.Wrap(context.Background(), "k", nil); close(done) }()
	<-g.started
	if _, err := limit.Timeout(l, 50*time.Millisecond).Wrap(context.Background(), "k", nil); !errors.Is(err, dek.ErrOverloaded) {
		t.Fatalf("wait for a slot: %v, want ErrOverloaded", err)
	}
	g.release <- struct{}{}
	<-done

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := limit.Timeout(&ctxKEK{}, time.Hour).Wrap(ctx, "k", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: %v", err)
	}
}

package cache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/cache"
	"github.com/kmsplugin/kms-plugin/dek/kektest"
)

// countingKEK "wraps" by prefixing the key id, and counts the calls that reach it.
type countingKEK struct {
	unwraps, wraps atomic.Int64
	delay          time.Duration
	err            error
}

func (k *countingKEK) CurrentID() string           { return "k1" }
func (k *countingKEK) Check(context.Context) error { return nil }
func (k *countingKEK) Wrap(_ context.Context, id string, d []byte) ([]byte, error) {
	k.wraps.Add(1)
	return append([]byte(id+"/"), d...), nil
}
func (k *countingKEK) Unwrap(_ context.Context, id string, w []byte) ([]byte, error) {
	k.unwraps.Add(1)
	time.Sleep(k.delay)
	if k.err != nil {
		return nil, k.err
	}
	d, ok := bytes.CutPrefix(w, []byte(id+"/"))
	if !ok {
		return nil, dek.ErrTampered
	}
	return bytes.Clone(d), nil
}

type gate struct{ closed atomic.Bool }

func (g *gate) FromMemory() error {
	if g.closed.Load() {
		return errors.New("closed")
	}
	return nil
}

func TestWrapFillsAndUnwrapHits(t *testing.T) {
	inner, g := &countingKEK{}, &gate{}
	c := cache.New(inner, g, 10)
	ctx := context.Background()
	w, err := c.Wrap(ctx, "k1", []byte("dek-one"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Unwrap(ctx, "k1", w)
	if err != nil || string(got) != "dek-one" || inner.unwraps.Load() != 0 {
		t.Fatalf("Unwrap after Wrap: %q, %v, %d backend unwraps", got, err, inner.unwraps.Load())
	}
	clear(got) // the caller clears its copy; the cache keeps its own
	if again, _ := c.Unwrap(ctx, "k1", w); string(again) != "dek-one" {
		t.Fatalf("after the caller cleared its copy: %q", again)
	}
	// The same wrapped bytes under another key id are another entry.
	if _, err := c.Unwrap(ctx, "k2", w); !errors.Is(err, dek.ErrTampered) {
		t.Fatalf("other key id: %v", err)
	}
	// A closed gate sends every Unwrap to the backend.
	g.closed.Store(true)
	before := inner.unwraps.Load()
	if got, err := c.Unwrap(ctx, "k1", w); err != nil || string(got) != "dek-one" || inner.unwraps.Load() != before+1 {
		t.Fatalf("closed gate: %q, %v, backend unwraps %d", got, err, inner.unwraps.Load()-before)
	}
	if s := c.Stats(); s.Hits != 2 || s.Entries != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestConcurrentIdenticalMissesMakeOneBackendCall(t *testing.T) {
	inner := &countingKEK{delay: 50 * time.Millisecond}
	c := cache.New(inner, &gate{}, 10)
	w := []byte("k1/seed")
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := c.Unwrap(context.Background(), "k1", w); err != nil || string(got) != "seed" {
				t.Errorf("%q, %v", got, err)
			}
		}()
	}
	wg.Wait()
	if n := inner.unwraps.Load(); n != 1 {
		t.Fatalf("%d backend unwraps for 64 identical concurrent misses, want 1", n)
	}
}

func TestBoundedAndPurged(t *testing.T) {
	inner := &countingKEK{}
	c := cache.New(inner, &gate{}, 3)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		if _, err := c.Unwrap(ctx, "k1", []byte(fmt.Sprintf("k1/dek%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if s := c.Stats(); s.Entries != 3 || s.Evictions != 2 {
		t.Fatalf("stats %+v, want 3 entries and 2 evictions", s)
	}
	c.Unwrap(ctx, "k1", []byte("k1/dek0")) // evicted: the backend again
	if n := inner.unwraps.Load(); n != 6 {
		t.Fatalf("backend unwraps %d, want 6", n)
	}
	c.Unwrap(ctx, "k2", []byte("k2/other"))
	// What the backend no longer accepts is dropped; nil drops everything.
	if n := c.Purge(func(id string) error {
		if id == "k1" {
			return errors.New("retired")
		}
		return nil
	}); n != 2 {
		t.Fatalf("purged %d, want the 2 k1 entries left", n)
	}
	if n := c.Purge(nil); n != 1 || c.Stats().Entries != 0 {
		t.Fatalf("purge all: %d, stats %+v", n, c.Stats())
	}
}

// A failed backend unwrap is not remembered.
func TestFailuresAreNotCached(t *testing.T) {
	inner := &countingKEK{err: fmt.Errorf("%w: sealed", dek.ErrUnavailable)}
	c := cache.New(inner, &gate{}, 10)
	for i := 0; i < 2; i++ {
		if _, err := c.Unwrap(context.Background(), "k1", []byte("k1/x")); !errors.Is(err, dek.ErrUnavailable) {
			t.Fatal(err)
		}
	}
	if inner.unwraps.Load() != 2 || c.Stats().Entries != 0 {
		t.Fatalf("unwraps %d, stats %+v", inner.unwraps.Load(), c.Stats())
	}
}

// The cache in front of a backend is still a dek.KEK that meets the contract.
func TestContract(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.yaml")
	if _, err := localaes.AddKey(path, "first", true); err != nil {
		t.Fatal(err)
	}
	b, err := localaes.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	kektest.Run(t, kektest.Backend{KEK: cache.New(b, &gate{}, 100), Rotate: func(t *testing.T) {
		if _, err := localaes.AddKey(path, "second", true); err != nil {
			t.Fatal(err)
		}
		if err := b.Reload(); err != nil {
			t.Fatal(err)
		}
	}})
}

// blockingKEK's Unwrap waits for release or for its caller's context to end.
type blockingKEK struct {
	countingKEK
	release chan struct{}
}

func (k *blockingKEK) Unwrap(ctx context.Context, id string, w []byte) ([]byte, error) {
	k.unwraps.Add(1)
	select {
	case <-k.release:
		return k.countingKEK.Unwrap(ctx, id, w)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// A request that shares another's backend call is not failed by that caller giving up: it
// makes the call itself, within its own deadline.
func TestAWaiterOutlivesTheCallerItJoined(t *testing.T) {
	inner := &blockingKEK{release: make(chan struct{})}
	c := cache.New(inner, &gate{}, 10)
	w := []byte("k1/seed")

	first, giveUp := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() { _, err := c.Unwrap(first, "k1", w); firstErr <- err }()
	for inner.unwraps.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	type result struct {
		d   []byte
		err error
	}
	second := make(chan result, 1)
	go func() { d, err := c.Unwrap(context.Background(), "k1", w); second <- result{d, err} }()
	for c.Stats().Misses != 2 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond) // the second request waits on the first's call
	giveUp()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that gave up: %v", err)
	}
	// The waiter now makes its own call, which answers once released.
	for inner.unwraps.Load() != 2 {
		select {
		case r := <-second:
			t.Fatalf("the waiter returned without a call of its own: %q, %v", r.d, r.err)
		case <-time.After(time.Millisecond):
		}
	}
	close(inner.release)
	if r := <-second; r.err != nil || string(r.d) != "seed" {
		t.Fatalf("the waiter: %q, %v; want its own call's answer", r.d, r.err)
	}
}

// An answer to a backend call that began before a Purge is not kept: the purge may have been
// for the very key it used (a refusal), and it must not be served once the gate opens again.
func TestAnswersBegunBeforeAPurgeAreNotKept(t *testing.T) {
	inner := &blockingKEK{release: make(chan struct{})}
	c := cache.New(inner, &gate{}, 10)
	w := []byte("k1/seed")
	done := make(chan error, 1)
	go func() { _, err := c.Unwrap(context.Background(), "k1", w); done <- err }()
	for inner.unwraps.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	c.Purge(nil) // the backend refused meanwhile
	close(inner.release)
	if err := <-done; err != nil {
		t.Fatalf("the call itself: %v", err) // its own caller gets the backend's answer
	}
	if n := c.Stats().Entries; n != 0 {
		t.Fatalf("%d entries after a purge that came during the call; want 0", n)
	}
	if _, err := c.Unwrap(context.Background(), "k1", w); err != nil || c.Stats().Hits != 0 {
		t.Fatalf("the next Unwrap: %v, %+v; want a miss", err, c.Stats())
	}
	// Without a purge in between, the answer is kept as before.
	if _, err := c.Unwrap(context.Background(), "k1", w); err != nil || c.Stats().Hits != 1 {
		t.Fatalf("the one after: %v, %+v; want a hit", err, c.Stats())
	}
}

// Entries exports the most recently used first; Restore into a fresh cache (a restarted
// plugin) answers those Unwraps with no backend call, keeps the newer entries it already
// holds in front, and stays within its bound.
func TestEntriesAndRestore(t *testing.T) {
	ctx := context.Background()
	k := &countingKEK{}
	c := cache.New(k, &gate{}, 10)
	var wrapped [][]byte
	for i := range 5 {
		w, err := c.Wrap(ctx, "k1", bytes.Repeat([]byte{byte(i)}, 32))
		if err != nil {
			t.Fatal(err)
		}
		wrapped = append(wrapped, w)
	}
	if _, err := c.Unwrap(ctx, "k1", wrapped[0]); err != nil { // the most recently used now
		t.Fatal(err)
	}
	entries := c.Entries(3)
	if len(entries) != 3 || !bytes.Equal(entries[0].Wrapped, wrapped[0]) || !bytes.Equal(entries[1].Wrapped, wrapped[4]) || entries[0].Key[0] != 0 {
		t.Fatalf("Entries(3) = %+v; want entries 0, 4, 3", entries)
	}

	restarted := &countingKEK{}
	fresh := cache.New(restarted, &gate{}, 3)
	newer, _ := fresh.Wrap(ctx, "k1", bytes.Repeat([]byte{9}, 32))
	if n := fresh.Restore(entries); n != 2 {
		t.Fatalf("Restore added %d entries; want 2 (the bound is 3, one newer entry is held)", n)
	}
	for _, w := range [][]byte{newer, wrapped[0], wrapped[4]} {
		if _, err := fresh.Unwrap(ctx, "k1", w); err != nil {
			t.Fatal(err)
		}
	}
	if n := restarted.unwraps.Load(); n != 0 {
		t.Fatalf("%d backend unwraps for restored entries; want none", n)
	}
	if fresh.Stats().Entries != 3 {
		t.Fatalf("%d entries; want the bound, 3", fresh.Stats().Entries)
	}
}

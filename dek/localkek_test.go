package dek_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

func (k *memKEK) wrapCount() int { k.mu.Lock(); defer k.mu.Unlock(); return k.wraps }

func (k *memKEK) setErr(err error) { k.mu.Lock(); k.err = err; k.mu.Unlock() }

// Local KEK mode: one backend wrap for many Encrypts; every envelope reads back with any
// Sealer over the same backend (another node's, or one with the mode turned off), and every
// v1 envelope still reads in local mode.
func TestLocalKEKRoundTripAndOneBackendCall(t *testing.T) {
	kek := newMemKEK(t, "k1")
	ctx := context.Background()
	local := dek.NewLocalSealer(kek, dek.LocalKEKConfig{})
	plain := dek.NewSealer(kek)
	var cts [][]byte
	for i := 0; i < 10000; i++ {
		ct, err := local.Encrypt(ctx, "k1", []byte(fmt.Sprint("seed ", i)))
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, ct)
	}
	if n := kek.wrapCount(); n != 1 {
		t.Fatalf("%d backend wraps for 10,000 Encrypts, want 1", n)
	}
	otherNode := dek.NewLocalSealer(kek, dek.LocalKEKConfig{})
	for i, ct := range cts {
		for name, s := range map[string]*dek.Sealer{"local": local, "another node": otherNode, "mode off": plain} {
			got, id, err := s.Decrypt(ctx, ct)
			if err != nil || id != "k1" || string(got) != fmt.Sprint("seed ", i) {
				t.Fatalf("%s: envelope %d: %q, %q, %v", name, i, got, id, err)
			}
		}
	}
	v1, err := plain.Encrypt(ctx, "k1", []byte("old"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := local.Decrypt(ctx, v1); err != nil || string(got) != "old" {
		t.Fatalf("a v1 envelope in local mode: %q, %v", got, err)
	}
}

// Every byte of a v2 envelope is authenticated.
func TestLocalKEKTamperedBytesFail(t *testing.T) {
	kek := newMemKEK(t, "k1")
	s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{})
	ct, err := s.Encrypt(context.Background(), "k1", []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range ct {
		bad := bytes.Clone(ct)
		bad[i] ^= 0x01
		if got, _, err := s.Decrypt(context.Background(), bad); err == nil {
			t.Fatalf("byte %d changed: decrypted to %q", i, got)
		} else if !errors.Is(err, dek.ErrTampered) && !errors.Is(err, dek.ErrMalformed) && !errors.Is(err, dek.ErrUnknownKey) {
			t.Fatalf("byte %d changed: %v", i, err)
		}
	}
}

// A local KEK rotates on a new backend key, by age and by use count; a rotation due while the
// backend is unreachable is postponed within the grace, and memory past the grace is not used.
func TestLocalKEKRotation(t *testing.T) {
	kek := newMemKEK(t, "k1", "k2")
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	var fromMemory error
	var generated []string
	s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{MaxAge: time.Hour, MaxUses: 100, Clock: clk,
		FromMemory: func() error { return fromMemory }, Generated: func(id string) { generated = append(generated, id) }})
	ctx := context.Background()
	encrypt := func(id string) error {
		_, err := s.Encrypt(ctx, id, []byte("seed"))
		return err
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(encrypt("k1"))
	must(encrypt("k1"))
	if kek.wrapCount() != 1 {
		t.Fatalf("wraps %d, want 1", kek.wrapCount())
	}
	must(encrypt("k2")) // a new backend key
	if kek.wrapCount() != 2 {
		t.Fatalf("new key id: wraps %d, want 2", kek.wrapCount())
	}
	clk.Advance(time.Hour) // too old
	must(encrypt("k2"))
	if kek.wrapCount() != 3 {
		t.Fatalf("after MaxAge: wraps %d, want 3", kek.wrapCount())
	}
	for i := 0; i < 100; i++ { // 1 use so far, 99 more, then one over
		must(encrypt("k2"))
	}
	if kek.wrapCount() != 4 {
		t.Fatalf("after MaxUses: wraps %d, want 4", kek.wrapCount())
	}
	// Unreachable backend, rotation due: the current local KEK keeps wrapping.
	clk.Advance(time.Hour)
	kek.setErr(fmt.Errorf("%w: connection refused", dek.ErrUnavailable))
	must(encrypt("k2"))
	// Past the grace: memory is not used, and the backend cannot make a new one.
	fromMemory = errors.New("past the grace")
	if err := encrypt("k2"); !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("past the grace: %v, want ErrUnavailable", err)
	}
	// A backend that refuses (revoked token) ends the use of memory at once.
	kek.setErr(fmt.Errorf("%w: permission denied", dek.ErrDenied))
	fromMemory = errors.New("the backend refuses")
	if err := encrypt("k2"); !errors.Is(err, dek.ErrDenied) {
		t.Fatalf("refused: %v, want ErrDenied", err)
	}
	if len(generated) != 4 {
		t.Fatalf("Generated called %d times, want 4", len(generated))
	}
}

// slowFailingKEK fails every Wrap as unreachable, after a delay, counting the calls.
type slowFailingKEK struct {
	*memKEK
	calls atomic.Int64
}

func (k *slowFailingKEK) Wrap(ctx context.Context, id string, d []byte) ([]byte, error) {
	k.calls.Add(1)
	time.Sleep(50 * time.Millisecond)
	return nil, fmt.Errorf("%w: connection refused", dek.ErrUnavailable)
}

// Encrypts that need a new local KEK share one attempt: during an outage they do not queue up
// to try the backend one after another, each for its whole timeout.
func TestLocalKEKGenerationIsShared(t *testing.T) {
	kek := &slowFailingKEK{memKEK: newMemKEK(t, "k1")}
	s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{})
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Encrypt(context.Background(), "k1", []byte("seed")); !errors.Is(err, dek.ErrUnavailable) {
				t.Errorf("Encrypt with the backend down and no local KEK: %v", err)
			}
		}()
	}
	wg.Wait()
	if n := kek.calls.Load(); n > 5 {
		t.Fatalf("%d backend wraps for 50 concurrent Encrypts needing one local KEK", n)
	}
}

// A rotation postponed by an outage is not tried again at every Encrypt.
func TestLocalKEKPostponedRotationIsNotRetriedAtOnce(t *testing.T) {
	kek := newMemKEK(t, "k1")
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{MaxAge: time.Hour, Clock: clk})
	ctx := context.Background()
	if _, err := s.Encrypt(ctx, "k1", []byte("seed")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)
	kek.setErr(fmt.Errorf("%w: connection refused", dek.ErrUnavailable))
	for range 10 {
		if _, err := s.Encrypt(ctx, "k1", []byte("seed")); err != nil {
			t.Fatal(err)
		}
	}
	if n := kek.wrapCount(); n != 2 {
		t.Fatalf("%d backend wraps: want the first and one postponed rotation, not one per Encrypt", n)
	}
	clk.Advance(time.Minute) // the postponement is over: try again
	s.Encrypt(ctx, "k1", []byte("seed"))
	if n := kek.wrapCount(); n != 3 {
		t.Fatalf("after the postponement: %d backend wraps, want 3", n)
	}
}

// blockingKEK's Wrap waits for release or for its caller's context to end, counting calls.
type blockingKEK struct {
	*memKEK
	calls   atomic.Int64
	release chan struct{}
}

func (k *blockingKEK) Wrap(ctx context.Context, id string, d []byte) ([]byte, error) {
	k.calls.Add(1)
	select {
	case <-k.release:
		return k.memKEK.Wrap(ctx, id, d)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// An Encrypt waiting for another's local KEK generation is not failed by that caller giving
// up: it generates one itself, within its own deadline.
func TestLocalKEKWaiterOutlivesTheCallerItJoined(t *testing.T) {
	kek := &blockingKEK{memKEK: newMemKEK(t, "k1"), release: make(chan struct{})}
	s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{})
	first, giveUp := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() { _, err := s.Encrypt(first, "k1", []byte("seed")); firstErr <- err }()
	for kek.calls.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() { _, err := s.Encrypt(context.Background(), "k1", []byte("seed")); second <- err }()
	time.Sleep(20 * time.Millisecond) // the second Encrypt waits for the first's generation
	giveUp()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that gave up: %v", err)
	}
	for kek.calls.Load() != 2 {
		select {
		case err := <-second:
			t.Fatalf("the waiter returned without a generation of its own: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	close(kek.release)
	if err := <-second; err != nil {
		t.Fatalf("the waiter: %v", err)
	}
}

// DropLocalKEK drops the local KEK when its key id is no longer accepted (or always, with nil),
// and a generation under way when it is called is discarded: its backend answer predates the
// refusal or key change that made serve drop it.
func TestLocalKEKDrop(t *testing.T) {
	kek := newMemKEK(t, "k1")
	s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{})
	ctx := context.Background()
	if _, err := s.Encrypt(ctx, "k1", []byte("seed")); err != nil {
		t.Fatal(err)
	}
	accept := func(string) error { return nil }
	if s.DropLocalKEK(accept) {
		t.Fatal("dropped a local KEK whose key id is accepted")
	}
	if _, err := s.Encrypt(ctx, "k1", []byte("seed")); err != nil || kek.wrapCount() != 1 {
		t.Fatalf("Encrypt after a kept local KEK: %v, %d backend wraps; want 1", err, kek.wrapCount())
	}
	if !s.DropLocalKEK(func(string) error { return errors.New("key recreated") }) {
		t.Fatal("kept a local KEK whose key id is refused")
	}
	if _, err := s.Encrypt(ctx, "k1", []byte("seed")); err != nil || kek.wrapCount() != 2 {
		t.Fatalf("Encrypt after the drop: %v, %d backend wraps; want a new local KEK (2)", err, kek.wrapCount())
	}
	if dek.NewSealer(kek).DropLocalKEK(nil) {
		t.Fatal("a Sealer not in local KEK mode dropped something")
	}
}

func TestLocalKEKGenerationBegunBeforeADropIsDiscarded(t *testing.T) {
	kek := &blockingKEK{memKEK: newMemKEK(t, "k1"), release: make(chan struct{})}
	s := dek.NewLocalSealer(kek, dek.LocalKEKConfig{})
	done := make(chan error, 1)
	go func() { _, err := s.Encrypt(context.Background(), "k1", []byte("seed")); done <- err }()
	for kek.calls.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	s.DropLocalKEK(nil) // the backend refused while it wrapped the new local KEK
	close(kek.release)
	if err := <-done; !errors.Is(err, dek.ErrUnavailable) {
		t.Fatalf("Encrypt whose local KEK was dropped while being made: %v; want ErrUnavailable", err)
	}
	if _, err := s.Encrypt(context.Background(), "k1", []byte("seed")); err != nil || kek.calls.Load() != 2 {
		t.Fatalf("next Encrypt: %v, %d wraps; want a local KEK of its own (2)", err, kek.calls.Load())
	}
}

// A local KEK exported and restored into another Sealer (a restarted plugin) wraps new DEKs
// with no backend call, keeps its age and uses, and yields nothing once dropped.
func TestLocalKEKRestore(t *testing.T) {
	kek := newMemKEK(t, "k1")
	ctx := context.Background()
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	before := dek.NewLocalSealer(kek, dek.LocalKEKConfig{Clock: clk})
	if _, ok := before.LocalKEK(); ok {
		t.Fatal("a local KEK before the first Encrypt")
	}
	ct, err := before.Encrypt(ctx, "k1", []byte("before"))
	if err != nil {
		t.Fatal(err)
	}
	st, ok := before.LocalKEK()
	if !ok || st.KeyID != "k1" || len(st.Key) != dek.DEKSize || st.Uses != 1 || !st.Created.Equal(clk.Now()) {
		t.Fatalf("LocalKEK = %+v, %v", st, ok)
	}
	if err := dek.NewSealer(kek).RestoreLocalKEK(st); err == nil {
		t.Fatal("RestoreLocalKEK outside local KEK mode succeeded")
	}

	clk.Advance(time.Hour)
	after := dek.NewLocalSealer(kek, dek.LocalKEKConfig{Clock: clk, MaxAge: 2 * time.Hour})
	if err := after.RestoreLocalKEK(st); err != nil {
		t.Fatal(err)
	}
	if err := after.RestoreLocalKEK(st); err == nil {
		t.Fatal("a second RestoreLocalKEK replaced the local KEK in use")
	}
	kek.setErr(fmt.Errorf("%w: down", dek.ErrUnavailable))
	ct2, err := after.Encrypt(ctx, "k1", []byte("after"))
	if err != nil {
		t.Fatalf("Encrypt with the restored local KEK and no backend: %v", err)
	}
	kek.setErr(nil)
	for _, c := range [][]byte{ct, ct2} {
		if _, _, err := before.Decrypt(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if again, _ := after.LocalKEK(); again.Uses != 2 || !again.Created.Equal(st.Created) {
		t.Fatalf("restored local KEK: uses %d, created %s; want 2 and the original creation time", again.Uses, again.Created)
	}
	// Its age counts from its creation before the restart: one more hour and it rotates.
	clk.Advance(time.Hour)
	wraps := kek.wrapCount()
	if _, err := after.Encrypt(ctx, "k1", []byte("rotated")); err != nil {
		t.Fatal(err)
	}
	if kek.wrapCount() != wraps+1 {
		t.Fatal("the restored local KEK outlived its max age")
	}
	after.DropLocalKEK(nil)
	if _, ok := after.LocalKEK(); ok {
		t.Fatal("LocalKEK after a drop")
	}
	for _, bad := range []dek.LocalKEKState{
		{KeyID: "k1", Wrapped: st.Wrapped, Key: st.Key[:16]},
		{KeyID: "k1", Key: st.Key},
		{KeyID: "", Wrapped: st.Wrapped, Key: st.Key},
	} {
		if err := dek.NewLocalSealer(kek, dek.LocalKEKConfig{}).RestoreLocalKEK(bad); err == nil {
			t.Errorf("RestoreLocalKEK(%+v) succeeded", bad)
		}
	}
}

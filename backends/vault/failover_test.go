package vault

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
	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// TestVaultFailoverRaft runs the backend against a real 3-node Raft cluster on loopback, the
// set-up it meets in production: it is given the three addresses, the first node (active at
// first) is killed under load, and every request either succeeds or fails cleanly with
// Unavailable within its deadline; requests move to the other nodes (standbys forward to
// whichever becomes active), the key id never changes, and once the first node is back the
// backend returns to it.
func TestVaultFailoverRaft(t *testing.T) {
	t.Parallel()
	cluster := harness.StartVaultRaftCluster(t, 3)
	first := cluster.Nodes[0]
	first.EnableTransit(t, "transit")
	f := newFixture(t, first)
	cfg := f.config(t, StaticToken{f.token})
	addrs := cluster.Addrs()
	cfg.Address, cfg.FailoverAddresses = addrs[0], addrs[1:]
	k, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mustCheck(t, k)
	id := k.CurrentID()
	if k.Address() != addrs[0] {
		t.Fatalf("address in use %s, want the first, %s", k.Address(), addrs[0])
	}
	plain := bytes.Repeat([]byte{0x11}, 32)
	before, err := k.Wrap(context.Background(), id, plain)
	if err != nil {
		t.Fatal(err)
	}

	// Load: wrap+unwrap round trips under a 2 s deadline each, as the plugin makes them.
	var (
		stop            chan struct{} = make(chan struct{})
		wg              sync.WaitGroup
		ok, unavailable atomic.Int64
		mu              sync.Mutex
		unexpected      []error
		okAfterKill     atomic.Int64
		killed          atomic.Bool
		roundTrip       = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			w, err := k.Wrap(ctx, id, plain)
			if err != nil {
				return err
			}
			got, err := k.Unwrap(ctx, id, w)
			if err == nil && !bytes.Equal(got, plain) {
				return fmt.Errorf("unwrap returned another key")
			}
			return err
		}
	)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := roundTrip()
				switch {
				case err == nil:
					ok.Add(1)
					if killed.Load() {
						okAfterKill.Add(1)
					}
				case errors.Is(err, dek.ErrUnavailable):
					unavailable.Add(1)
					time.Sleep(20 * time.Millisecond)
				default:
					mu.Lock()
					unexpected = append(unexpected, err)
					mu.Unlock()
				}
			}
		}()
	}
	stopLoad := func() {
		close(stop)
		wg.Wait()
		if len(unexpected) > 0 {
			t.Fatalf("%d requests failed other than cleanly with Unavailable, first: %v", len(unexpected), unexpected[0])
		}
	}

	harness.Eventually(t, 30*time.Second, "load running", func(context.Context) error {
		if ok.Load() < 20 {
			return errors.New("not yet")
		}
		return nil
	})
	first.Process.Kill() // no graceful step-down: the others must elect a new active node
	killed.Store(true)
	harness.Eventually(t, 90*time.Second, "requests served after the first node died", func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if len(unexpected) > 0 {
			t.Fatalf("%d requests failed other than cleanly with Unavailable, first: %v", len(unexpected), unexpected[0])
		}
		if okAfterKill.Load() < 20 {
			return fmt.Errorf("%d round trips since the kill (%d unavailable)", okAfterKill.Load(), unavailable.Load())
		}
		return nil
	})
	if k.Address() == addrs[0] {
		t.Fatalf("still using the dead first address")
	}
	mustCheck(t, k)
	if k.CurrentID() != id {
		t.Fatalf("key id changed across the failover: %s, was %s", k.CurrentID(), id)
	}
	if got, err := k.Unwrap(context.Background(), id, before); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Unwrap of a key wrapped before the failover: %v", err)
	}

	// The first node comes back (sealed, then unsealed: it rejoins as a standby); the next
	// check goes back to it, and requests keep succeeding through it.
	cluster.StartAndRejoin(t, first)
	harness.Eventually(t, 60*time.Second, "back to the first address", func(ctx context.Context) error {
		if err := k.Check(ctx); err != nil {
			return err
		}
		if k.Address() != addrs[0] {
			return fmt.Errorf("address in use %s", k.Address())
		}
		return nil
	})
	n := ok.Load()
	harness.Eventually(t, 30*time.Second, "requests through the first address again", func(context.Context) error {
		if ok.Load() < n+20 {
			return errors.New("not yet")
		}
		return nil
	})
	stopLoad()
	if k.CurrentID() != id {
		t.Fatalf("key id changed: %s, was %s", k.CurrentID(), id)
	}
	t.Logf("round trips: %d ok, %d unavailable during the failover", ok.Load(), unavailable.Load())
}

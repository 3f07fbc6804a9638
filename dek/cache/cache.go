// Package cache keeps unwrapped DEKs in memory, so that kube-apiserver's repeated Decrypts of
// the few DEK seeds in use cost no backend call, and a restarted apiserver's Decrypts of seeds
// this plugin made or has seen cost none either, even while the backend is unreachable.
//
// Entries are keyed by the key id and the wrapped DEK, held in memory (never logged, and
// written only as plugin/keep keeps them across a restart, when serve is told to: Entries and
// Restore), bounded in number and cleared when evicted. There is no short age limit: an
// apiserver asks for a seed again only after its own cache lets it go, hours later, and those
// are exactly the entries a restarted apiserver needs. Whether memory may be served at all is
// the Gate's decision (a grace while the backend is unreachable, none once it refuses).
//
// In the serving stack it sits above everything else on the way to the backend (plugin.New
// orders it): a hit takes no backend slot and is not a backend call.
package cache

import (
	"container/list"
	"context"
	"sync"
	"sync/atomic"

	"github.com/kmsplugin/kms-plugin/dek"
)

// DefaultEntries bounds the cache at about 3.3 MiB of heap (measured with 10,000 entries): an
// entry is a 32-byte DEK, its key id and the backend's wrapped form (Vault: 60 bytes), plus
// bookkeeping.
const DefaultEntries = 10000

// Gate says whether keys held in memory may be served now. (Backend answers reach it from
// below the cache: in serve, Monitor.Proving records every successful backend call.)
type Gate interface {
	// FromMemory returns nil when memory may be served, or why not.
	FromMemory() error
}

// KEK is a dek.KEK that remembers what it wrapped and unwrapped.
type KEK struct {
	dek.KEK
	gate    Gate
	entries int

	mu    sync.Mutex
	order *list.List // of *entry, most recently used first
	index map[entryKey]*list.Element
	// purges counts Purge calls: what a backend call begun before one returns is not kept,
	// since the purge may have been for the very key it used.
	purges uint64

	flights dek.Flights[entryKey, []byte] // backend Unwraps that identical concurrent misses share

	hits, misses, evictions atomic.Uint64
}

type entryKey struct{ keyID, wrapped string }

type entry struct {
	key entryKey
	dek []byte
}

// New returns kek with a cache of at most entries DEKs (DefaultEntries when not positive).
func New(kek dek.KEK, gate Gate, entries int) *KEK {
	if entries <= 0 {
		entries = DefaultEntries
	}
	return &KEK{KEK: kek, gate: gate, entries: entries, order: list.New(), index: map[entryKey]*list.Element{}}
}

// Wrap wraps with the backend and remembers the pair, so that Decrypts of what this plugin
// encrypted need no backend call.
func (c *KEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	epoch := c.epoch()
	wrapped, err := c.KEK.Wrap(ctx, keyID, plain)
	if err != nil {
		return nil, err
	}
	c.put(entryKey{keyID, string(wrapped)}, plain, epoch)
	return wrapped, nil
}

// Unwrap answers from memory when it may, else asks the backend once for all identical
// concurrent requests. The caller owns (and should clear) the returned slice.
func (c *KEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	key := entryKey{keyID, string(wrapped)}
	if c.gate.FromMemory() == nil {
		if d := c.get(key); d != nil {
			c.hits.Add(1)
			return d, nil
		}
	}
	c.misses.Add(1)
	d, err, _ := c.flights.Do(ctx, key, func() ([]byte, error) {
		epoch := c.epoch()
		d, err := c.KEK.Unwrap(ctx, keyID, wrapped)
		if err == nil {
			c.put(key, d, epoch)
		}
		return d, err
	})
	if err != nil {
		return nil, err
	}
	return clone(d), nil // every caller gets its own copy to clear
}

// Purge drops every entry whose key id keep refuses (nil keep: every entry), clearing the DEKs.
// keep is asked once per key id: the entries are many, their key ids few.
func (c *KEK) Purge(keep func(keyID string) error) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.purges++
	refused := map[string]bool{}
	n := 0
	for el := c.order.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*entry)
		drop, asked := refused[e.key.keyID]
		if !asked {
			drop = keep == nil || keep(e.key.keyID) != nil
			refused[e.key.keyID] = drop
		}
		if drop {
			c.removeLocked(el)
			n++
		}
		el = next
	}
	return n
}

// Stats are the cache's counters since start, and its size now.
type Stats struct {
	Hits, Misses, Evictions uint64
	Entries                 int
}

// Stats returns the counters.
func (c *KEK) Stats() Stats {
	c.mu.Lock()
	n := c.order.Len()
	c.mu.Unlock()
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load(), Entries: n}
}

func (c *KEK) get(key entryKey) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.index[key]
	if !ok {
		return nil
	}
	c.order.MoveToFront(el)
	return clone(el.Value.(*entry).dek)
}

// epoch is the purge count before a backend call; put keeps its answer only if no purge came
// in between.
func (c *KEK) epoch() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.purges
}

func (c *KEK) put(key entryKey, d []byte, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.purges != epoch {
		return
	}
	if el, ok := c.index[key]; ok {
		c.order.MoveToFront(el)
		return
	}
	c.index[key] = c.order.PushFront(&entry{key: key, dek: clone(d)})
	for c.order.Len() > c.entries {
		c.removeLocked(c.order.Back())
		c.evictions.Add(1)
	}
}

func (c *KEK) removeLocked(el *list.Element) {
	e := c.order.Remove(el).(*entry)
	delete(c.index, e.key)
	clear(e.dek)
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// Entry is one cached DEK, exported so that it can be kept across a restart (plugin/keep).
type Entry struct {
	KeyID   string
	Wrapped []byte
	Key     []byte // the unwrapped DEK; the caller clears it when done
}

// Entries returns copies of at most n entries, most recently used first.
func (c *KEK) Entries(n int) []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Entry, 0, min(n, c.order.Len()))
	for el := c.order.Front(); el != nil && len(out) < n; el = el.Next() {
		e := el.Value.(*entry)
		out = append(out, Entry{KeyID: e.key.keyID, Wrapped: []byte(e.key.wrapped), Key: clone(e.dek)})
	}
	return out
}

// Restore adds entries kept before a restart, most recently used first, behind those the
// cache already holds (which are newer), within its bound. It reports how many it added. The
// keys are copied; the caller clears its own.
func (c *KEK) Restore(entries []Entry) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, e := range entries {
		if c.order.Len() >= c.entries {
			break
		}
		key := entryKey{e.KeyID, string(e.Wrapped)}
		if _, ok := c.index[key]; ok || len(e.Key) == 0 {
			continue
		}
		c.index[key] = c.order.PushBack(&entry{key: key, dek: clone(e.Key)})
		n++
	}
	return n
}

package keep

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
)

// Keeper saves snapshots to a Store in the background and erases it on demand. Saves and
// erases take turns, so a save begun before a refusal cannot outlive the erase it causes.
type Keeper struct {
	store Store
	// snapshot returns what to keep now, or nil when nothing may be kept (no key id yet, a
	// refusal, past the grace): then the last save stays as it is.
	snapshot func() *Snapshot
	log      *slog.Logger

	mu      sync.Mutex
	trigger chan struct{}
	done    chan struct{}
}

// NewKeeper returns a Keeper of store, whose saves write what snapshot returns.
func NewKeeper(store Store, snapshot func() *Snapshot, log *slog.Logger) *Keeper {
	return &Keeper{store: store, snapshot: snapshot, log: log, trigger: make(chan struct{}, 1), done: make(chan struct{})}
}

// Store is the Keeper's store.
func (k *Keeper) Store() Store { return k.store }

// Changed asks for a save soon; it never blocks (saves that pile up are one save).
func (k *Keeper) Changed() {
	select {
	case k.trigger <- struct{}{}:
	default:
	}
}

// Run saves after each Changed until ctx ends, then once more (a graceful stop keeps the
// latest state) and closes Done.
func (k *Keeper) Run(ctx context.Context) {
	defer close(k.done)
	for {
		select {
		case <-ctx.Done():
			k.Save()
			return
		case <-k.trigger:
			k.Save()
		}
	}
}

// Done is closed once Run has made its last save.
func (k *Keeper) Done() <-chan struct{} { return k.done }

// Save writes the snapshot now, if there is one to keep; failures are logged (serving goes
// on without a kept state) and returned.
func (k *Keeper) Save() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.snapshot()
	if s == nil {
		return nil
	}
	defer s.Clear()
	b, err := s.Marshal()
	if err == nil {
		err = k.store.Save(b)
		clear(b)
	}
	if err != nil {
		k.log.Error("saving the kept state failed: a restart during a backend outage would serve nothing from memory", "store", k.store.String(), "error", err)
		return err
	}
	k.log.Debug("kept state saved", "store", k.store.String(), "key_id", s.KeyID, "entries", len(s.Entries), "local_kek", s.LocalKEK != nil)
	return nil
}

// Erase deletes the kept state for good (with a TPM, a copy of it restored later no longer
// loads): the backend refused, so nothing kept may re-open serving from memory.
func (k *Keeper) Erase(why error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.store.Erase(); err != nil {
		k.log.Error("ERASING THE KEPT STATE FAILED: delete it by hand; a restart could serve it until the backend refuses again", "store", k.store.String(), "why", why, "error", err)
		return err
	}
	k.log.Warn("KEPT STATE ERASED: a restart serves nothing from memory until the backend answers", "store", k.store.String(), "why", why)
	return nil
}

// Load reads the kept state: nil and fs.ErrNotExist when there is none.
func (k *Keeper) Load() (*Snapshot, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, err := k.store.Load()
	if err != nil {
		return nil, err
	}
	defer clear(b)
	s, err := Unmarshal(b)
	if err != nil {
		if eraseErr := k.store.Erase(); eraseErr != nil && !errors.Is(eraseErr, fs.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("erasing it: %w", eraseErr))
		}
		return nil, err
	}
	return s, nil
}

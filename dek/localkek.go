package dek

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// Local KEK mode: the plugin generates an AES-256 key of its own (the local KEK), has the
// backend wrap it once, and wraps each Encrypt's DEK with it. Every envelope carries the
// backend-wrapped local KEK (format v2), so any plugin with access to the backend can read it,
// and unwraps it once per local KEK, not once per envelope. Encrypt then needs no backend call
// until the local KEK rotates, which keeps a cluster writing through a backend outage.

// Default rotation bounds of a local KEK (docs/security.md has the reasoning).
const (
	// DefaultLocalKEKMaxAge bounds how long one local KEK wraps new DEKs: a rotation costs one
	// backend call, and limits what one leaked local KEK exposes to a day of writes.
	DefaultLocalKEKMaxAge = 24 * time.Hour
	// DefaultLocalKEKMaxUses bounds the DEKs one local KEK wraps. Each wrap draws a random
	// 96-bit GCM nonce; after 2^30 of them the chance of any repeat is about 2^-37, far
	// inside NIST SP 800-38D's bound of 2^32 invocations at 2^-32.
	DefaultLocalKEKMaxUses = 1 << 30
)

// LocalKEKConfig configures local KEK mode.
type LocalKEKConfig struct {
	MaxAge  time.Duration // DefaultLocalKEKMaxAge when zero
	MaxUses uint64        // DefaultLocalKEKMaxUses when zero
	// FromMemory says whether a local KEK held in memory may still wrap (nil), or why not:
	// past the grace of a backend outage, or once the backend refuses. Nil: always.
	FromMemory func() error
	// Recovery, when set, is the recovery public key each new local KEK is sealed to: the
	// envelopes it wraps are then format v3 (recoveryseal.go).
	Recovery *recovery.PublicKey
	// Generated is called after each new local KEK has become the current one, with the key
	// id that wraps it.
	Generated func(keyID string)
	Clock     clock.Clock
	Log       *slog.Logger
}

// localKEKs holds the local KEK that wraps new DEKs.
type localKEKs struct {
	cfg LocalKEKConfig

	current atomic.Pointer[localKEK]
	// postponed is until when a rotation that the backend's outage postponed is not tried
	// again (unix nanoseconds): Encrypts keep the current local KEK meanwhile.
	postponed atomic.Int64

	generations Flights[struct{}, *localKEK] // the one generation under way, which concurrent Encrypts share

	mu    sync.Mutex
	drops uint64 // DropLocalKEK calls so far: a generation begun before one is discarded
}

type localKEK struct {
	keyID   string // the backend's key that wrapped it
	wrapped []byte // its backend-wrapped form, carried in every envelope
	seal    []byte // v3: its recovery fields (recoveryseal.go), carried in every envelope; nil: v2
	aead    cipher.AEAD
	// key is the local KEK itself, held only so that it can be kept across a restart
	// (LocalKEK); cleared, under localKEKs.mu, when it stops being the current one.
	key     []byte
	created time.Time
	uses    atomic.Uint64
}

// NewLocalSealer returns a Sealer in local KEK mode over the backend's kek. It reads every
// envelope a Sealer writes, both formats.
func NewLocalSealer(kek KEK, cfg LocalKEKConfig) *Sealer {
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultLocalKEKMaxAge
	}
	if cfg.MaxUses == 0 {
		cfg.MaxUses = DefaultLocalKEKMaxUses
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Sealer{kek: kek, local: &localKEKs{cfg: cfg}}
}

// forEncrypt returns the local KEK to wrap one more DEK under keyID, generating a new one when
// there is none for keyID, it is too old or too used, or memory may no longer be served.
func (l *localKEKs) forEncrypt(ctx context.Context, kek KEK, keyID string) (*localKEK, error) {
	if lk := l.current.Load(); l.usable(lk, keyID) {
		if lk.uses.Add(1) <= l.cfg.MaxUses {
			return lk, nil
		}
	}
	// One generation for all the Encrypts that need it: they wait for its result instead of
	// each trying the backend in turn (during an outage, each for its whole timeout).
	lk, err, joined := l.generations.Do(ctx, struct{}{}, func() (*localKEK, error) {
		l.mu.Lock()
		old, drops := l.current.Load(), l.drops
		l.mu.Unlock()
		if l.usable(old, keyID) && old.uses.Load() < l.cfg.MaxUses {
			return old, nil // another Encrypt generated one meanwhile
		}
		lk, err := l.generate(ctx, kek, keyID, old)
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		if l.drops != drops {
			l.mu.Unlock()
			if lk != old {
				clear(lk.key)
			}
			// The backend refused, or the key changed, while it wrapped this one: its answer
			// predates that and must not be used.
			return nil, fmt.Errorf("%w: the local KEK being made was dropped (the backend refused or the key changed meanwhile)", ErrUnavailable)
		}
		l.replaceLocked(lk)
		l.mu.Unlock()
		if lk != old && l.cfg.Generated != nil {
			l.cfg.Generated(keyID) // once it is current: a caller may read it back (LocalKEK)
		}
		return lk, nil
	})
	switch {
	case joined && err != nil && errors.Is(err, ctx.Err()):
		return nil, fmt.Errorf("%w: waiting for a new local KEK: %w", ErrUnavailable, err)
	case err != nil:
		return nil, err
	case lk.keyID != keyID || lk.uses.Add(1) > l.cfg.MaxUses:
		return l.forEncrypt(ctx, kek, keyID) // made for another key id, or used up meanwhile: again
	}
	return lk, nil
}

// DropLocalKEK drops the local KEK that wraps new DEKs when keep refuses its key id (nil keep:
// always), and discards any being made, so that the next Encrypt has the backend wrap a new
// one. serve calls it when the backend refuses and after each check, with the backend's view
// of which key ids it still accepts. It reports whether one was dropped. A Sealer not in local
// KEK mode has none.
func (s *Sealer) DropLocalKEK(keep func(keyID string) error) bool {
	l := s.local
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lk := l.current.Load()
	if keep != nil && (lk == nil || keep(lk.keyID) == nil) {
		return false
	}
	l.drops++
	l.replaceLocked(nil)
	return lk != nil
}

// replaceLocked makes lk the current local KEK and clears the key bytes of the one it
// replaces (its AES-GCM, which Encrypts under way may still use, holds its own copy).
func (l *localKEKs) replaceLocked(lk *localKEK) {
	if old := l.current.Swap(lk); old != nil && old != lk {
		clear(old.key)
	}
}

// LocalKEKState is the current local KEK, exported so that it can be kept across a restart
// (plugin/keep): the key itself, so whoever holds this holds every DEK it wrapped.
type LocalKEKState struct {
	KeyID   string    // the backend's key that wrapped it
	Wrapped []byte    // its backend-wrapped form
	Key     []byte    // the AES-256 key; the caller clears it when done
	Created time.Time // when it was made: its rotation by age counts from here
	Uses    uint64    // DEKs it has wrapped so far
}

// LocalKEK returns a copy of the current local KEK, if there is one that memory may still
// serve. A Sealer not in local KEK mode has none.
func (s *Sealer) LocalKEK() (LocalKEKState, bool) {
	l := s.local
	if l == nil || l.fromMemory() != nil {
		return LocalKEKState{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lk := l.current.Load()
	if lk == nil || len(lk.key) != DEKSize {
		return LocalKEKState{}, false
	}
	return LocalKEKState{KeyID: lk.keyID, Wrapped: bytes.Clone(lk.wrapped), Key: bytes.Clone(lk.key), Created: lk.created, Uses: lk.uses.Load()}, true
}

// RestoreLocalKEK makes st the current local KEK, as kept before a restart, unless one was
// made or restored meanwhile (it is newer). Its age and uses carry on: a restart neither
// renews nor extends it. st.Key is copied; the caller clears its own.
func (s *Sealer) RestoreLocalKEK(st LocalKEKState) error {
	l := s.local
	switch {
	case l == nil:
		return errors.New("not in local KEK mode")
	case len(st.Key) != DEKSize:
		return fmt.Errorf("local KEK of %d bytes, want %d", len(st.Key), DEKSize)
	case len(st.Wrapped) == 0 || len(st.Wrapped) > MaxWrappedDEKSize:
		return fmt.Errorf("wrapped local KEK of %d bytes: must be 1 to %d", len(st.Wrapped), MaxWrappedDEKSize)
	}
	if err := checkKeyID(st.KeyID); err != nil {
		return err
	}
	aead, err := newGCM(st.Key)
	if err != nil {
		return err
	}
	lk := &localKEK{keyID: st.KeyID, wrapped: bytes.Clone(st.Wrapped), aead: aead, key: bytes.Clone(st.Key), created: st.Created}
	lk.uses.Store(st.Uses)
	// The seal is not kept: made again (no backend call), so that a restarted plugin with a
	// recovery public key goes on writing format v3, not silently format v2.
	if err := l.reseal(lk, st.Key); err != nil {
		clear(lk.key)
		return fmt.Errorf("sealing the restored local KEK to the recovery key: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.current.Load() != nil {
		clear(lk.key)
		return errors.New("a local KEK is already in use")
	}
	l.current.Store(lk)
	return nil
}

// postponeFor is how long a rotation postponed by an outage waits before the next attempt.
const postponeFor = 30 * time.Second

// usable reports whether lk may wrap one more DEK under keyID now (use count aside).
func (l *localKEKs) usable(lk *localKEK, keyID string) bool {
	if lk == nil || lk.keyID != keyID || l.fromMemory() != nil {
		return false
	}
	now := l.cfg.Clock.Now()
	return now.Sub(lk.created) < l.cfg.MaxAge || now.UnixNano() < l.postponed.Load()
}

func (l *localKEKs) fromMemory() error {
	if l.cfg.FromMemory == nil {
		return nil
	}
	return l.cfg.FromMemory()
}

// generate makes a new local KEK and has the backend wrap it: the one backend call. A rotation
// due by age or use while the backend is unreachable keeps old within the grace: refusing
// every write would be worse than an older key.
func (l *localKEKs) generate(ctx context.Context, kek KEK, keyID string, old *localKEK) (*localKEK, error) {
	lk, err := l.newLocalKEK(ctx, kek, keyID)
	if err != nil && old != nil && old.keyID == keyID && errors.Is(err, ErrUnavailable) && l.fromMemory() == nil {
		l.cfg.Log.Warn("local KEK rotation postponed: the backend is unreachable", "key_id", keyID, "retry_in", postponeFor.String(), "error", err)
		l.postponed.Store(l.cfg.Clock.Now().Add(postponeFor).UnixNano())
		return old, nil
	}
	return lk, err
}

// newLocalKEK makes a new local KEK and has the backend wrap it.
func (l *localKEKs) newLocalKEK(ctx context.Context, kek KEK, keyID string) (*localKEK, error) {
	key := make([]byte, DEKSize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating local KEK: %w", err)
	}
	wrapped, err := kek.Wrap(ctx, keyID, key)
	if err != nil {
		return nil, fmt.Errorf("wrapping a new local KEK with %s: %w", keyID, err)
	}
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedDEKSize {
		return nil, fmt.Errorf("the backend wrapped the local KEK into %d bytes: must be 1 to %d", len(wrapped), MaxWrappedDEKSize)
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	lk := &localKEK{keyID: keyID, wrapped: wrapped, aead: aead, key: bytes.Clone(key), created: l.cfg.Clock.Now()}
	if err := l.reseal(lk, key); err != nil {
		return nil, err
	}
	l.cfg.Log.Info("new local KEK", "key_id", keyID)
	return lk, nil
}

// encryptLocal is Encrypt in local KEK mode: format v2, or v3 with a recovery seal.
func (s *Sealer) encryptLocal(ctx context.Context, keyID string, dek, plaintext []byte) ([]byte, error) {
	lk, err := s.local.forEncrypt(ctx, s.kek, keyID)
	if err != nil {
		return nil, err
	}
	version := byte(formatV2)
	if lk.seal != nil {
		version = formatV3
	}
	out := make([]byte, 0, 1+1+len(keyID)+2+len(lk.wrapped)+len(lk.seal)+localWrappedSize+nonceSize+len(plaintext)+tagSize)
	out, err = appendHeader(out, version, keyID, lk.wrapped)
	if err != nil {
		return nil, err
	}
	out = append(out, lk.seal...)
	// The DEK, sealed by the local KEK with the header so far as additional data.
	if out, err = sealWith(lk.aead, out, dek); err != nil {
		return nil, err
	}
	return seal(out, dek, plaintext)
}

// unwrapLocal recovers a v2 or v3 envelope's DEK: the local KEK from the backend (a cache hit
// in serve, but for the first envelope of each local KEK) or its recovery seal, then the DEK
// from the local KEK.
func (s *Sealer) unwrapLocal(ctx context.Context, env *envelope) ([]byte, error) {
	aead, err := s.localKEKOf(ctx, env)
	if err != nil {
		return nil, err
	}
	dek, err := aead.Open(nil, env.wrappedDEK[:nonceSize], env.wrappedDEK[nonceSize:], env.localAD)
	if err != nil {
		return nil, Public(fmt.Errorf("%w: locally wrapped DEK", ErrTampered))
	}
	return dek, nil
}

// aeadFor returns the AES-GCM of the local KEK key, which the backend (or the cache) has just
// unwrapped from env: the current local KEK's own when env carries it, as most envelopes a
// plugin reads are its own recent ones, which saves building AES-GCM once more per Decrypt.
func (l *localKEKs) aeadFor(env *envelope, key []byte) (cipher.AEAD, error) {
	if l == nil { // a Sealer not in local KEK mode, reading a v2 envelope
		return newGCM(key)
	}
	if lk := l.current.Load(); lk != nil && lk.keyID == env.keyID && bytes.Equal(lk.wrapped, env.localKEK) {
		return lk.aead, nil
	}
	return newGCM(key)
}

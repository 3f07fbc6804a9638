package dek

import (
	"context"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// Recovery seals (format v3): in local KEK mode with a recovery public key, each local KEK is
// sealed once to that key when it is made, and every envelope it wraps carries the seal. The
// private key (kmsctl, or serve in break-glass mode) then opens the local KEK without the
// backend. Normal Encrypts and Decrypts never run HPKE.

// sealLocalKEK seals a new local KEK to pub: the recovery fields of every v3 envelope that
// the local KEK wraps, from the recovery id to the sealed KEK.
func sealLocalKEK(pub *recovery.PublicKey, keyID string, wrapped, key []byte) ([]byte, error) {
	ad, err := appendHeader(nil, formatV3, keyID, wrapped)
	if err != nil {
		return nil, err
	}
	start := len(ad)
	id := pub.ID()
	ad = append(ad, id[:]...)
	ad = binary.BigEndian.AppendUint16(ad, pub.KEM())
	enc, sealed, err := recovery.Seal(pub, formatV3, ad, key)
	if err != nil {
		return nil, err
	}
	if len(enc) == 0 || len(enc) > recovery.MaxEncSize || len(sealed) == 0 || len(sealed) > 255 {
		return nil, fmt.Errorf("recovery seal of %d and %d bytes: the envelope cannot carry it", len(enc), len(sealed))
	}
	fields := append(ad[start:], byte(len(enc)))
	fields = append(fields, enc...)
	fields = append(fields, byte(len(sealed)))
	return append(fields, sealed...), nil
}

// reseal gives lk the recovery seal of the configured recovery key (none without one), key
// being lk's local KEK: when it is made, and when a local KEK kept across a restart is
// restored, so that every envelope it wraps carries a seal of the key configured now.
func (l *localKEKs) reseal(lk *localKEK, key []byte) (err error) {
	if l.cfg.Recovery == nil {
		lk.seal = nil
		return nil
	}
	lk.seal, err = sealLocalKEK(l.cfg.Recovery, lk.keyID, lk.wrapped, key)
	return err
}

// Recovery opens recovery seals with the private key, keeping a few opened local KEKs (one
// HPKE open per local KEK, not per envelope). Drop forgets the key: break-glass mode ends.
type Recovery struct {
	id recovery.ID

	mu     sync.Mutex
	key    *recovery.PrivateKey // nil once dropped
	why    string               // why it was dropped
	opened map[string]cipher.AEAD
	order  []string // insertion order, for eviction

	// until, when clk is set, is when the key is dropped (Expire), by the wall clock.
	until     time.Time
	clk       clock.Clock
	expiredBy string
}

// recoveryEntries bounds the opened local KEKs kept: one per local KEK a cluster's envelopes
// carry (a few per node and day), so a small number covers a restore.
const recoveryEntries = 256

// NewRecovery returns an opener of the seals of key's envelopes.
func NewRecovery(key *recovery.PrivateKey) *Recovery {
	return &Recovery{id: key.ID(), key: key, opened: map[string]cipher.AEAD{}}
}

// Expire makes r drop its key on the first read at or after until by clk's wall clock, with
// why as the reason. A timer alone does not do: Go's timers run on the monotonic clock, which
// stands still while a VM is suspended, so a resumed VM would serve past until. Call it before
// r is used.
func (r *Recovery) Expire(until time.Time, clk clock.Clock, why string) *Recovery {
	r.until, r.clk, r.expiredBy = until.Round(0), clk, why // Round(0): the wall clock only
	return r
}

// expireLocked drops the key once its expiry is reached; r.mu is held.
func (r *Recovery) expireLocked() {
	if r.key != nil && r.clk != nil && !r.clk.Now().Round(0).Before(r.until) {
		r.dropLocked(r.expiredBy)
	}
}

// ID is the recovery key's id, also after Drop.
func (r *Recovery) ID() recovery.ID { return r.id }

// Drop forgets the private key and every local KEK opened with it; seals then go to the
// backend like v2 envelopes, and a failure there says why the key is gone.
func (r *Recovery) Drop(why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropLocked(why)
}

func (r *Recovery) dropLocked(why string) {
	r.key, r.why = nil, why
	clear(r.opened)
	r.order = nil
}

// holds reports whether r can open env's seal; why is set when it could before a Drop.
func (r *Recovery) holds(env *envelope) (ok bool, why string) {
	if r == nil || env.version != formatV3 || env.recoveryID != r.id {
		return false, ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked()
	return r.key != nil, r.why
}

// open returns the AES-GCM of env's local KEK, opened from its recovery seal.
func (r *Recovery) open(env *envelope) (cipher.AEAD, error) {
	ck := string(env.sealAD) + string(env.enc) + string(env.sealedKEK)
	r.mu.Lock()
	r.expireLocked()
	key := r.key
	aead, ok := r.opened[ck]
	r.mu.Unlock()
	if ok {
		return aead, nil
	}
	if key == nil {
		return nil, fmt.Errorf("%w: the recovery key %s was dropped: %s", ErrUnavailable, r.id, r.why)
	}
	if env.kem != key.KEM() {
		return nil, Public(fmt.Errorf("%w: recovery seal of recovery key %s names KEM 0x%04x, the key is 0x%04x", ErrTampered, r.id, env.kem, key.KEM()))
	}
	localKEK, err := recovery.Open(key, formatV3, env.sealAD, env.enc, env.sealedKEK)
	if err != nil {
		return nil, Public(fmt.Errorf("%w: recovery seal of the local KEK (recovery key %s): %w", ErrTampered, r.id, err))
	}
	defer clear(localKEK)
	if len(localKEK) != DEKSize {
		return nil, Public(fmt.Errorf("%w: recovery seal holds a local KEK of %d bytes", ErrTampered, len(localKEK)))
	}
	if aead, err = newGCM(localKEK); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.key == nil {
		return aead, nil // dropped meanwhile: serve this one, keep nothing
	}
	if _, ok := r.opened[ck]; !ok {
		if len(r.order) >= recoveryEntries {
			delete(r.opened, r.order[0])
			r.order = r.order[1:]
		}
		r.opened[ck] = aead
		r.order = append(r.order, ck)
	}
	return aead, nil
}

// OpenWith makes s open the recovery seals of r's key with it, before asking the backend:
// kmsctl's offline reads, and serve's break-glass mode. Call it before s serves.
func (s *Sealer) OpenWith(r *Recovery) *Sealer {
	s.recovery = r
	return s
}

// localKEKOf returns the AES-GCM of a v2 or v3 envelope's local KEK: from the recovery seal
// when s holds its key, else from the backend.
func (s *Sealer) localKEKOf(ctx context.Context, env *envelope) (cipher.AEAD, error) {
	ok, why := s.recovery.holds(env)
	if ok {
		return s.recovery.open(env)
	}
	key, err := s.kek.Unwrap(ctx, env.keyID, env.localKEK)
	if err != nil {
		err = fmt.Errorf("unwrapping the local KEK with %s: %w", env.keyID, err)
		if why != "" {
			err = fmt.Errorf("%w (its recovery seal, of recovery key %s, is no longer opened: %s)", err, s.recovery.id, why)
		}
		return nil, err
	}
	defer clear(key)
	if len(key) != DEKSize {
		return nil, Public(fmt.Errorf("%w: unwrapped local KEK has %d bytes", ErrTampered, len(key)))
	}
	return s.local.aeadFor(env, key)
}

package plugin

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// Monitor keeps the backend's health and current key id, refreshed in the background, so that
// Status answers from memory and apiserver polling never reaches the backend.
//
// Its key id is the last one the backend proved usable. An outage leaves it unchanged: the
// apiserver keeps writing with its current DEK seed while key_id is valid and unchanged, so an
// outage must not look like a rotation.
type Monitor struct {
	kek   dek.KEK
	clock clock.Clock
	log   *slog.Logger
	cfg   MonitorConfig

	// refreshing makes refreshes take turns (a SIGHUP reload refreshes beside Run): two at
	// once could record an older view of the key after a newer one and move the key id back.
	refreshing sync.Mutex

	mu         sync.Mutex
	keyID      string    // last key id proved usable; "" until the first success
	err        error     // why the backend is unhealthy; nil when healthy
	lastWrap   time.Time // last successful wrap (probe or real traffic)
	lastUnwrap time.Time // last successful unwrap (probe or real traffic)
	checked    bool      // at least one refresh has finished
	answered   time.Time // last time the backend answered (a refresh or a call succeeded)
	// refused is the backend's last refusal (dek.Refused) that no successful refresh has
	// followed yet. It outlives later errors: an outage after a "no" must not re-open the grace.
	refused    error
	serving    bool // the last refresh left the plugin serving from memory
	graceEnded bool // the end of this outage's grace has been logged
	observers  []func(keyID string, unhealthy error)
	onRefusal  []func(error)
}

// MonitorConfig sets how often the backend is looked at.
type MonitorConfig struct {
	// CheckInterval is the time between refreshes of the backend's key state (kek.Check).
	CheckInterval time.Duration
	// ProofInterval is the longest time between two wrap+unwrap round trips. Successful real
	// requests count as proof, so a busy plugin rarely needs a probe of its own.
	ProofInterval time.Duration
	// Timeout bounds one refresh.
	Timeout time.Duration
	// Grace is how long after the backend last answered the plugin serves from memory (its
	// DEK cache and local KEK) while the backend is unreachable; 0: never. A backend that
	// answers with a refusal (revoked token, deleted key) ends it at once.
	Grace time.Duration
}

// DefaultMonitorConfig suits local keys; remote backends may prove less often.
var DefaultMonitorConfig = MonitorConfig{CheckInterval: 10 * time.Second, ProofInterval: time.Minute, Timeout: 5 * time.Second}

// NewMonitor returns a Monitor of kek. Call Refresh once before serving, then Run.
func NewMonitor(kek dek.KEK, cfg MonitorConfig, clk clock.Clock, log *slog.Logger) *Monitor {
	return &Monitor{kek: kek, cfg: cfg, clock: clk, log: log, err: errors.New("not checked yet")}
}

// State returns the key id to report and nil, or the reason the backend is unhealthy. The key
// id is "" only while the backend has never been healthy.
func (m *Monitor) State() (keyID string, unhealthy error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.keyID, m.err
}

// Retry bounds of a plugin that cannot serve (no key id yet, or past the grace) and is not
// refused: it looks at the backend again after a jittered wait that doubles from RetryBase up
// to RetryMax instead of the check interval, so that the backend's return reaches the
// apiserver within its own 10 s poll of an unhealthy plugin. With a control plane's few plugins per cluster,
// one refresh every 2 to 4 s each is far below what a recovering Vault serves.
const (
	RetryBase = time.Second
	RetryMax  = 4 * time.Second
)

// Run refreshes every CheckInterval until ctx ends, and on a short backoff (RetryBase to
// RetryMax) while the plugin cannot serve.
//
// Refreshes keep a fixed cadence, not "interval after the last one ended": a backend that
// adopts a new key after two checks (Vault) then shows it within two intervals, however long
// each check takes.
func (m *Monitor) Run(ctx context.Context) {
	next := m.clock.Now()
	failures := 0
	for {
		if serving, refused := m.canServe(); serving || refused {
			// A refusal is an answer: asking again within seconds would only fill Vault's audit
			// log with denials until an operator fixes the token or policy; the check interval
			// is soon enough after that.
			if failures > 0 {
				next, failures = m.clock.Now(), 0 // the cadence starts from here
			}
			next = next.Add(m.cfg.CheckInterval)
		} else {
			failures++
			next = m.clock.Now().Add(min(retryWait(failures), m.cfg.CheckInterval))
		}
		if now := m.clock.Now(); next.Before(now) {
			next = now // a refresh overran a whole interval: start again from now
		}
		select {
		case <-ctx.Done():
			return
		case <-m.clock.After(next.Sub(m.clock.Now())):
			m.Refresh(ctx)
		}
	}
}

// canServe reports whether Status reports a key id and health (from the backend, or from
// memory within the grace): what the apiserver needs to encrypt and decrypt; and whether the
// backend refuses.
func (m *Monitor) canServe() (serving, refused bool) {
	keyID, unhealthy := m.Health()
	m.mu.Lock()
	refused = m.refused != nil
	m.mu.Unlock()
	return keyID != "" && unhealthy == nil, refused
}

// retryWait is the jittered wait after the n-th refresh in a row that left the plugin unable
// to serve: uniformly within [d/2, d], d = RetryBase * 2^(n-1) capped at RetryMax, so that the
// plugins of several nodes do not retry in step.
func retryWait(n int) time.Duration {
	d := RetryBase << min(n-1, 8)
	if d > RetryMax {
		d = RetryMax
	}
	return d/2 + mrand.N(d/2+1)
}

// Refresh looks at the backend once: its key state, and a round trip when one is due.
func (m *Monitor) Refresh(ctx context.Context) {
	m.refreshing.Lock()
	defer m.refreshing.Unlock()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()

	err := m.kek.Check(ctx)
	id := m.kek.CurrentID()
	if err == nil && id == "" {
		err = errors.New("backend has no current key")
	}
	m.mu.Lock()
	// After a refusal only a full round trip is a "yes": a key that reads is not a key that
	// wraps and unwraps for this token.
	proofDue := m.err != nil || m.refused != nil || id != m.keyID || m.proofAgeLocked() >= m.cfg.ProofInterval
	m.mu.Unlock()
	if err == nil && proofDue {
		err = m.prove(ctx, id)
	}

	m.record(id, err, proofDue)
	m.mu.Lock()
	keyID, unhealthy, observers := m.keyID, m.err, m.observers
	m.mu.Unlock()
	for _, f := range observers {
		f(keyID, unhealthy)
	}
}

// OnRefresh registers f to be called after every refresh with the backend's state (State: the
// last good key id and the backend's own error, before any serving from memory; Health is what
// Status reports), so that the gRPC health service and the metrics follow each refresh. f must not block;
// refreshes take turns, so calls come one at a time and in order.
func (m *Monitor) OnRefresh(f func(keyID string, unhealthy error)) {
	m.mu.Lock()
	m.observers = append(m.observers, f)
	m.mu.Unlock()
}

// record stores the outcome of one refresh.
func (m *Monitor) record(id string, err error, proofDue bool) {
	m.mu.Lock()
	if err != nil {
		refusal := m.failedLocked(err)
		m.mu.Unlock()
		if refusal {
			m.refusedNow(err)
		}
		return
	}
	defer m.mu.Unlock()
	wasHealthy := m.err == nil && m.refused == nil
	m.checked = true
	m.answered = m.clock.Now()
	if proofDue {
		m.lastWrap, m.lastUnwrap = m.answered, m.answered
	}
	if id != m.keyID {
		if m.keyID != "" {
			m.log.Info("key rotation: new key id", "old_key_id", m.keyID, "key_id", id)
		}
		m.keyID = id
	}
	m.err, m.refused, m.serving, m.graceEnded = nil, nil, false, false
	if !wasHealthy {
		m.log.Info("backend healthy", "key_id", id)
	}
}

// failedLocked records a failed refresh and logs what it changes; it reports whether err is a
// new refusal.
func (m *Monitor) failedLocked(err error) (newRefusal bool) {
	wasHealthy, first, before := m.err == nil && m.refused == nil, !m.checked, m.err
	m.checked = true
	m.err = err
	if dek.Refused(err) {
		newRefusal = m.refused == nil
		m.refused = err
	}
	memErr := m.fromMemoryLocked()
	wasServing := m.serving
	m.serving = memErr == nil
	switch {
	case memErr == nil:
		since := m.clock.Now().Sub(m.answered)
		m.log.Warn("SERVING FROM MEMORY: the backend is unreachable; Encrypt and Decrypt use the DEK cache and local KEK until it answers or the grace ends",
			"key_id", m.keyID, "unreachable_for", since.Round(time.Second).String(), "grace_left", (m.cfg.Grace - since).Round(time.Second).String(), "error", err)
	case newRefusal:
		m.log.Error("BACKEND REFUSES: nothing is served from memory (DEK cache and local KEK dropped) until a check and a round trip succeed again",
			"key_id", m.keyID, "error", err)
	case m.refused != nil:
		// Said when the backend stops refusing and starts failing otherwise (unreachable, say):
		// memory stays closed all the same.
		if wasHealthy || wasServing || (before != nil && dek.Refused(before) && !dek.Refused(err)) {
			m.log.Warn("backend unhealthy after refusing; nothing is served from memory until it accepts again", "key_id", m.keyID, "error", err)
		}
	case m.keyID == "" && first:
		m.log.Warn("backend unhealthy and no key id yet: Status answers Unavailable until the backend answers", "error", err)
	case m.cfg.Grace > 0 && !m.answered.IsZero() && !m.graceEnded:
		// The grace ran out since the last refresh (or in it): said once per outage.
		m.graceEnded = true
		m.log.Error("GRACE ENDED: the backend has been unreachable past --vault-memory-grace; nothing is served from memory, Status reports the error, and requests that need the backend fail until it answers",
			"key_id", m.keyID, "unreachable_for", m.clock.Now().Sub(m.answered).Round(time.Second).String(), "grace", m.cfg.Grace.String(), "error", err)
	case wasHealthy || first:
		// Status keeps the key id: an outage is no rotation.
		m.log.Warn("backend unhealthy; Status keeps the last good key id", "key_id", m.keyID, "error", err)
	}
	return newRefusal
}

// Refused records that a real request was refused by the backend (dek.Refused): from then on
// nothing is served from memory until a refresh succeeds, exactly as if a check had been
// refused. Errors that are no refusal are ignored.
func (m *Monitor) Refused(err error) {
	if !dek.Refused(err) {
		return
	}
	m.mu.Lock()
	first, keyID := m.refused == nil, m.keyID
	m.refused = err
	m.mu.Unlock()
	if first {
		m.log.Error("BACKEND REFUSES a request: nothing is served from memory (DEK cache and local KEK dropped) until a check and a round trip succeed again",
			"key_id", keyID, "error", err)
		m.refusedNow(err)
	}
}

// OnRefusal registers f to be called once each time the backend starts refusing, after the
// Monitor has stopped memory from being served: serve drops its DEK cache and local KEK there.
func (m *Monitor) OnRefusal(f func(err error)) {
	m.mu.Lock()
	m.onRefusal = append(m.onRefusal, f)
	m.mu.Unlock()
}

func (m *Monitor) refusedNow(err error) {
	m.mu.Lock()
	fs := m.onRefusal
	m.mu.Unlock()
	for _, f := range fs {
		f(err)
	}
}

// Wrapped and Unwrapped record that a real request just used the backend successfully; once
// both have, the next probe round trip can wait. Call them for backend calls only, not for
// answers from memory.
func (m *Monitor) Wrapped() {
	now := m.clock.Now()
	m.mu.Lock()
	m.lastWrap, m.answered = now, now
	m.mu.Unlock()
}

func (m *Monitor) Unwrapped() {
	now := m.clock.Now()
	m.mu.Lock()
	m.lastUnwrap, m.answered = now, now
	m.mu.Unlock()
}

// FromMemory returns nil while keys held in memory may be served: the backend is healthy, or
// failing without refusing (unreachable, sealed, an error it does not explain) for less than
// the grace since it last answered, and has not refused since its last successful refresh.
func (m *Monitor) FromMemory() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fromMemoryLocked()
}

func (m *Monitor) fromMemoryLocked() error {
	switch {
	case m.refused != nil:
		return fmt.Errorf("the backend refused, so nothing is served from memory until it accepts again: %w", m.refused)
	case m.err == nil:
		return nil
	case m.answered.IsZero():
		return fmt.Errorf("the backend has not answered since the plugin started: %w", m.err)
	case m.cfg.Grace <= 0:
		return fmt.Errorf("serving from memory is off (grace 0): %w", m.err)
	}
	if since := m.clock.Now().Sub(m.answered); since >= m.cfg.Grace {
		return fmt.Errorf("the backend has been unreachable for %s, past the grace of %s: %w", since.Round(time.Second), m.cfg.Grace, m.err)
	}
	return nil
}

// Memory describes serving from memory now: whether the plugin does, since when the backend
// has not answered, and how much of the grace is left.
type Memory struct {
	Serving   bool
	Since     time.Time
	GraceLeft time.Duration
}

// Memory returns the state of serving from memory.
func (m *Monitor) Memory() Memory {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil || m.fromMemoryLocked() != nil {
		return Memory{}
	}
	return Memory{Serving: true, Since: m.answered, GraceLeft: m.cfg.Grace - m.clock.Now().Sub(m.answered)}
}

// Health is what Status, the gRPC health service and /readyz report: the backend's state,
// except that serving from memory within the grace counts as healthy (the apiserver keeps
// the plugin while it can still serve; the logs and metrics say it serves from memory).
//
// A refusal stays in the answer until a refresh succeeds, whatever failed after it.
func (m *Monitor) Health() (keyID string, unhealthy error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.refused != nil && (m.err == nil || m.err == m.refused):
		return m.keyID, m.refused
	case m.refused != nil:
		return m.keyID, fmt.Errorf("%w; it refused before, with no successful check since: %w", m.err, m.refused)
	case m.err != nil && m.keyID != "" && m.checked && m.fromMemoryLocked() == nil:
		return m.keyID, nil
	}
	return m.keyID, m.err
}

// Restore takes the key id and the time the backend last answered as kept before a restart
// (plugin/keep), so that a plugin restarted during an outage serves from memory for what is
// left of the grace. It never moves the last answer forward: the grace keeps counting from
// the backend's last answer before the restart. It refuses a state past the grace, one from
// the future (the clock went back), and any after the Monitor has heard from the backend.
// Until its first refresh the Monitor stays unhealthy ("restarted; not checked yet").
func (m *Monitor) Restore(keyID string, answered time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	switch {
	case keyID == "" || answered.IsZero():
		return errors.New("no key id or no last answer")
	case m.checked || !m.answered.IsZero() || m.keyID != "":
		return errors.New("the backend has already been checked since the start")
	case m.cfg.Grace <= 0:
		return errors.New("serving from memory is off (grace 0)")
	case answered.After(now):
		return fmt.Errorf("the backend's last answer (%s) is later than now: the clock went back", answered.UTC().Format(time.RFC3339))
	case now.Sub(answered) >= m.cfg.Grace:
		return fmt.Errorf("the backend last answered %s ago, past the grace of %s", now.Sub(answered).Round(time.Second), m.cfg.Grace)
	}
	m.keyID, m.answered = keyID, answered
	m.err = errors.New("restarted with kept state; not checked yet")
	return nil
}

// Kept returns what is kept across a restart of the Monitor: its key id and the time the
// backend last answered, when memory may be served now (ok); nothing after a refusal or past
// the grace.
func (m *Monitor) Kept() (keyID string, answered time.Time, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keyID == "" || m.answered.IsZero() || m.fromMemoryLocked() != nil {
		return "", time.Time{}, false
	}
	return m.keyID, m.answered, true
}

// proofAgeLocked is the time since the backend last did both a wrap and an unwrap.
func (m *Monitor) proofAgeLocked() time.Duration {
	oldest := m.lastWrap
	if m.lastUnwrap.Before(oldest) {
		oldest = m.lastUnwrap
	}
	return m.clock.Now().Sub(oldest)
}

// prove wraps and unwraps a random DEK under keyID.
func (m *Monitor) prove(ctx context.Context, keyID string) error {
	probe := make([]byte, dek.DEKSize)
	if _, err := rand.Read(probe); err != nil {
		return err
	}
	wrapped, err := m.kek.Wrap(ctx, keyID, probe)
	if err != nil {
		return fmt.Errorf("probe wrap with %s: %w", keyID, err)
	}
	got, err := m.kek.Unwrap(ctx, keyID, wrapped)
	if err != nil {
		return fmt.Errorf("probe unwrap with %s: %w", keyID, err)
	}
	if string(got) != string(probe) {
		return fmt.Errorf("probe with %s: unwrap returned a different key", keyID)
	}
	return nil
}

package plugin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// countingKEK counts backend calls; its "wrapping" is a copy, which is all the Monitor needs.
type countingKEK struct {
	mu                   sync.Mutex
	id                   string
	checkErr, wrapErr    error
	checks, wraps, unwrs int
}

func (k *countingKEK) CurrentID() string { k.mu.Lock(); defer k.mu.Unlock(); return k.id }
func (k *countingKEK) Check(context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.checks++
	return k.checkErr
}
func (k *countingKEK) Wrap(_ context.Context, _ string, d []byte) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.wraps++
	return append([]byte(nil), d...), k.wrapErr
}
func (k *countingKEK) Unwrap(_ context.Context, _ string, w []byte) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.unwrs++
	return append([]byte(nil), w...), nil
}
func (k *countingKEK) counts() (int, int) { k.mu.Lock(); defer k.mu.Unlock(); return k.checks, k.wraps }

func newMonitor(k dek.KEK, clk clock.Clock) *plugin.Monitor {
	cfg := plugin.MonitorConfig{CheckInterval: 10 * time.Second, ProofInterval: time.Minute, Timeout: time.Second}
	return plugin.NewMonitor(k, cfg, clk, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestMonitorProvesOnlyWhenDue(t *testing.T) {
	k := &countingKEK{id: "k1"}
	clk := clock.NewFake(time.Unix(0, 0))
	m := newMonitor(k, clk)
	bg := context.Background()

	m.Refresh(bg) // first refresh always proves
	if _, w := k.counts(); w != 1 {
		t.Fatalf("first refresh: %d wraps, want 1", w)
	}
	clk.Advance(10 * time.Second)
	m.Refresh(bg)
	if c, w := k.counts(); c != 2 || w != 1 {
		t.Fatalf("refresh within the proof interval: %d checks, %d wraps; want 2, 1", c, w)
	}
	// Real traffic proves the backend: no probe needed.
	clk.Advance(55 * time.Second)
	m.Wrapped()
	m.Unwrapped()
	clk.Advance(10 * time.Second)
	m.Refresh(bg)
	if _, w := k.counts(); w != 1 {
		t.Fatalf("after real traffic: %d probe wraps, want 1", w)
	}
	// Only unwraps (decrypt traffic) do not prove wrapping.
	clk.Advance(2 * time.Minute)
	m.Unwrapped()
	m.Refresh(bg)
	if _, w := k.counts(); w != 2 {
		t.Fatalf("with only unwraps: %d probe wraps, want 2", w)
	}
	// A new key id is proved before it is reported.
	k.mu.Lock()
	k.id = "k2"
	k.mu.Unlock()
	m.Refresh(bg)
	if id, err := m.State(); id != "k2" || err != nil {
		t.Fatalf("State = %q, %v", id, err)
	}
	if _, w := k.counts(); w != 3 {
		t.Fatalf("new key id: %d probe wraps, want 3", w)
	}
}

func TestMonitorNewKeyThatFailsIsNotAdopted(t *testing.T) {
	k := &countingKEK{id: "k1"}
	m := newMonitor(k, clock.NewFake(time.Unix(0, 0)))
	m.Refresh(context.Background())
	k.mu.Lock()
	k.id, k.wrapErr = "k2", errors.New("permission denied on k2")
	k.mu.Unlock()
	m.Refresh(context.Background())
	id, err := m.State()
	if id != "k1" || err == nil {
		t.Fatalf("State = %q, %v; want k1 and an error", id, err)
	}
}

func TestMonitorNeverHealthyHasNoKeyID(t *testing.T) {
	k := &countingKEK{checkErr: errors.New("connection refused")}
	m := newMonitor(k, clock.NewFake(time.Unix(0, 0)))
	m.Refresh(context.Background())
	if id, err := m.State(); id != "" || err == nil {
		t.Fatalf("State = %q, %v", id, err)
	}
}

func TestMonitorRunRefreshesOnItsInterval(t *testing.T) {
	k := &countingKEK{id: "k1"}
	clk := clock.NewFake(time.Unix(0, 0))
	m := newMonitor(k, clk)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	for i := 1; i <= 3; i++ {
		waitFor(t, func() bool { return clk.Waiters() == 1 })
		clk.Advance(10 * time.Second)
		waitFor(t, func() bool { c, _ := k.counts(); return c == i })
	}
	cancel()
	<-done
}

// waitFor polls cond; the fake clock decides when the monitor runs, this only waits for the
// goroutine to get there.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

// slowKEK takes 3 s of (fake) time for every Check and records when each one started.
type slowKEK struct {
	countingKEK
	clk    *clock.Fake
	starts chan time.Time
}

func (k *slowKEK) Check(ctx context.Context) error {
	k.starts <- k.clk.Now()
	k.clk.Advance(3 * time.Second)
	return k.countingKEK.Check(ctx)
}

// Slow checks do not stretch the cadence: a key adopted after two checks shows within two
// intervals, whatever each check costs.
func TestMonitorRunKeepsAFixedCadence(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	k := &slowKEK{countingKEK: countingKEK{id: "k1"}, clk: clk, starts: make(chan time.Time, 10)}
	m := newMonitor(k, clk)
	ctx, cancel := context.WithCancel(context.Background())
	m.Refresh(ctx) // as serve does before Run: a healthy plugin then keeps the check interval
	<-k.starts
	origin := clk.Now()
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	for i := 1; i <= 3; i++ {
		waitFor(t, func() bool { return clk.Waiters() == 1 })
		clk.Advance(time.Duration(10*i)*time.Second - clk.Now().Sub(origin))
		if got := (<-k.starts).Sub(origin); got != time.Duration(10*i)*time.Second {
			t.Fatalf("check %d started at %v, want %ds", i, got, 10*i)
		}
	}
	cancel()
	<-done
}

// gateKEK holds the probe wrap of key "A" until gate closes (or a moment passes).
type gateKEK struct {
	countingKEK
	gate chan struct{}
	held chan struct{}
}

func (k *gateKEK) Wrap(ctx context.Context, id string, d []byte) ([]byte, error) {
	if id == "A" {
		close(k.held)
		select {
		case <-k.gate:
		case <-time.After(200 * time.Millisecond): // only how long a serialized refresh waits
		}
	}
	return k.countingKEK.Wrap(ctx, id, d)
}

// A SIGHUP refresh beside the periodic one must not let the older view land last: the key id
// would move back (B, then A again), which the apiserver takes for two rotations.
func TestMonitorConcurrentRefreshesNeverMoveTheKeyBack(t *testing.T) {
	k := &gateKEK{countingKEK: countingKEK{id: "A"}, gate: make(chan struct{}), held: make(chan struct{})}
	m := newMonitor(k, clock.NewFake(time.Unix(0, 0)))
	first := make(chan struct{})
	go func() { m.Refresh(context.Background()); close(first) }() // sees A, proof held
	<-k.held
	k.mu.Lock()
	k.id = "B" // a reload moves the key
	k.mu.Unlock()
	second := make(chan struct{})
	go func() { m.Refresh(context.Background()); close(second); close(k.gate) }() // sees B
	<-first
	<-second
	if id, err := m.State(); id != "B" || err != nil {
		t.Fatalf("State = %q, %v after both refreshes; want B", id, err)
	}
}

// Serving from memory, on the fake clock: while the backend is unreachable, memory is served
// (and Status is healthy) for the grace since the backend last answered, then not; a refusal
// ends it at once; a plugin that never heard the backend never serves from memory.
func TestMonitorServesFromMemoryWithinTheGrace(t *testing.T) {
	unreachable := fmt.Errorf("%w: connection refused", dek.ErrUnavailable)
	denied := fmt.Errorf("%w: permission denied", dek.ErrDenied)
	start := func(t *testing.T, checkErr error) (*countingKEK, *clock.Fake, *plugin.Monitor) {
		k := &countingKEK{id: "k1", checkErr: checkErr}
		clk := clock.NewFake(time.Unix(0, 0))
		cfg := plugin.MonitorConfig{CheckInterval: 10 * time.Second, ProofInterval: time.Minute, Timeout: time.Second, Grace: time.Hour}
		m := plugin.NewMonitor(k, cfg, clk, slog.New(slog.NewTextHandler(io.Discard, nil)))
		for range 2 { // a first key id is adopted after two reads that agree
			m.Refresh(context.Background())
		}
		return k, clk, m
	}
	fail := func(k *countingKEK, err error) { k.mu.Lock(); k.checkErr = err; k.mu.Unlock() }

	t.Run("never answered", func(t *testing.T) {
		_, _, m := start(t, unreachable)
		if err := m.FromMemory(); err == nil {
			t.Error("FromMemory: nil before the backend ever answered")
		}
		if id, err := m.Health(); id != "" || err == nil {
			t.Errorf("Health = %q, %v; want no key id and the error", id, err)
		}
	})

	t.Run("unreachable, within then past the grace", func(t *testing.T) {
		k, clk, m := start(t, nil)
		clk.Advance(10 * time.Minute)
		fail(k, unreachable)
		m.Refresh(context.Background())
		if err := m.FromMemory(); err != nil {
			t.Fatalf("FromMemory within the grace: %v", err)
		}
		if mem := m.Memory(); !mem.Serving || mem.GraceLeft != 50*time.Minute {
			t.Errorf("Memory = %+v, want serving with 50m left", mem)
		}
		if id, err := m.Health(); id != "k1" || err != nil {
			t.Errorf("Health within the grace = %q, %v; want k1, healthy", id, err)
		}
		if _, err := m.State(); !errors.Is(err, dek.ErrUnavailable) {
			t.Errorf("State within the grace: %v; want the backend's own error", err)
		}

		clk.Advance(50 * time.Minute)
		m.Refresh(context.Background())
		if err := m.FromMemory(); err == nil {
			t.Error("FromMemory: nil past the grace")
		}
		if _, err := m.Health(); err == nil {
			t.Error("Health: healthy past the grace")
		}
		if m.Memory().Serving {
			t.Error("Memory: serving past the grace")
		}

		fail(k, nil)
		m.Refresh(context.Background())
		if id, err := m.Health(); id != "k1" || err != nil || m.FromMemory() != nil {
			t.Errorf("after the backend is back: Health = %q, %v", id, err)
		}
	})

	t.Run("a refusal ends it at once", func(t *testing.T) {
		k, _, m := start(t, nil)
		fail(k, denied)
		m.Refresh(context.Background())
		if err := m.FromMemory(); err == nil {
			t.Error("FromMemory: nil while the backend refuses")
		}
		if _, err := m.Health(); !errors.Is(err, dek.ErrDenied) {
			t.Errorf("Health while the backend refuses: %v", err)
		}
	})
}

// capture is a slog handler that keeps the messages logged, for tests of what the log says.
type capture struct {
	mu   sync.Mutex
	msgs []string
}

func (c *capture) Enabled(context.Context, slog.Level) bool { return true }
func (c *capture) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	c.msgs = append(c.msgs, r.Message)
	c.mu.Unlock()
	return nil
}
func (c *capture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *capture) WithGroup(string) slog.Handler      { return c }
func (c *capture) count(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// Once the backend has said no, nothing is served from memory until it says yes again: an
// outage after the refusal does not re-open the grace, and only a refresh whose check and
// round trip both succeed ends it.
func TestMonitorRefusalOutlivesALaterOutage(t *testing.T) {
	unreachable := fmt.Errorf("%w: connection refused", dek.ErrUnavailable)
	denied := fmt.Errorf("%w: permission denied", dek.ErrDenied)
	k := &countingKEK{id: "k1"}
	clk := clock.NewFake(time.Unix(0, 0))
	cfg := plugin.MonitorConfig{CheckInterval: 10 * time.Second, ProofInterval: time.Minute, Timeout: time.Second, Grace: time.Hour}
	m := plugin.NewMonitor(k, cfg, clk, slog.New(slog.DiscardHandler))
	var refusals []error
	m.OnRefusal(func(err error) { refusals = append(refusals, err) })
	m.Refresh(context.Background())
	set := func(check, wrap error) { k.mu.Lock(); k.checkErr, k.wrapErr = check, wrap; k.mu.Unlock() }

	set(denied, nil)
	clk.Advance(10 * time.Second)
	m.Refresh(context.Background())
	set(unreachable, nil)
	for range 3 {
		clk.Advance(10 * time.Second)
		m.Refresh(context.Background())
		if err := m.FromMemory(); err == nil {
			t.Fatal("FromMemory: nil during an outage that followed a refusal")
		}
		if mem := m.Memory(); mem.Serving {
			t.Fatalf("Memory = %+v during an outage that followed a refusal", mem)
		}
		if id, err := m.Health(); id != "k1" || !errors.Is(err, dek.ErrDenied) || !errors.Is(err, dek.ErrUnavailable) {
			t.Fatalf("Health = %q, %v; want k1, the outage and the refusal before it", id, err)
		}
	}
	if len(refusals) != 1 {
		t.Fatalf("OnRefusal called %d times; want once for the one refusal", len(refusals))
	}

	// The key reads again but the token still may not wrap: still refused.
	set(nil, denied)
	clk.Advance(10 * time.Second)
	m.Refresh(context.Background())
	if err := m.FromMemory(); err == nil {
		t.Fatal("FromMemory: nil after a check that read the key but a wrap that was denied")
	}
	// A full yes ends it.
	set(nil, nil)
	clk.Advance(10 * time.Second)
	m.Refresh(context.Background())
	if err := m.FromMemory(); err != nil {
		t.Fatalf("FromMemory after the backend accepts again: %v", err)
	}
	if id, err := m.Health(); id != "k1" || err != nil {
		t.Fatalf("Health after the backend accepts again = %q, %v", id, err)
	}
}

// A request that the backend denies ends serving from memory at once, without waiting for a
// check; errors that are no refusal (an unexplained status, an outage) do not.
func TestMonitorRequestRefusalEndsMemoryAtOnce(t *testing.T) {
	k := &countingKEK{id: "k1"}
	m := newMonitor(k, clock.NewFake(time.Unix(0, 0)))
	refused := 0
	m.OnRefusal(func(error) { refused++ })
	m.Refresh(context.Background())
	m.Refused(errors.New("vault answered 412: required index state not present"))
	m.Refused(fmt.Errorf("%w: connection refused", dek.ErrUnavailable))
	if err := m.FromMemory(); err != nil || refused != 0 {
		t.Fatalf("after errors that are no refusal: FromMemory %v, %d refusals", err, refused)
	}
	proving := m.Proving(&countingKEK{id: "k1", wrapErr: fmt.Errorf("%w: permission denied", dek.ErrDenied)})
	if _, err := proving.Wrap(context.Background(), "k1", []byte("dek")); err == nil {
		t.Fatal("the denied wrap succeeded")
	}
	if err := m.FromMemory(); !errors.Is(err, dek.ErrDenied) || refused != 1 {
		t.Fatalf("after a denied request: FromMemory %v, %d refusals; want the denial, 1", err, refused)
	}
	if _, err := m.Health(); !errors.Is(err, dek.ErrDenied) {
		t.Fatalf("Health after a denied request: %v", err)
	}
}

// An error that is neither an outage nor a refusal (a 412, a status the backend does not
// explain) neither ends the grace nor extends it: memory serves until the grace, counted from
// the backend's last real answer, runs out.
func TestMonitorUnexplainedErrorsNeitherEndNorExtendTheGrace(t *testing.T) {
	k := &countingKEK{id: "k1"}
	clk := clock.NewFake(time.Unix(0, 0))
	cfg := plugin.MonitorConfig{CheckInterval: 10 * time.Second, ProofInterval: time.Minute, Timeout: time.Second, Grace: time.Hour}
	m := plugin.NewMonitor(k, cfg, clk, slog.New(slog.DiscardHandler))
	m.Refresh(context.Background())
	k.mu.Lock()
	k.checkErr = errors.New("reading transit/keys/k: vault answered 412: required index state not present")
	k.mu.Unlock()
	clk.Advance(30 * time.Minute)
	m.Refresh(context.Background())
	if err := m.FromMemory(); err != nil {
		t.Fatalf("FromMemory within the grace after a 412: %v", err)
	}
	clk.Advance(30 * time.Minute)
	m.Refresh(context.Background())
	if err := m.FromMemory(); err == nil {
		t.Fatal("FromMemory: nil an hour after the last real answer, with only 412s since")
	}
}

// The end of the grace is logged once, at the first refresh past it, as the docs say.
func TestMonitorLogsTheEndOfTheGrace(t *testing.T) {
	k := &countingKEK{id: "k1"}
	clk := clock.NewFake(time.Unix(0, 0))
	logs := &capture{}
	cfg := plugin.MonitorConfig{CheckInterval: 10 * time.Second, ProofInterval: time.Minute, Timeout: time.Second, Grace: time.Minute}
	m := plugin.NewMonitor(k, cfg, clk, slog.New(logs))
	m.Refresh(context.Background())
	k.mu.Lock()
	k.checkErr = fmt.Errorf("%w: connection refused", dek.ErrUnavailable)
	k.mu.Unlock()
	for range 12 {
		clk.Advance(10 * time.Second)
		m.Refresh(context.Background())
	}
	if n := logs.count("GRACE ENDED"); n != 1 {
		t.Fatalf("GRACE ENDED logged %d times in an outage that outlived the grace; want 1 (log: %q)", n, logs.msgs)
	}
	if n := logs.count("SERVING FROM MEMORY"); n != 5 {
		t.Fatalf("SERVING FROM MEMORY logged %d times; want 5, one per refresh within the grace", n)
	}
}

// A plugin that cannot serve looks at the backend again within seconds, not at the next check:
// the backend's return must reach the apiserver within its own 10 s poll. Once it serves again,
// the check interval is back.
func TestMonitorRetriesQuicklyWhileItCannotServe(t *testing.T) {
	k := &countingKEK{id: "k1", checkErr: fmt.Errorf("%w: connection refused", dek.ErrUnavailable)}
	clk := clock.NewFake(time.Unix(0, 0))
	cfg := plugin.MonitorConfig{CheckInterval: time.Minute, ProofInterval: time.Hour, Timeout: time.Second}
	m := plugin.NewMonitor(k, cfg, clk, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m.Refresh(ctx) // no key id yet: cannot serve
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// Each wait is at most RetryMax (jittered from RetryBase up), never the minute's interval.
	for i := 2; i <= 6; i++ {
		waitFor(t, func() bool { return clk.Waiters() == 1 })
		clk.Advance(plugin.RetryMax)
		waitFor(t, func() bool { c, _ := k.counts(); return c == i })
	}
	k.mu.Lock()
	k.checkErr = nil
	k.mu.Unlock()
	waitFor(t, func() bool { return clk.Waiters() == 1 })
	clk.Advance(plugin.RetryMax)
	waitFor(t, func() bool { c, _ := k.counts(); return c == 7 })
	if id, err := m.Health(); id != "k1" || err != nil {
		t.Fatalf("after the backend answered: Health = %q, %v", id, err)
	}
	// Healthy: the next check waits the whole interval.
	waitFor(t, func() bool { return clk.Waiters() == 1 })
	clk.Advance(cfg.CheckInterval - time.Second)
	time.Sleep(20 * time.Millisecond)
	if c, _ := k.counts(); c != 7 {
		t.Fatalf("a healthy plugin checked again after %v: %d checks", cfg.CheckInterval-time.Second, c)
	}
	clk.Advance(time.Second + plugin.RetryMax)
	waitFor(t, func() bool { c, _ := k.counts(); return c == 8 })
}

func (k *countingKEK) unwrapCount() int { k.mu.Lock(); defer k.mu.Unlock(); return k.unwrs }

// A backend that refuses is asked again at the check interval, not within seconds: a refusal
// is an answer, and quick retries would only fill its audit log with denials.
func TestMonitorKeepsTheCheckIntervalWhileRefused(t *testing.T) {
	k := &countingKEK{id: "k1", checkErr: fmt.Errorf("%w: permission denied", dek.ErrDenied)}
	clk := clock.NewFake(time.Unix(0, 0))
	cfg := plugin.MonitorConfig{CheckInterval: time.Minute, ProofInterval: time.Hour, Timeout: time.Second}
	m := plugin.NewMonitor(k, cfg, clk, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m.Refresh(ctx)
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, func() bool { return clk.Waiters() == 1 })
	clk.Advance(cfg.CheckInterval - time.Second)
	time.Sleep(20 * time.Millisecond)
	if c, _ := k.counts(); c != 1 {
		t.Fatalf("a refused plugin checked again within %v: %d checks", cfg.CheckInterval-time.Second, c)
	}
	clk.Advance(time.Second)
	waitFor(t, func() bool { c, _ := k.counts(); return c == 2 })
}

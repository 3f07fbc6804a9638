package plugin_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/integration/harness/swtpm"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/plugin/keep"
	"github.com/kmsplugin/kms-plugin/plugin/keep/tpm"
)

// memStore is a keep.Store in memory: the stores themselves are tested in plugin/keep.
type memStore struct {
	mu     sync.Mutex
	b      []byte
	erases int
}

func (s *memStore) Save(b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append([]byte(nil), b...)
	return nil
}
func (s *memStore) Load() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil {
		return nil, fs.ErrNotExist
	}
	return append([]byte(nil), s.b...), nil
}
func (s *memStore) Erase() error   { s.mu.Lock(); defer s.mu.Unlock(); s.b = nil; s.erases++; return nil }
func (s *memStore) String() string { return "memory" }
func (s *memStore) kept(t *testing.T) *keep.Snapshot {
	t.Helper()
	b, err := s.Load()
	if err != nil {
		return nil
	}
	snap, err := keep.Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// flakyKEK is a backend that works, is unreachable, or refuses, as the test says. Its wrap
// is a XOR, so that a wrapped key is not the key.
type flakyKEK struct {
	mu             sync.Mutex
	id             string
	err            error
	wraps, unwraps int
}

func (k *flakyKEK) set(err error)     { k.mu.Lock(); k.err = err; k.mu.Unlock() }
func (k *flakyKEK) CurrentID() string { return k.id }
func (k *flakyKEK) Check(context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.err
}
func (k *flakyKEK) Wrap(_ context.Context, _ string, d []byte) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.wraps++ // attempts: a test that no call reaches the backend must see failed ones too
	if k.err != nil {
		return nil, k.err
	}
	return xor(d), nil
}
func (k *flakyKEK) Unwrap(_ context.Context, _ string, w []byte) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.unwraps++
	if k.err != nil {
		return nil, k.err
	}
	return xor(w), nil
}

// calls counts the backend calls tried, failed ones included.
func (k *flakyKEK) calls() int { k.mu.Lock(); defer k.mu.Unlock(); return k.wraps + k.unwraps }

func xor(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[i] = b[i] ^ 0x5a
	}
	return out
}

var (
	errUnreachable = fmt.Errorf("%w: dial tcp: connection refused", dek.ErrUnavailable)
	errDenied      = fmt.Errorf("%w: permission denied", dek.ErrDenied)
)

const grace = 4 * time.Hour

// keptStack starts a stack in local KEK mode, keeping its memory in store, as serve does. It
// stops when the test ends, or at stop (a graceful stop of the process: its last save done).
// Stop one before starting the next on the same store: two plugins never share one.
func keptStack(t *testing.T, k dek.KEK, store keep.Store, clk clock.Clock) (st *plugin.Stack, stop func()) {
	t.Helper()
	st = plugin.New(plugin.Config{
		KEK: k,
		Memory: &plugin.MemoryConfig{LocalKEK: true, LocalKEKMaxAge: 24 * time.Hour, Grace: grace,
			Keep: &plugin.KeepConfig{Store: store, Binding: "vault test/transit/k"}},
		Monitor: plugin.MonitorConfig{CheckInterval: time.Hour, ProofInterval: time.Hour, Timeout: time.Second},
		Clock:   clk,
	})
	ctx, cancel := context.WithCancel(context.Background())
	st.Start(ctx)
	stop = func() { cancel(); st.Wait() }
	t.Cleanup(stop)
	return st, stop
}

// serving checks that the stack serves without the backend: Status healthy with keyID, a
// Decrypt of ct and an Encrypt, all without a backend call.
func serving(t *testing.T, st *plugin.Stack, k *flakyKEK, keyID string, ct []byte) {
	t.Helper()
	if id, err := st.Monitor.Health(); err != nil || id != keyID {
		t.Fatalf("Health = %q, %v; want %q, healthy (serving from memory)", id, err, keyID)
	}
	before := k.calls()
	ctx := context.Background()
	if pt, _, err := st.Sealer.Decrypt(ctx, ct); err != nil || string(pt) != "seed before" {
		t.Fatalf("Decrypt of an envelope written before the restart: %q, %v", pt, err)
	}
	ct2, err := st.Sealer.Encrypt(ctx, keyID, []byte("seed after"))
	if err != nil {
		t.Fatalf("Encrypt after the restart: %v", err)
	}
	if pt, _, err := st.Sealer.Decrypt(ctx, ct2); err != nil || string(pt) != "seed after" {
		t.Fatalf("Decrypt of an envelope written after the restart: %q, %v", pt, err)
	}
	if n := k.calls() - before; n != 0 {
		t.Fatalf("%d backend calls: want none", n)
	}
}

// before runs a plugin that writes an envelope and keeps its state, then stops it.
func before(t *testing.T, k *flakyKEK, store *memStore, clk *clock.Fake) []byte {
	t.Helper()
	st, stop := keptStack(t, k, store, clk)
	defer stop()
	ct, err := st.Sealer.Encrypt(context.Background(), k.id, []byte("seed before"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Keeper.Save(); err != nil {
		t.Fatal(err)
	}
	snap := store.kept(t)
	if snap == nil || snap.KeyID != k.id || snap.LocalKEK == nil || len(snap.Entries) == 0 || !snap.Answered.Equal(clk.Now()) {
		t.Fatalf("kept %+v; want key id, last answer, local KEK and entries", snap)
	}
	snap.Clear()
	return ct
}

// A plugin restarted while its backend is unreachable serves reads and writes for the rest of
// the grace, counted from the backend's last answer before the restart, and no longer.
func TestRestartDuringOutageServesForTheRestOfTheGrace(t *testing.T) {
	k := &flakyKEK{id: "k1"}
	store := &memStore{}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	answered := clk.Now()
	ct := before(t, k, store, clk)

	k.set(errUnreachable)
	clk.Advance(time.Hour)
	st, stop := keptStack(t, k, store, clk)
	serving(t, st, k, "k1", ct)
	if left := st.Monitor.Memory().GraceLeft; left != grace-time.Hour {
		t.Fatalf("grace left after the restart: %s; want %s (counted from the last answer before it)", left, grace-time.Hour)
	}
	// The restarted plugin saves the last answer it restored, never a later one.
	if err := st.Keeper.Save(); err != nil {
		t.Fatal(err)
	}
	if snap := store.kept(t); snap == nil || !snap.Answered.Equal(answered) {
		t.Fatalf("kept after the restart: %+v; want the last answer %s", snap, answered)
	}

	// A second restart, later in the same outage: still the same grace.
	stop()
	clk.Advance(2 * time.Hour)
	st, _ = keptStack(t, k, store, clk)
	serving(t, st, k, "k1", ct)
	clk.Advance(time.Hour) // grace - 0: over
	st.Monitor.Refresh(context.Background())
	if _, err := st.Monitor.Health(); err == nil {
		t.Fatal("healthy past the grace")
	}
	if _, err := st.Sealer.Encrypt(context.Background(), "k1", []byte("x")); err == nil {
		t.Fatal("Encrypt past the grace succeeded")
	}
	if _, _, err := st.Sealer.Decrypt(context.Background(), ct); err == nil {
		t.Fatal("Decrypt past the grace succeeded")
	}
}

// A state kept past the grace is discarded at start, and erased.
func TestRestartPastTheGraceRestoresNothing(t *testing.T) {
	k := &flakyKEK{id: "k1"}
	store := &memStore{}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	ct := before(t, k, store, clk)
	k.set(errUnreachable)
	clk.Advance(grace)
	st, _ := keptStack(t, k, store, clk)
	if id, err := st.Monitor.Health(); err == nil || id != "" {
		t.Fatalf("Health = %q, %v; want no key id and unhealthy", id, err)
	}
	if _, _, err := st.Sealer.Decrypt(context.Background(), ct); err == nil {
		t.Fatal("Decrypt served past the grace")
	}
	if store.kept(t) != nil {
		t.Fatal("a state past the grace is still kept")
	}
}

// Restoring never makes the plugin healthy before its first check: Restore alone leaves the
// Monitor unhealthy.
func TestRestoredMonitorUnhealthyUntilChecked(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	m := plugin.NewMonitor(&flakyKEK{id: "k1"}, plugin.MonitorConfig{CheckInterval: time.Minute, ProofInterval: time.Minute, Timeout: time.Second, Grace: grace}, clk, nil)
	if err := m.Restore("k1", clk.Now().Add(time.Second)); err == nil {
		t.Fatal("Restore accepted a last answer in the future")
	}
	if err := m.Restore("k1", clk.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Health(); err == nil {
		t.Fatal("healthy before the first check")
	}
	if err := m.Restore("k1", clk.Now()); err == nil {
		t.Fatal("a second Restore moved the last answer forward")
	}
}

// A refusal after the restart ends serving and erases the kept state: a plugin started after
// it serves nothing from memory, even once the backend is unreachable again.
func TestRefusalErasesKeptState(t *testing.T) {
	k := &flakyKEK{id: "k1"}
	store := &memStore{}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	ct := before(t, k, store, clk)

	k.set(errUnreachable)
	st, stop := keptStack(t, k, store, clk)
	serving(t, st, k, "k1", ct)
	k.set(errDenied)
	st.Monitor.Refresh(context.Background())
	if store.kept(t) != nil || store.erases == 0 {
		t.Fatal("the kept state survived a refusal")
	}
	if err := st.Keeper.Save(); err != nil || store.kept(t) != nil {
		t.Fatalf("a save after the refusal kept a state (%v)", err)
	}
	stop()
	k.set(errUnreachable)
	st, _ = keptStack(t, k, store, clk)
	if _, _, err := st.Sealer.Decrypt(context.Background(), ct); err == nil {
		t.Fatal("Decrypt served from memory after a refusal")
	}
}

// Errors that are no refusal (unreachable, an unexplained status) neither erase the kept
// state nor move its last answer.
func TestOtherErrorsKeepTheState(t *testing.T) {
	k := &flakyKEK{id: "k1"}
	store := &memStore{}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	answered := clk.Now()
	ct := before(t, k, store, clk)
	for _, err := range []error{errUnreachable, errors.New("vault: 412 precondition failed"), context.DeadlineExceeded} {
		k.set(err)
		clk.Advance(time.Minute)
		st, stop := keptStack(t, k, store, clk)
		st.Monitor.Refresh(context.Background())
		serving(t, st, k, "k1", ct)
		stop() // a graceful stop saves once more
		snap := store.kept(t)
		if snap == nil || !snap.Answered.Equal(answered) {
			t.Fatalf("after %v: kept %+v; want the state, last answer %s", err, snap, answered)
		}
		snap.Clear()
	}
}

// A state kept for another backend configuration is not restored.
func TestKeptStateOfAnotherBindingIsDiscarded(t *testing.T) {
	k := &flakyKEK{id: "k1"}
	store := &memStore{}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	before(t, k, store, clk)
	snap := store.kept(t)
	snap.Binding = "vault other/transit/k"
	b, err := snap.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	store.Save(b)
	k.set(errUnreachable)
	st, _ := keptStack(t, k, store, clk)
	if id, _ := st.Monitor.Health(); id != "" {
		t.Fatalf("restored key id %q of another binding", id)
	}
}

// With the TPM store (a real software TPM), a refusal makes every earlier copy of the kept
// state useless: one put back from a backup is refused at the next start, which serves
// nothing from memory.
func TestRefusalMakesAnOlderTPMStateUseless(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	store, err := tpm.Open(tpm.Config{Device: sw.Device, Dir: dir, PCRs: tpm.DefaultPCRs, NVIndex: tpm.DefaultNVIndex})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	k := &flakyKEK{id: "k1"}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	st, stop := keptStack(t, k, store, clk)
	ct, err := st.Sealer.Encrypt(context.Background(), "k1", []byte("seed before"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Keeper.Save(); err != nil {
		t.Fatal(err)
	}
	backup, err := os.ReadFile(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	k.set(errDenied)
	st.Monitor.Refresh(context.Background())
	stop()
	if err := os.WriteFile(filepath.Join(dir, "state"), backup, 0o600); err != nil {
		t.Fatal(err)
	}
	k.set(errUnreachable)
	st, _ = keptStack(t, k, store, clk)
	if id, _ := st.Monitor.Health(); id != "" {
		t.Fatalf("the older state restored key id %q after a refusal", id)
	}
	if _, _, err := st.Sealer.Decrypt(context.Background(), ct); err == nil {
		t.Fatal("Decrypt served from an older state after a refusal")
	}
}

// judgedKEK is a flakyKEK whose Usable refuses the key ids in retired (a version below
// min_decryption_version, a deleted key).
type judgedKEK struct {
	*flakyKEK
	retired sync.Map
}

func (k *judgedKEK) Usable(keyID string) error {
	if _, ok := k.retired.Load(keyID); ok {
		return fmt.Errorf("%w: %s retired", dek.ErrUnknownKey, keyID)
	}
	return nil
}

// What the backend stops accepting without refusing (a retired version: crypto-shredding) is
// dropped from memory at the next check, and the kept state is erased (with a TPM: the NV
// counter moves) before it is saved again: an older copy put back must not bring the retired
// keys back.
func TestRetiredKeysLeaveTheKeptStateForGood(t *testing.T) {
	k := &judgedKEK{flakyKEK: &flakyKEK{id: "k1"}}
	store := &memStore{}
	st, _ := keptStack(t, k, store, clock.NewFake(time.Unix(1_800_000_000, 0)))
	ctx := context.Background()
	if _, err := st.Sealer.Encrypt(ctx, "k1", []byte("seed before")); err != nil {
		t.Fatal(err)
	}
	st.Monitor.Refresh(ctx)
	if err := st.Keeper.Save(); err != nil {
		t.Fatal(err)
	}
	if snap := store.kept(t); snap == nil || snap.LocalKEK == nil {
		t.Fatal("nothing kept before the retirement")
	}
	k.retired.Store("k1", true)
	k.flakyKEK.mu.Lock()
	k.flakyKEK.id = "k2"
	k.flakyKEK.mu.Unlock()
	st.Monitor.Refresh(ctx)
	if store.erases != 1 {
		t.Fatalf("%d erases after the check that retired k1; want 1", store.erases)
	}
	if err := st.Keeper.Save(); err != nil {
		t.Fatal(err)
	}
	if snap := store.kept(t); snap != nil {
		for _, e := range snap.Entries {
			if e.KeyID == "k1" {
				t.Fatal("the kept state still holds a key under the retired k1")
			}
		}
		if snap.LocalKEK != nil && snap.LocalKEK.KeyID == "k1" {
			t.Fatal("the kept state still holds the local KEK under the retired k1")
		}
	}
}

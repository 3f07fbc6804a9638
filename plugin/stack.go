package plugin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/cache"
	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/plugin/keep"
	"github.com/kmsplugin/kms-plugin/plugin/limit"
	"github.com/kmsplugin/kms-plugin/plugin/metrics"
)

// Config is the serving stack: a backend and what is built around it. Zero fields take their
// defaults; only KEK is required.
type Config struct {
	KEK dek.KEK
	// Remote bounds the backend's calls in number and time, for a backend that waits on another
	// process (Vault). Nil for one that works in memory (localaes): its calls need neither.
	Remote *RemoteCalls
	// Memory is what the plugin keeps to serve through a backend outage (a DEK cache, a local
	// KEK, a grace); nil: nothing is served from memory.
	Memory *MemoryConfig
	// Recovery is the offline recovery key's part: seals to its public key, and break-glass
	// reads with its private key; nil: none.
	Recovery *RecoveryConfig
	Monitor  MonitorConfig // DefaultMonitorConfig when zero; Memory.Grace sets its Grace
	Server   ServerConfig
	// Metrics, when set, counts and times requests and backend calls, and exports the state of
	// every layer below.
	Metrics *metrics.Metrics
	Clock   clock.Clock  // the real clock when nil
	Log     *slog.Logger // discarded when nil
}

// RemoteCalls bound a remote backend's calls.
type RemoteCalls struct {
	MaxCalls int           // calls at once; DefaultMaxCalls when zero
	Queue    int           // calls waiting for a slot (until their deadline)
	Timeout  time.Duration // one call, within the caller's own deadline; DefaultCallTimeout when zero
}

// Defaults of RemoteCalls (serve's --max-concurrent-backend-calls and --timeout).
const (
	DefaultMaxCalls    = 64
	DefaultCallTimeout = 2 * time.Second
)

// MemoryConfig is what the plugin keeps in memory to serve through a backend outage
// (docs/vault.md, "Serving through a Vault outage").
type MemoryConfig struct {
	CacheEntries   int           // unwrapped DEKs (and local KEKs) held; cache.DefaultEntries when zero
	LocalKEK       bool          // local KEK mode: Encrypt needs no backend call
	LocalKEKMaxAge time.Duration // how long one local KEK wraps new DEKs
	Grace          time.Duration // serving from memory after the backend last answered
	// Keep, when set, keeps what memory holds across a restart of the plugin, so that one
	// restarted during an outage serves for the rest of the grace (plugin/keep).
	Keep *KeepConfig
}

// KeepConfig is where and how much of memory is kept across a restart.
type KeepConfig struct {
	Store keep.Store
	// Entries bounds the DEK cache entries kept, most recently used first; keep.DefaultEntries
	// when zero.
	Entries int
	// Binding names the backend's configuration (for Vault: namespace, mount, key): a state
	// kept under another binding is not restored.
	Binding string
}

// Stack is a serving stack, ready to Serve on a listener once Monitor has had its first
// Refresh (and, for a plugin that serves long, Run).
type Stack struct {
	Monitor *Monitor
	Sealer  *dek.Sealer
	Server  *Server
	// Cache is the DEK cache; nil without Config.Memory.
	Cache *cache.KEK
	// Keeper saves what memory holds for a restart; nil without Config.Memory.Keep.
	Keeper *keep.Keeper

	keepCfg KeepConfig
	log     *slog.Logger

	breakGlass *breakGlass // nil unless in break-glass mode
}

// New builds the serving stack: the one place where its layers are put in order. A request
// goes down
//
//	Server → Service → dek.Sealer [→ dek.Recovery in break-glass mode, for envelopes sealed to its key] → [cache.KEK →] [limit.Timeout → limit.KEK →] Monitor.Proving → metrics.KEK → backend
//
// The DEK cache sits on top: a hit takes no slot and is no backend call. The limiter and its
// timeout bound only a remote backend's calls, and sit above metrics.KEK, so that the backend's
// latency does not include the wait for a slot. Monitor.Proving counts what reaches the backend
// as proof (and its denials as refusals), so it sits below the cache. The Monitor's own checks
// go to metrics.KEK directly: never queued behind traffic.
func New(cfg Config) *Stack {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Monitor == (MonitorConfig{}) {
		cfg.Monitor = DefaultMonitorConfig
	}
	m := cfg.Metrics
	measured := cfg.KEK
	if m != nil {
		m.WatchTokenTTL(cfg.KEK)
		m.WatchBatches(cfg.KEK)
		measured = metrics.NewKEK(cfg.KEK, m)
	}
	if cfg.Memory != nil {
		cfg.Monitor.Grace = cfg.Memory.Grace
	}
	monitor := NewMonitor(measured, cfg.Monitor, cfg.Clock, cfg.Log)
	calls := monitor.Proving(measured)
	if r := cfg.Remote; r != nil {
		maxCalls, timeout := r.MaxCalls, r.Timeout
		if maxCalls <= 0 {
			maxCalls = DefaultMaxCalls
		}
		if timeout <= 0 {
			timeout = DefaultCallTimeout
		}
		limited := limit.New(calls, maxCalls, r.Queue)
		if m != nil {
			m.WatchLimiter(limited, maxCalls, r.Queue)
		}
		calls = limit.Timeout(limited, timeout)
	}
	rc := cfg.Recovery
	if rc == nil {
		rc = &RecoveryConfig{}
	}
	stack := &Stack{Monitor: monitor, Sealer: dek.NewSealer(calls), log: cfg.Log}
	if cfg.Memory != nil {
		fromMemory(stack, calls, *cfg.Memory, rc.Seal, cfg.KEK, m, cfg.Clock)
	}
	sealer := stack.Sealer
	if rc.Seal != nil && (cfg.Memory == nil || !cfg.Memory.LocalKEK) {
		// serveconfig refuses this at start; a caller that builds the stack itself hears it too.
		cfg.Log.Error("a recovery public key needs local KEK mode: nothing is sealed to it", "recovery_key", rc.Seal.ID().String())
	}
	if rc.BreakGlass != nil {
		stack.breakGlass = newBreakGlass(rc.BreakGlass, rc.Until, cfg.Clock, cfg.Log)
		sealer.OpenWith(stack.breakGlass.r)
	}
	if m != nil {
		// Exported also when off (0), so that an alert on it never waits for a series to appear.
		m.WatchBreakGlass(stack.BreakGlass)
	}
	if fr, ok := cfg.KEK.(dek.ForeignReader); ok && fr.ReadsVaultKubernetesKMS() {
		// The backend reads vault-kubernetes-kms's envelopes (serve's
		// --vault-read-vault-kubernetes-kms): the sealer sends them to it, and counts them.
		var read func(int)
		if m != nil {
			read = m.WatchVaultKubernetesKMSReads()
		}
		sealer.ReadVaultKubernetesKMS(read)
	}
	if m != nil {
		monitor.OnRefresh(m.ObserveBackend)
		cfg.Server.Options = append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(m.UnaryInterceptor())}, cfg.Server.Options...)
	}
	stack.Server = NewServer(NewService(stack.Sealer, monitor, cfg.Log), cfg.Server)
	return stack
}

// fromMemory is the sealer over a DEK cache (and, in local KEK mode, a local KEK), which the
// Monitor gates: what they hold is served only while the backend is healthy, or unreachable
// within the grace, and is dropped as soon as the backend refuses.
func fromMemory(stack *Stack, calls dek.KEK, mem MemoryConfig, seal *recovery.PublicKey, backend dek.KEK, m *metrics.Metrics, clk clock.Clock) {
	monitor, log := stack.Monitor, stack.log
	cached := cache.New(calls, monitor, mem.CacheEntries)
	var sealer *dek.Sealer
	var keeper *keep.Keeper
	if mem.Keep != nil {
		stack.keepCfg = *mem.Keep
		keeper = keep.NewKeeper(mem.Keep.Store, stack.snapshot, log)
	}
	if mem.LocalKEK {
		var watched func(string)
		if m != nil {
			watched = m.WatchLocalKEKs()
		}
		generated := func(keyID string) {
			if watched != nil {
				watched(keyID)
			}
			if keeper != nil {
				keeper.Changed() // a restart must find the local KEK that wrote the latest envelopes
			}
		}
		sealer = dek.NewLocalSealer(cached, dek.LocalKEKConfig{
			MaxAge: mem.LocalKEKMaxAge, FromMemory: monitor.FromMemory, Generated: generated, Recovery: seal, Clock: clk, Log: log,
		})
	} else {
		sealer = dek.NewSealer(cached)
	}
	stack.Sealer, stack.Cache, stack.Keeper = sealer, cached, keeper
	if m != nil {
		m.WatchCache(cached)
		m.WatchMemory(func() (bool, time.Duration) { s := monitor.Memory(); return s.Serving, s.GraceLeft })
	}
	// A refusal (a check's or a request's) drops everything held in memory at once; the
	// Monitor has already closed the gate, and the purges discard what calls under way return.
	monitor.OnRefusal(func(err error) {
		n := cached.Purge(nil)
		dropped := sealer.DropLocalKEK(nil)
		log.Warn("DEK cache cleared and local KEK dropped: the backend refuses", "entries", n, "local_kek", dropped, "error", err)
		if keeper != nil {
			keeper.Erase(err)
		}
	})
	if judge, ok := backend.(dek.Judge); ok {
		dropped := func(error) {}
		if keeper != nil {
			// An older copy of the kept state would bring back what the backend retired
			// (crypto-shredding): erase it for good (with a TPM the NV counter moves); the save
			// after this check keeps the rest.
			dropped = func(why error) { keeper.Erase(why) }
		}
		monitor.OnRefresh(dropRefused(judge, cached, sealer, log, dropped))
	}
	if keeper != nil {
		// After each successful check (and its purge): the last answer moved, and the cache
		// may hold new DEKs.
		monitor.OnRefresh(func(_ string, unhealthy error) {
			if unhealthy == nil {
				keeper.Changed()
			}
		})
	}
}

// dropRefused is the check's observer that drops from memory what the backend no longer
// accepts, and calls dropped when it drops anything.
func dropRefused(judge dek.Judge, cached *cache.KEK, sealer *dek.Sealer, log *slog.Logger, dropped func(why error)) func(string, error) {
	return func(_ string, unhealthy error) {
		if unhealthy != nil {
			return
		}
		// What the backend no longer accepts (a version below min_decryption_version, a
		// deleted or recreated key) stops being served from memory within one check.
		n := cached.Purge(judge.Usable)
		if n > 0 {
			log.Info("DEK cache: dropped keys the backend no longer accepts", "entries", n)
		}
		localKEK := sealer.DropLocalKEK(judge.Usable)
		if localKEK {
			log.Info("local KEK dropped: the backend no longer accepts its key id")
		}
		if n > 0 || localKEK {
			dropped(fmt.Errorf("the backend no longer accepts keys memory held (%d cache entries, local KEK %v): a retired version, a deleted or recreated key", n, localKEK))
		}
	}
}

// Start restores what was kept before a restart (with Memory.Keep), refreshes the Monitor
// once and keeps refreshing it until ctx ends; the Keeper saves until then, and once more
// (Wait waits for that save). In break-glass mode it also says so in the log until the
// mode's expiry, and ends it then.
func (s *Stack) Start(ctx context.Context) {
	if s.breakGlass != nil {
		go s.breakGlass.run(ctx)
	}
	if s.Keeper != nil {
		s.restore()
	}
	s.Monitor.Refresh(ctx)
	go s.Monitor.Run(ctx)
	if s.Keeper != nil {
		go s.Keeper.Run(ctx)
	}
}

// Wait returns, after Start's ctx has ended, once the background work that outlives it is
// done: the Keeper's last save.
func (s *Stack) Wait() {
	if s.Keeper != nil {
		<-s.Keeper.Done()
	}
}

// snapshot is what the Keeper saves: nil when memory may not be served (no key id yet, a
// refusal, past the grace).
func (s *Stack) snapshot() *keep.Snapshot {
	keyID, answered, ok := s.Monitor.Kept()
	if !ok {
		return nil
	}
	entries := s.keepCfg.Entries
	if entries <= 0 {
		entries = keep.DefaultEntries
	}
	snap := &keep.Snapshot{Binding: s.keepCfg.Binding, KeyID: keyID, Answered: answered, Entries: s.Cache.Entries(entries)}
	if lk, ok := s.Sealer.LocalKEK(); ok {
		snap.LocalKEK = &lk
	}
	return snap
}

// restore loads the kept state into the Monitor, the local KEK and the DEK cache. A state
// that may not serve (another backend's, past the grace, unreadable) is discarded and
// erased: it could never serve again.
func (s *Stack) restore() {
	store := s.Keeper.Store().String()
	snap, err := s.Keeper.Load()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.log.Info("no kept state to restore", "store", store)
		return
	case err != nil:
		s.log.Error("kept state NOT restored: nothing is served from memory until the backend answers", "store", store, "error", err)
		return
	}
	defer snap.Clear()
	if snap.Binding != s.keepCfg.Binding {
		err = fmt.Errorf("it belongs to %q, not to %q", snap.Binding, s.keepCfg.Binding)
	} else {
		err = s.Monitor.Restore(snap.KeyID, snap.Answered)
	}
	if err != nil {
		s.log.Warn("kept state discarded: nothing is served from memory until the backend answers", "store", store, "last_answer", snap.Answered.UTC().Format(time.RFC3339), "reason", err)
		s.Keeper.Erase(fmt.Errorf("discarded at start: %w", err))
		return
	}
	entries := snap.Entries
	localKEK := false
	if lk := snap.LocalKEK; lk != nil {
		if err := s.Sealer.RestoreLocalKEK(*lk); err != nil {
			s.log.Warn("kept local KEK not restored", "error", err)
		} else {
			localKEK = true
		}
		// Its own unwrapped form, so that Decrypts of what it wrapped need no backend either.
		entries = append([]cache.Entry{{KeyID: lk.KeyID, Wrapped: lk.Wrapped, Key: lk.Key}}, entries...)
	}
	n := s.Cache.Restore(entries)
	graceLeft := s.Monitor.Memory().GraceLeft
	s.log.Warn("RESTORED kept state: until the backend answers, serving from memory for the rest of the grace",
		"store", store, "key_id", snap.KeyID, "last_answer", snap.Answered.UTC().Format(time.RFC3339),
		"grace_left", graceLeft.Round(time.Second).String(), "entries", n, "local_kek", localKEK)
}

// BreakGlass reports whether break-glass mode is on, and until when.
func (s *Stack) BreakGlass() (on bool, until time.Time) {
	if s.breakGlass == nil {
		return false, time.Time{}
	}
	return s.breakGlass.State()
}

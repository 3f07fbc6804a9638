package plugin

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/cache"
	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/internal/clock"
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
}

// Stack is a serving stack, ready to Serve on a listener once Monitor has had its first
// Refresh (and, for a plugin that serves long, Run).
type Stack struct {
	Monitor *Monitor
	Sealer  *dek.Sealer
	Server  *Server

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
	sealer := dek.NewSealer(calls)
	if cfg.Memory != nil {
		sealer = fromMemory(calls, *cfg.Memory, rc.Seal, cfg.KEK, monitor, m, cfg.Clock, cfg.Log)
	}
	if rc.Seal != nil && (cfg.Memory == nil || !cfg.Memory.LocalKEK) {
		// serveconfig refuses this at start; a caller that builds the stack itself hears it too.
		cfg.Log.Error("a recovery public key needs local KEK mode: nothing is sealed to it", "recovery_key", rc.Seal.ID().String())
	}
	var bg *breakGlass
	if rc.BreakGlass != nil {
		bg = newBreakGlass(rc.BreakGlass, rc.Until, cfg.Clock, cfg.Log)
		sealer.OpenWith(bg.r)
	}
	if m != nil {
		// Exported also when off (0), so that an alert on it never waits for a series to appear.
		m.WatchBreakGlass(func() (bool, time.Time) {
			if bg == nil {
				return false, time.Time{}
			}
			return bg.State()
		})
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
	return &Stack{Monitor: monitor, Sealer: sealer, Server: NewServer(NewService(sealer, monitor, cfg.Log), cfg.Server), breakGlass: bg}
}

// fromMemory is the sealer over a DEK cache (and, in local KEK mode, a local KEK), which the
// Monitor gates: what they hold is served only while the backend is healthy, or unreachable
// within the grace, and is dropped as soon as the backend refuses.
func fromMemory(calls dek.KEK, mem MemoryConfig, seal *recovery.PublicKey, backend dek.KEK, monitor *Monitor, m *metrics.Metrics, clk clock.Clock, log *slog.Logger) *dek.Sealer {
	cached := cache.New(calls, monitor, mem.CacheEntries)
	var sealer *dek.Sealer
	if mem.LocalKEK {
		var generated func(string)
		if m != nil {
			generated = m.WatchLocalKEKs()
		}
		sealer = dek.NewLocalSealer(cached, dek.LocalKEKConfig{
			MaxAge: mem.LocalKEKMaxAge, FromMemory: monitor.FromMemory, Generated: generated, Recovery: seal, Clock: clk, Log: log,
		})
	} else {
		sealer = dek.NewSealer(cached)
	}
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
	})
	judge, ok := backend.(dek.Judge)
	if !ok {
		return sealer
	}
	monitor.OnRefresh(func(_ string, unhealthy error) {
		if unhealthy != nil {
			return
		}
		// What the backend no longer accepts (a version below min_decryption_version, a
		// deleted or recreated key) stops being served from memory within one check.
		if n := cached.Purge(judge.Usable); n > 0 {
			log.Info("DEK cache: dropped keys the backend no longer accepts", "entries", n)
		}
		if sealer.DropLocalKEK(judge.Usable) {
			log.Info("local KEK dropped: the backend no longer accepts its key id")
		}
	})
	return sealer
}

// Start refreshes the Monitor once and keeps refreshing it until ctx ends; in break-glass
// mode it also says so in the log until the mode's expiry, and ends it then.
func (s *Stack) Start(ctx context.Context) {
	if s.breakGlass != nil {
		go s.breakGlass.run(ctx)
	}
	s.Monitor.Refresh(ctx)
	go s.Monitor.Run(ctx)
}

// BreakGlass reports whether break-glass mode is on, and until when.
func (s *Stack) BreakGlass() (on bool, until time.Time) {
	if s.breakGlass == nil {
		return false, time.Time{}
	}
	return s.breakGlass.State()
}

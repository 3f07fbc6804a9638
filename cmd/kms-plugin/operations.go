package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/kmsplugin/kms-plugin/cmd/internal/serveconfig"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/cache"
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
	"github.com/kmsplugin/kms-plugin/plugin/limit"
	"github.com/kmsplugin/kms-plugin/plugin/metrics"
)

// instrumented is the backend measured: the Monitor's view of it, never queued behind traffic.
type instrumented struct {
	metrics  *metrics.Metrics
	measured dek.KEK
}

func instrument(kek dek.KEK, backend string) instrumented {
	m := metrics.New(backend, version)
	m.WatchTokenTTL(kek)
	m.WatchBatches(kek)
	return instrumented{metrics: m, measured: metrics.NewKEK(kek, m)}
}

// sealer is the envelope encryption requests use, over the backend as requests see it:
//
//	[cache.KEK →] [limit.Timeout → limit.KEK →] Monitor.Proving → metrics.KEK → backend
//
// A remote backend's calls (Vault's) are bounded in number and time; localaes' are AES in
// memory, which needs neither. With the vault backend's memory settings, a DEK cache sits in
// front (a hit takes no slot and is no backend call) and local KEK mode makes Encrypt need no
// backend call.
func (i instrumented) sealer(backend dek.KEK, remote bool, mem *serveconfig.Memory, monitor *plugin.Monitor, o *serveconfig.Options, log *slog.Logger) *dek.Sealer {
	calls := monitor.Proving(i.measured)
	if remote {
		limited := limit.New(calls, o.Ops.MaxCalls, o.Ops.CallQueue)
		i.metrics.WatchLimiter(limited, o.Ops.MaxCalls, o.Ops.CallQueue)
		calls = limit.Timeout(limited, o.Timeout)
	}
	if mem == nil {
		return dek.NewSealer(calls)
	}
	cached := cache.New(calls, monitor, mem.CacheEntries)
	i.metrics.WatchCache(cached)
	i.metrics.WatchMemory(func() (bool, time.Duration) { m := monitor.Memory(); return m.Serving, m.GraceLeft })
	var sealer *dek.Sealer
	if mem.LocalKEK {
		sealer = dek.NewLocalSealer(cached, dek.LocalKEKConfig{
			MaxAge: mem.LocalKEKMaxAge, FromMemory: monitor.FromMemory,
			Generated: i.metrics.WatchLocalKEKs(), Log: log,
		})
	} else {
		sealer = dek.NewSealer(cached)
	}
	// A refusal (a check's or a request's) drops everything held in memory at once; the
	// Monitor has already closed the gate, and the purges discard what calls under way return.
	monitor.OnRefusal(func(err error) {
		n := cached.Purge(nil)
		dropped := sealer.DropLocalKEK(nil)
		log.Warn("DEK cache cleared and local KEK dropped: the backend refuses", "entries", n, "local_kek", dropped, "error", err)
	})
	checker, _ := backend.(interface{ Usable(keyID string) error })
	monitor.OnRefresh(func(_ string, unhealthy error) {
		if unhealthy != nil || checker == nil {
			return
		}
		// What the backend no longer accepts (a version below min_decryption_version, a
		// deleted or recreated key) stops being served from memory within one check.
		if n := cached.Purge(checker.Usable); n > 0 {
			log.Info("DEK cache: dropped keys the backend no longer accepts", "entries", n)
		}
		if sealer.DropLocalKEK(checker.Usable) {
			log.Info("local KEK dropped: the backend no longer accepts its key id")
		}
	})
	return sealer
}

// serverConfig is the gRPC server's configuration with the metrics interceptor.
func (i instrumented) serverConfig(o serveconfig.OpsOptions) plugin.ServerConfig {
	return plugin.ServerConfig{
		Version:        version,
		MaxRequestSize: o.MaxRequestSize,
		Options:        []grpc.ServerOption{grpc.ChainUnaryInterceptor(i.metrics.UnaryInterceptor())},
	}
}

// startOps serves the HTTP endpoints when --health-addr is set; stop shuts them down. An
// address that cannot be bound stops the plugin from starting, the default one included: the
// probes of the shipped manifests ask that address, and a stranger answering them could have
// kubelet restart a healthy plugin in a loop, or keep a dead one looking alive.
func startOps(o serveconfig.OpsOptions, monitor *plugin.Monitor, m *metrics.Metrics, log *slog.Logger) (stop func(), err error) {
	if o.HealthAddr == "" {
		log.Info("health and metrics endpoints off (--health-addr \"\")")
		return func() {}, nil
	}
	srv, err := endpoints.Listen(o.HealthAddr, endpoints.Config{
		Ready: func() error {
			keyID, unhealthy := monitor.Health()
			if unhealthy == nil && keyID == "" {
				return errors.New("no key id yet")
			}
			return unhealthy
		},
		ReadyNote: func() string {
			if mem := monitor.Memory(); mem.Serving {
				return fmt.Sprintf("serving from memory: the backend has not answered for %s, %s of the grace left",
					time.Since(mem.Since).Round(time.Second), mem.GraceLeft.Round(time.Second))
			}
			return ""
		},
		Metrics: m.Handler(),
		Version: version,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: another process may listen there, and the probes would reach it; stop it, or give this plugin another --health-addr (and its probes that port), or --health-addr \"\" to turn the endpoints off", err)
	}
	if loopback, _ := endpoints.IsLoopback(o.HealthAddr); !loopback {
		log.Warn("health and metrics endpoints listen beyond loopback, as --health-addr asks", "health_addr", srv.Addr())
	}
	log.Info("serving /healthz /readyz /metrics /version", "health_addr", srv.Addr())
	go func() {
		if err := srv.Serve(); err != nil {
			log.Error("health endpoint stopped", "error", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/kmsplugin/kms-plugin/plugin/limit"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/plugin/metrics"
	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// opsOptions are the flags of the operations group: endpoints and limits.
type opsOptions struct {
	healthAddr     string
	maxCalls       int
	callQueue      int
	maxRequestSize int
}

// groupAnnotation names a flag's section in --help (usage.go).
const groupAnnotation = "kms-plugin/group"

func (o *opsOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.healthAddr, "health-addr", endpoints.DefaultAddr, "HTTP address of /healthz, /readyz, /metrics and /version (host:port; \"\" turns them off); a non-loopback address exposes them to the network")
	fs.IntVar(&o.maxCalls, "max-concurrent-backend-calls", 64, "most wraps and unwraps the backend serves at once")
	fs.IntVar(&o.callQueue, "backend-call-queue", 256, "calls that may wait for a free slot, each at most until its deadline; beyond it requests fail at once with ResourceExhausted (0: no waiting)")
	fs.IntVar(&o.maxRequestSize, "max-request-size", plugin.MaxRequestSize, "largest gRPC request accepted, in bytes; larger ones fail with ResourceExhausted")
	for _, name := range []string{"health-addr", "max-concurrent-backend-calls", "backend-call-queue", "max-request-size", "log-format", "log-level", "shutdown-grace"} {
		fs.SetAnnotation(name, groupAnnotation, []string{"operations"})
	}
}

// problems lists what is wrong with the operations flags.
func (o *opsOptions) problems() []string {
	var p []string
	if o.healthAddr != "" {
		if _, err := endpoints.IsLoopback(o.healthAddr); err != nil {
			p = append(p, err.Error())
		}
	}
	if o.maxCalls < 1 {
		p = append(p, fmt.Sprintf("--max-concurrent-backend-calls %d: want at least 1", o.maxCalls))
	}
	if o.callQueue < 0 {
		p = append(p, fmt.Sprintf("--backend-call-queue %d: want 0 or more", o.callQueue))
	}
	if o.maxRequestSize < 1<<10 || o.maxRequestSize > 16<<20 {
		p = append(p, fmt.Sprintf("--max-request-size %d: want 1024 to 16777216 bytes (a DEK seed is 32)", o.maxRequestSize))
	}
	return p
}

// instrumented is the backend as the plugin uses it: measured, and bounded for requests.
type instrumented struct {
	metrics  *metrics.Metrics
	measured dek.KEK // for the Monitor: health checks are never queued behind traffic
	limited  dek.KEK // for requests
}

func instrument(kek dek.KEK, backend string, o opsOptions) instrumented {
	m := metrics.New(backend, version)
	m.WatchTokenTTL(kek)
	measured := m.KEK(kek)
	limited := limit.New(measured, o.maxCalls, o.callQueue)
	m.WatchLimiter(limited, o.maxCalls, o.callQueue)
	return instrumented{metrics: m, measured: measured, limited: limited}
}

// serverConfig is the gRPC server's configuration with the metrics interceptor.
func (i instrumented) serverConfig(o opsOptions) plugin.ServerConfig {
	return plugin.ServerConfig{
		Version:        version,
		MaxRequestSize: o.maxRequestSize,
		Options:        []grpc.ServerOption{grpc.ChainUnaryInterceptor(i.metrics.UnaryInterceptor())},
	}
}

// startOps serves the HTTP endpoints when --health-addr is set; stop shuts them down. When
// the default address is taken (another plugin on this host), the endpoints are off and the
// log says so: the KMS socket matters more than the endpoints. An address the operator chose
// must work.
func startOps(o opsOptions, chosen bool, monitor *plugin.Monitor, m *metrics.Metrics, log *slog.Logger) (stop func(), err error) {
	if o.healthAddr == "" {
		log.Info("health and metrics endpoints off (--health-addr \"\")")
		return func() {}, nil
	}
	srv, err := endpoints.Listen(o.healthAddr, endpoints.Config{
		Ready: func() error {
			keyID, unhealthy := monitor.State()
			if unhealthy == nil && keyID == "" {
				return errors.New("no key id yet")
			}
			return unhealthy
		},
		Metrics: m.Handler(),
		Version: version,
	})
	if err != nil && !chosen {
		log.Error("health and metrics endpoints OFF: the default --health-addr is taken; set --health-addr to another address", "health_addr", o.healthAddr, "error", err)
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	if loopback, _ := endpoints.IsLoopback(o.healthAddr); !loopback {
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

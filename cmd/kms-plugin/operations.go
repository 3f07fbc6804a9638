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
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
	"github.com/kmsplugin/kms-plugin/plugin/limit"
	"github.com/kmsplugin/kms-plugin/plugin/metrics"
)

// instrumented is the backend as the plugin uses it: measured, and bounded for requests.
type instrumented struct {
	metrics  *metrics.Metrics
	measured dek.KEK // for the Monitor: health checks are never queued behind traffic
	limited  dek.KEK // for requests
}

func instrument(kek dek.KEK, backend string, o serveconfig.OpsOptions) instrumented {
	m := metrics.New(backend, version)
	m.WatchTokenTTL(kek)
	measured := metrics.NewKEK(kek, m)
	limited := limit.New(measured, o.MaxCalls, o.CallQueue)
	m.WatchLimiter(limited, o.MaxCalls, o.CallQueue)
	return instrumented{metrics: m, measured: measured, limited: limited}
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

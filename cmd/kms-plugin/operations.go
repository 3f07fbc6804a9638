package main

import (
	"context"
	"errors"
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

// startOps serves the HTTP endpoints when --health-addr is set; stop shuts them down. When
// the default address is taken (another plugin on this host), the endpoints are off and the
// log says so: the KMS socket matters more than the endpoints. An address the operator chose
// must work.
func startOps(o serveconfig.OpsOptions, chosen bool, monitor *plugin.Monitor, m *metrics.Metrics, log *slog.Logger) (stop func(), err error) {
	if o.HealthAddr == "" {
		log.Info("health and metrics endpoints off (--health-addr \"\")")
		return func() {}, nil
	}
	srv, err := endpoints.Listen(o.HealthAddr, endpoints.Config{
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
		log.Error("health and metrics endpoints OFF: the default --health-addr is taken; set --health-addr to another address", "health_addr", o.HealthAddr, "error", err)
		return func() {}, nil
	}
	if err != nil {
		return nil, err
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

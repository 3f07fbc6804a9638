package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kmsplugin/kms-plugin/cmd/internal/serveconfig"
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
	"github.com/kmsplugin/kms-plugin/plugin/metrics"
)

// stackConfig is the serving stack serve runs: the opened backend with serve's flags.
func stackConfig(opened serveconfig.Opened, o serveconfig.Options, m *metrics.Metrics, log *slog.Logger) plugin.Config {
	cfg := plugin.Config{
		KEK:     opened.KEK,
		Memory:  opened.Memory,
		Monitor: plugin.MonitorConfig{CheckInterval: o.CheckEvery, ProofInterval: o.ProveEvery, Timeout: o.Timeout},
		Server:  plugin.ServerConfig{Version: version, MaxRequestSize: o.Ops.MaxRequestSize},
		Metrics: m,
		Log:     log,
	}
	if opened.Remote {
		cfg.Remote = &plugin.RemoteCalls{MaxCalls: o.Ops.MaxCalls, Queue: o.Ops.CallQueue, Timeout: o.Timeout}
	}
	return cfg
}

// startOps serves the HTTP endpoints when --health-addr is set; stop shuts them down. An
// address that cannot be bound stops the plugin from starting (endpoints.Listen says why).
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
		return nil, fmt.Errorf("%w; %s", err, endpoints.BindFix)
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

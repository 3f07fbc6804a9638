package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// backend is one KEK backend's flags and constructor.
type backend interface {
	name() string
	addFlags(fs *pflag.FlagSet)
	open(ctx context.Context, fs *pflag.FlagSet, log *slog.Logger) (dek.KEK, error)
}

// reloader is a backend that re-reads its configuration on SIGHUP.
type reloader interface{ Reload() error }

// monitorTuner is a backend with its own default check and proof intervals (a remote one that
// must not be polled as often as local keys); explicit flags still win.
type monitorTuner interface {
	monitorIntervals() (check, proof time.Duration)
}

func backends() []backend { return []backend{&localAESBackend{}, &vaultBackend{}} }

type serveOptions struct {
	listen, backend         string
	socketGroup, socketMode string
	timeout                 time.Duration
	checkEvery, proveEvery  time.Duration
	logFormat, logLevel     string
	shutdownGrace           time.Duration
	config                  string
	ops                     opsOptions
}

func newServeCommand() *cobra.Command {
	var o serveOptions
	all := backends()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the KMS v2 API on a unix socket (the default command)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfigFile(cmd.Flags()); err != nil {
				return err
			}
			return serve(cmd.Context(), cmd.ErrOrStderr(), cmd.Flags(), o, all)
		},
	}
	addServeFlags(cmd.Flags(), &o, all)
	cmd.SetUsageFunc(groupedUsage(all))
	return cmd
}

// addServeFlags registers serve's flags; doctor and policy take the same ones, so an operator
// can run them with the plugin's own command line or --config file.
func addServeFlags(fs *pflag.FlagSet, o *serveOptions, all []backend) {
	fs.SortFlags = false
	fs.StringVar(&o.config, "config", "", "YAML file of settings named like these flags (listen: /path, vault-addr: ...); the command line wins")
	fs.StringVar(&o.listen, "listen", "/var/run/kmsplugin/kms.sock", "unix socket to serve on (path or unix:///path)")
	fs.StringVar(&o.backend, "backend", "localaes", "KEK backend: localaes or vault")
	fs.StringVar(&o.socketGroup, "socket-group", "", "group (name or id) that owns the socket, for an apiserver that runs as another user")
	fs.StringVar(&o.socketMode, "socket-mode", "0600", "permissions of the socket file")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Second, "deadline of one backend operation, always also bounded by the caller's deadline")
	fs.DurationVar(&o.checkEvery, "check-interval", plugin.DefaultMonitorConfig.CheckInterval, "how often the backend's key state is refreshed for Status (vault backend: 1m unless set)")
	fs.DurationVar(&o.proveEvery, "proof-interval", plugin.DefaultMonitorConfig.ProofInterval, "longest time between two wrap/unwrap health proofs, real traffic counting (vault backend: 5m unless set)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long in-flight requests may take to finish")
	for _, b := range all {
		b.addFlags(fs)
	}
	o.ops.addFlags(fs)
}

func serve(ctx context.Context, logTo io.Writer, fs *pflag.FlagSet, o serveOptions, all []backend) error {
	log, err := newLogger(logTo, o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	path, err := plugin.SocketPath(o.listen)
	if err != nil {
		return err
	}
	sockOpts, err := socketOptions(o.socketMode, o.socketGroup)
	if err != nil {
		return err
	}
	chosen, err := chooseBackend(fs, o, all)
	if err != nil {
		return err
	}
	if mt, ok := chosen.(monitorTuner); ok {
		check, proof := mt.monitorIntervals()
		if !fs.Changed("check-interval") {
			o.checkEvery = check
		}
		if !fs.Changed("proof-interval") {
			o.proveEvery = proof
		}
	}
	if err := disableCoreDumps(); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	// SIGHUP is caught from the start: its default action would kill the plugin.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	defer stop()
	kek, err := chosen.open(ctx, fs, log)
	if err != nil {
		return err
	}
	inst := instrument(kek, o.backend, o.ops)
	monitor := plugin.NewMonitor(inst.measured, plugin.MonitorConfig{
		CheckInterval: o.checkEvery, ProofInterval: o.proveEvery, Timeout: o.timeout,
	}, clock.Real{}, log)
	monitor.OnRefresh(inst.metrics.ObserveBackend)
	monitor.Refresh(ctx)
	go monitor.Run(ctx)
	stopOps, err := startOps(o.ops, fs.Changed("health-addr"), monitor, inst.metrics, log)
	if err != nil {
		return err
	}
	defer stopOps()

	lis, err := plugin.Listen(path, sockOpts)
	if err != nil {
		return err
	}
	srv := plugin.NewServer(plugin.NewService(inst.limited, monitor, o.timeout, log), inst.serverConfig(o.ops))
	keyID, unhealthy := monitor.State()
	log.Info("serving KMS v2", "socket", path, "backend", o.backend, "key_id", keyID, "healthy", unhealthy == nil, "version", version)

	go reloadOnHUP(ctx, hup, kek, monitor, log)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("stopping: finishing in-flight requests", "grace", o.shutdownGrace)
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(o.shutdownGrace):
		srv.Stop()
	}
	log.Info("stopped; socket removed", "socket", path)
	return nil
}

// chooseBackend returns the backend --backend names, once the flags given fit it.
func chooseBackend(fs *pflag.FlagSet, o serveOptions, all []backend) (backend, error) {
	for _, b := range all {
		if b.name() == o.backend {
			return b, checkCombination(fs, o.backend, all, o.ops)
		}
	}
	return nil, fmt.Errorf("--backend %q: want localaes or vault", o.backend)
}

// reloadOnHUP re-reads the backend's configuration on SIGHUP. A failed reload keeps the keys
// in use and says why.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, kek dek.KEK, monitor *plugin.Monitor, log *slog.Logger) {
	r, ok := kek.(reloader)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if !ok {
			log.Info("SIGHUP: this backend has nothing to reload")
			continue
		}
		if err := r.Reload(); err != nil {
			log.Error("reload failed; keeping the keys in use", "error", err)
			continue
		}
		monitor.Refresh(ctx)
		keyID, _ := monitor.State()
		log.Info("reloaded", "key_id", keyID)
	}
}

func socketOptions(mode, group string) (plugin.SocketOptions, error) {
	m, err := strconv.ParseUint(mode, 8, 32)
	if err != nil || m > 0o777 {
		return plugin.SocketOptions{}, fmt.Errorf("--socket-mode %q: want octal permissions such as 0600", mode)
	}
	opts := plugin.SocketOptions{Mode: os.FileMode(m), GID: -1}
	if group == "" {
		return opts, nil
	}
	if gid, err := strconv.Atoi(group); err == nil {
		opts.GID = gid
		return opts, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return opts, fmt.Errorf("--socket-group: %w", err)
	}
	opts.GID, err = strconv.Atoi(g.Gid)
	if err != nil {
		return opts, errors.New("--socket-group: non-numeric gid")
	}
	return opts, nil
}

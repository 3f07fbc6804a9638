package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/cmd/internal/serveconfig"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/internal/sdnotify"
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/plugin/metrics"
)

func newServeCommand() *cobra.Command {
	var o serveconfig.Options
	all, _ := serveconfig.Backends()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the KMS v2 API on a unix socket (the default command)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := serveconfig.ApplyConfigFile(cmd.Flags()); err != nil {
				return err
			}
			return serve(cmd.Context(), cmd.InOrStdin(), cmd.ErrOrStderr(), cmd.Flags(), o, all)
		},
	}
	serveconfig.AddFlags(cmd.Flags(), &o, all)
	cmd.SetUsageFunc(serveconfig.GroupedUsage(all))
	return cmd
}

func serve(ctx context.Context, stdin io.Reader, logTo io.Writer, fs *pflag.FlagSet, o serveconfig.Options, all []serveconfig.Backend) error {
	log, err := serveconfig.NewLogger(logTo, o.LogFormat, o.LogLevel)
	if err != nil {
		return err
	}
	path, err := kmsclient.SocketPath(o.Listen)
	if err != nil {
		return err
	}
	sockOpts, err := serveconfig.SocketOptions(o.SocketMode, o.SocketGroup)
	if err != nil {
		return err
	}
	chosen, err := serveconfig.Choose(fs, o, all)
	if err != nil {
		return err
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
	opened, err := chosen.Open(ctx, fs, log)
	if err != nil {
		return err
	}
	if opened.CheckInterval > 0 && !fs.Changed("check-interval") {
		o.CheckEvery = opened.CheckInterval
	}
	if opened.ProofInterval > 0 && !fs.Changed("proof-interval") {
		o.ProveEvery = opened.ProofInterval
	}
	rc, err := o.Recovery.Recovery(o.Backend, opened.Memory != nil && opened.Memory.LocalKEK, stdin, time.Now())
	if err != nil {
		return err
	}
	m := metrics.New(o.Backend, version)
	cfg := stackConfig(opened, o, m, log)
	cfg.Recovery = rc
	if rc != nil && rc.Seal != nil {
		log.Warn("recovery key on: every local KEK is sealed to it, so its private key reads every envelope without Vault (docs/security.md)", "recovery_key", rc.Seal.ID().String())
	}
	stack := plugin.New(cfg)
	stack.Start(ctx)
	// However serve ends (a socket that cannot be bound, Serve failing, a signal), the kept
	// state's last save completes first: it waits for ctx's end, so cancel it here.
	defer func() { stop(); stack.Wait() }()
	// The socket first: a plugin that cannot serve it must not announce its endpoints.
	lis, err := plugin.Listen(path, sockOpts)
	if err != nil {
		return err
	}
	defer lis.Close()
	stopOps, err := startOps(o.Ops, stack.Monitor, m, log)
	if err != nil {
		return err
	}
	defer stopOps()
	srv, monitor := stack.Server, stack.Monitor
	keyID, unhealthy := monitor.State()
	log.Info("serving KMS v2", "socket", path, "backend", o.Backend, "key_id", keyID, "healthy", unhealthy == nil, "version", version)

	go reloadOnHUP(ctx, hup, opened.KEK, monitor, log)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	// systemd (Type=notify): ready once the first health check (stack.Start) has returned and
	// the socket serves, so that a unit ordered Before= the apiserver's starts it only then;
	// ready whether or not that check passed. Not run by systemd: nothing is sent.
	notifySocket := os.Getenv("NOTIFY_SOCKET")
	if err := sdnotify.Notify(notifySocket, sdnotify.Ready, sdnotify.Status("serving KMS v2 on "+path)); err != nil {
		log.Warn("could not tell systemd the plugin is ready", "error", err)
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	if err := sdnotify.Notify(notifySocket, sdnotify.Stopping); err != nil {
		log.Warn("could not tell systemd the plugin is stopping", "error", err)
	}
	log.Info("stopping: finishing in-flight requests", "grace", o.ShutdownGrace.String())
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(o.ShutdownGrace):
		srv.Stop()
	}
	log.Info("stopped; socket removed", "socket", path)
	return nil
}

// reloadOnHUP re-reads the backend's configuration on SIGHUP. A failed reload keeps the keys
// in use and says why.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, kek dek.KEK, monitor *plugin.Monitor, log *slog.Logger) {
	r, ok := kek.(dek.Reloader)
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

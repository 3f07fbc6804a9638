// Package serveconfig is serve's configuration: its flags, its --config file and the backend
// they choose. kms-plugin serve runs with it; kmsctl doctor and kmsctl policy read the
// same flags, so an operator checks exactly the configuration that serves.
package serveconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
)

// Backend is one KEK backend's flags and constructor.
type Backend interface {
	Name() string
	AddFlags(fs *pflag.FlagSet)
	// Open builds the backend from its flags, with what serving it takes.
	Open(ctx context.Context, fs *pflag.FlagSet, log *slog.Logger) (Opened, error)
}

// Opened is a backend ready to serve, and what the serving stack needs to know of it.
type Opened struct {
	KEK dek.KEK
	// Remote is set for a backend whose calls wait on another process (Vault): only such calls
	// are bounded in number and time (--max-concurrent-backend-calls, --backend-call-queue,
	// --timeout); AES in memory is bounded by the requests the socket admits.
	Remote bool
	// Memory is what the plugin keeps to serve through the backend's outage; nil: nothing.
	Memory *plugin.MemoryConfig
	// CheckInterval and ProofInterval are the backend's own defaults of --check-interval and
	// --proof-interval (a remote backend must not be polled as often as local keys); zero:
	// the general ones. Explicit flags still win.
	CheckInterval, ProofInterval time.Duration
}

// Backends returns one of each backend, ready for AddFlags, and the vault one by name, for
// the commands that are about Vault alone (policy).
func Backends() (all []Backend, vault *Vault) {
	vault = &Vault{}
	return []Backend{&LocalAES{}, vault}, vault
}

// Options are serve's settings.
type Options struct {
	Listen, Backend         string
	SocketGroup, SocketMode string
	Timeout                 time.Duration
	CheckEvery, ProveEvery  time.Duration
	LogFormat, LogLevel     string
	ShutdownGrace           time.Duration
	Config                  string
	Recovery                RecoveryOptions
	Ops                     OpsOptions
}

// AddFlags registers serve's flags on fs.
func AddFlags(fs *pflag.FlagSet, o *Options, all []Backend) {
	fs.SortFlags = false
	fs.StringVar(&o.Config, "config", "", "YAML file of settings named like these flags (listen: /path, vault-addr: ...); the command line wins")
	fs.StringVar(&o.Listen, "listen", "/var/run/kmsplugin/kms.sock", "unix socket to serve on (path or unix:///path)")
	fs.StringVar(&o.Backend, "backend", "localaes", "KEK backend: localaes or vault")
	fs.StringVar(&o.SocketGroup, "socket-group", "", "group (name or id) that owns the socket, for an apiserver that runs as another user")
	fs.StringVar(&o.SocketMode, "socket-mode", "0600", "permissions of the socket file")
	fs.DurationVar(&o.Timeout, "timeout", 2*time.Second, "deadline of one Vault operation or backend check, always also bounded by the caller's deadline")
	fs.DurationVar(&o.CheckEvery, "check-interval", plugin.DefaultMonitorConfig.CheckInterval, "how often the backend's key state is refreshed for Status (vault backend: 1m unless set)")
	fs.DurationVar(&o.ProveEvery, "proof-interval", plugin.DefaultMonitorConfig.ProofInterval, "longest time between two wrap/unwrap health proofs, real traffic counting (vault backend: 30m unless set)")
	fs.StringVar(&o.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&o.ShutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long in-flight requests may take to finish")
	for _, b := range all {
		b.AddFlags(fs)
	}
	o.Recovery.addFlags(fs)
	o.Ops.addFlags(fs)
}

// Choose returns the backend --backend names, once the flags given fit it.
func Choose(fs *pflag.FlagSet, o Options, all []Backend) (Backend, error) {
	for _, b := range all {
		if b.Name() == o.Backend {
			return b, checkCombination(fs, o.Backend, all, o.Ops)
		}
	}
	return nil, fmt.Errorf("--backend %q: want localaes or vault", o.Backend)
}

// SocketOptions parses --socket-mode and --socket-group.
func SocketOptions(mode, group string) (plugin.SocketOptions, error) {
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

// OpsOptions are the flags of the operations group: endpoints and limits.
type OpsOptions struct {
	HealthAddr     string
	MaxCalls       int
	CallQueue      int
	MaxRequestSize int
}

// GroupAnnotation names a flag's section in --help (usage.go).
const GroupAnnotation = "kms-plugin/group"

func (o *OpsOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.HealthAddr, "health-addr", endpoints.DefaultAddr, "HTTP address of /healthz, /readyz, /metrics and /version (host:port; \"\" turns them off); a non-loopback address exposes them to the network")
	fs.IntVar(&o.MaxCalls, "max-concurrent-backend-calls", 64, "most wraps and unwraps Vault serves at once")
	fs.IntVar(&o.CallQueue, "backend-call-queue", 256, "calls that may wait for a free slot, each at most until its deadline; beyond it requests fail at once with ResourceExhausted (0: no waiting)")
	fs.IntVar(&o.MaxRequestSize, "max-request-size", plugin.MaxRequestSize, "largest gRPC request accepted, in bytes; larger ones fail with ResourceExhausted")
	for _, name := range []string{"health-addr", "max-concurrent-backend-calls", "backend-call-queue", "max-request-size", "log-format", "log-level", "shutdown-grace"} {
		fs.SetAnnotation(name, GroupAnnotation, []string{"operations"})
	}
}

// problems lists what is wrong with the operations flags.
func (o *OpsOptions) problems() []string {
	var p []string
	if o.HealthAddr != "" {
		if _, err := endpoints.IsLoopback(o.HealthAddr); err != nil {
			p = append(p, err.Error())
		}
	}
	if o.MaxCalls < 1 {
		p = append(p, fmt.Sprintf("--max-concurrent-backend-calls %d: want at least 1", o.MaxCalls))
	}
	if o.CallQueue < 0 {
		p = append(p, fmt.Sprintf("--backend-call-queue %d: want 0 or more", o.CallQueue))
	}
	if o.MaxRequestSize < 1<<10 || o.MaxRequestSize > plugin.MaxRequestSizeCeiling {
		p = append(p, fmt.Sprintf("--max-request-size %d: want 1024 to %d bytes (a DEK seed is 32; each stream of each connection can hold twice this)", o.MaxRequestSize, plugin.MaxRequestSizeCeiling))
	}
	return p
}

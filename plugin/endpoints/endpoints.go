// Package endpoints serves the operator's HTTP endpoints beside the gRPC socket: /healthz (the
// process is alive), /readyz (the backend is usable now), /metrics and /version.
//
// /healthz never depends on the backend: a liveness probe that failed with Vault would make
// kubelet restart the plugin during a Vault outage, which helps nothing and empties caches.
package endpoints

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/textutil"
)

// DefaultAddr keeps the endpoints on loopback unless an operator asks otherwise.
const DefaultAddr = "127.0.0.1:8095"

// maxReasonSize keeps /readyz's answer short, like Status's healthz.
const maxReasonSize = 256

// Config is what the endpoints answer from.
type Config struct {
	// Ready reports why the backend is not usable now, or nil (the same state Status reports).
	Ready func() error
	// ReadyNote, if set, adds a remark to a ready answer (serving from memory, for example).
	ReadyNote func() string
	// Metrics serves /metrics.
	Metrics http.Handler
	// Version is the plugin's version, for /version.
	Version string
}

// Handler returns the endpoints' handler.
func Handler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := cfg.Ready(); err != nil {
			text(w, http.StatusServiceUnavailable, "backend not ready: "+textutil.Truncate(err.Error(), maxReasonSize))
			return
		}
		if cfg.ReadyNote != nil {
			if note := cfg.ReadyNote(); note != "" {
				text(w, http.StatusOK, "ok: "+textutil.Truncate(note, maxReasonSize))
				return
			}
		}
		text(w, http.StatusOK, "ok")
	})
	mux.Handle("GET /metrics", cfg.Metrics)
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"version": cfg.Version, "go": runtime.Version()})
	})
	return mux
}

func text(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintln(w, body)
}

// Server is the endpoints' HTTP server on its own listener.
type Server struct {
	http *http.Server
	lis  net.Listener
}

// BindFix is what to do about an address that cannot be bound.
const BindFix = `stop the process that listens there, or give this plugin another --health-addr (and its probes that port), or --health-addr "" to turn the endpoints off`

// Listen binds addr (host:port; port 0 picks one) and returns a Server ready to Serve. An
// address that cannot be bound is an error, the default one included: the probes of the
// shipped manifests ask that address, and a stranger answering them could have kubelet restart
// a healthy plugin in a loop, or keep a dead one looking alive.
func Listen(addr string, cfg Config) (*Server, error) {
	lis, err := bind(addr)
	if err != nil {
		return nil, err
	}
	return &Server{lis: lis, http: &http.Server{
		Handler:           Handler(cfg),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    8 << 10,
	}}, nil
}

// CheckAddr is Listen's verdict on addr, for kmsctl doctor: addr is bound as Listen binds it,
// and let go at once.
func CheckAddr(addr string) error {
	lis, err := bind(addr)
	if err != nil {
		return err
	}
	return lis.Close()
}

func bind(addr string) (net.Listener, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--health-addr %s cannot be bound: %w: another process may listen there, and the probes would reach it", addr, err)
	}
	return lis, nil
}

// Addr is the address actually bound.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Serve serves until Shutdown; it returns nil after a Shutdown.
func (s *Server) Serve() error {
	if err := s.http.Serve(s.lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting and waits for requests in progress, until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// IsLoopback reports whether addr (host:port) listens on loopback only. An empty host, or
// a name other than localhost, listens beyond it.
func IsLoopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("--health-addr %q: want host:port, for example %s", addr, DefaultAddr)
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}

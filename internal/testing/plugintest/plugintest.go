// Package plugintest serves a real plugin in-process on a unix socket, for the tests of every
// package that talks to the plugin over its socket (providers, scan, compare, deploy, ...).
package plugintest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

// Plugin is a plugin served until the test ends.
type Plugin struct {
	Socket  string
	Monitor *plugin.Monitor
	// KeyFile and LocalAES are set by ServeLocalAES.
	KeyFile  string
	LocalAES *localaes.KEK

	srv *plugin.Server
}

// Stop stops serving before the test ends; the socket is removed.
func (p *Plugin) Stop() { p.srv.Stop() }

// Options tune Serve; the zero value is fine.
type Options struct {
	Socket  string        // where to listen; a fresh short path when empty
	Clock   clock.Clock   // for the Monitor; the real clock when nil
	Timeout time.Duration // per backend operation (plugin.RemoteCalls, as serve has for vault); 2 s when zero
	KEKName string        // ServeLocalAES: the first key's name; "one" when empty
	Peers   plugin.PeerLimits
}

// Serve serves kek on a unix socket until the test ends. The Monitor has had one refresh.
func Serve(t testing.TB, kek dek.KEK, opts Options) *Plugin {
	t.Helper()
	if opts.Socket == "" {
		opts.Socket = filepath.Join(ShortTempDir(t), "kms.sock")
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Second
	}
	// The stack serve builds, with a remote backend's bounds (a test's fault-injecting KEK may
	// hang); the Monitor refreshes only when the test says.
	stack := plugin.New(plugin.Config{
		KEK:    kek,
		Remote: &plugin.RemoteCalls{Timeout: opts.Timeout},
		Server: plugin.ServerConfig{Peers: opts.Peers},
		Clock:  opts.Clock,
	})
	stack.Monitor.Refresh(context.Background())
	lis, err := plugin.Listen(opts.Socket, plugin.SocketOptions{GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	go stack.Server.Serve(lis)
	t.Cleanup(stack.Server.Stop)
	return &Plugin{Socket: opts.Socket, Monitor: stack.Monitor, srv: stack.Server}
}

// ServeLocalAES makes a key file with one new key, beside the socket, and serves it.
func ServeLocalAES(t testing.TB, opts Options) *Plugin {
	t.Helper()
	keyFile := filepath.Join(ShortTempDir(t), "keys.yaml")
	name := opts.KEKName
	if name == "" {
		name = "one"
	}
	if _, err := localaes.AddKey(keyFile, name, true); err != nil {
		t.Fatal(err)
	}
	backend, err := localaes.Open(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	p := Serve(t, backend, opts)
	p.KeyFile, p.LocalAES = keyFile, backend
	return p
}

// Rotate adds a new write key to a ServeLocalAES plugin, as `kmsctl keygen --write` and
// SIGHUP do, and returns the new key id once Status reports it.
func (p *Plugin) Rotate(t testing.TB, name string) string {
	t.Helper()
	if _, err := localaes.AddKey(p.KeyFile, name, true); err != nil {
		t.Fatal(err)
	}
	if err := p.LocalAES.Reload(); err != nil {
		t.Fatal(err)
	}
	p.Monitor.Refresh(context.Background())
	id, unhealthy := p.Monitor.State()
	if unhealthy != nil {
		t.Fatal(unhealthy)
	}
	return id
}

// ShortTempDir is a temp dir with a short path: unix socket paths are limited to 108 bytes.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Client is a KMS v2 client of the plugin at socket, closed when the test ends.
func Client(t testing.TB, socket string) kmsapi.KeyManagementServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("localhost"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kmsapi.NewKeyManagementServiceClient(conn)
}

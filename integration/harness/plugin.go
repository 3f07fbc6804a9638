package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// Plugin is our kms-plugin binary serving on a unix socket in a short temp dir.
type Plugin struct {
	Socket   string // socket path
	Endpoint string // unix:///<Socket>, for an EncryptionConfiguration
	Process  *run.Process

	bin      string
	args     []string
	conn     *grpc.ClientConn
	restarts int
	all      []*run.Process // every process run, for the race check
}

// StartPlugin runs `kms-plugin serve --listen <socket> args...` and waits until the socket
// answers Status. The plugin is the one PluginBinary returns, built with the race detector: a
// data race it reports fails the test. It is stopped when the test ends.
func StartPlugin(t testing.TB, args ...string) *Plugin {
	t.Helper()
	bin := PluginBinary(t)
	// unix socket paths are limited to 108 bytes; t.TempDir() paths, named after the test,
	// can be longer.
	dir, err := os.MkdirTemp("", "kp")
	run.Must(t, err, "socket dir")
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &Plugin{Socket: filepath.Join(dir, "kms.sock"), bin: bin}
	p.Endpoint = "unix://" + p.Socket
	p.args = append([]string{"serve", "--listen", p.Socket}, args...)
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "health-addr") }) {
		p.args = append(p.args, "--health-addr=127.0.0.1:0") // many plugins share this host
	}
	p.conn, err = grpc.NewClient(p.Endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("localhost"))
	run.Must(t, err, "plugin client")
	t.Cleanup(func() { p.conn.Close() })
	// Registered before the processes start, so it runs after they are killed: a race found
	// during shutdown is in the logs by then.
	t.Cleanup(func() {
		for _, proc := range p.all {
			if strings.Contains(proc.Log(), "DATA RACE") {
				t.Errorf("the plugin reported a data race: see %s", proc.LogPath)
			}
		}
	})
	p.start(t, "kms-plugin")
	return p
}

func (p *Plugin) start(t testing.TB, name string) { p.startUntil(t, name, nil) }

// startUntil starts the plugin and waits until Status succeeds, or, with answered set, until
// the plugin answers it at all (answered says which failures are answers).
func (p *Plugin) startUntil(t testing.TB, name string, answered func(error) bool) {
	t.Helper()
	p.Process = run.Start(t, name, p.bin, p.args)
	p.all = append(p.all, p.Process)
	deadline := time.Now().Add(time.Minute)
	var last error
	for time.Now().Before(deadline) {
		if p.Process.Exited() {
			p.Process.DumpLog(t)
			t.Fatalf("kms-plugin exited during start-up")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, last = p.Status(ctx)
		cancel()
		if last == nil || (answered != nil && answered(last)) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.Process.DumpLog(t)
	t.Fatalf("kms-plugin: Status did not answer within a minute: %v", last)
}

// Status calls the plugin's Status over its socket.
func (p *Plugin) Status(ctx context.Context) (*kmsapi.StatusResponse, error) {
	return kmsapi.NewKeyManagementServiceClient(p.conn).Status(ctx, &kmsapi.StatusRequest{})
}

// Client is a KMS v2 client of the plugin's socket, as kube-apiserver calls it.
func (p *Plugin) Client() kmsapi.KeyManagementServiceClient {
	return kmsapi.NewKeyManagementServiceClient(p.conn)
}

// KeyID returns the key id the plugin's Status reports now, failing the test if Status fails.
func (p *Plugin) KeyID(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := p.Status(ctx)
	run.Must(t, err, "plugin Status")
	return st.KeyId
}

// Stop sends SIGTERM and waits for the plugin to exit (killing it after 15 s).
func (p *Plugin) Stop() { p.Process.Stop(15 * time.Second) }

// Restart stops the plugin and starts it again with the same arguments and socket.
func (p *Plugin) Restart(t testing.TB) {
	t.Helper()
	p.Stop()
	p.Resume(t)
}

// RestartWith stops the plugin and starts it again on the same socket with other serve
// arguments (as an operator changing its flags would), for example another --vault-addr.
func (p *Plugin) RestartWith(t testing.TB, args ...string) {
	t.Helper()
	p.Stop()
	p.args = append([]string{"serve", "--listen", p.Socket}, args...)
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "health-addr") }) {
		p.args = append(p.args, "--health-addr=127.0.0.1:0")
	}
	p.Resume(t)
}

// Resume starts a stopped plugin again with the same arguments and socket.
func (p *Plugin) Resume(t testing.TB) {
	t.Helper()
	if !p.Process.Exited() {
		t.Fatal("Resume: the plugin is still running")
	}
	p.restarts++
	p.start(t, fmt.Sprintf("kms-plugin-restart-%d", p.restarts))
}

// ResumeUnready starts a stopped (or killed) plugin again and waits only until it answers
// Status at all, with "no key id yet" if it has nothing to serve with: a plugin restarted
// while its backend is unreachable.
func (p *Plugin) ResumeUnready(t testing.TB) {
	t.Helper()
	if !p.Process.Exited() {
		t.Fatal("ResumeUnready: the plugin is still running")
	}
	p.restarts++
	p.startUntil(t, fmt.Sprintf("kms-plugin-restart-%d", p.restarts), func(err error) bool {
		return strings.Contains(err.Error(), "no key id yet")
	})
}

// Reload sends SIGHUP, on which the plugin re-reads its backend's configuration (the local
// key file). Wait for the result with WaitKeyID.
func (p *Plugin) Reload(t testing.TB) {
	t.Helper()
	run.Must(t, p.Process.Signal(syscall.SIGHUP), "SIGHUP to the plugin")
}

// WaitKeyID waits until the plugin's Status reports keyID.
func (p *Plugin) WaitKeyID(t testing.TB, keyID string) {
	t.Helper()
	run.Eventually(t, time.Minute, "plugin key id "+keyID, func(ctx context.Context) error {
		st, err := p.Status(ctx)
		if err != nil {
			return err
		}
		if st.KeyId != keyID {
			return fmt.Errorf("key id is %q", st.KeyId)
		}
		return nil
	})
}

var binaries struct {
	once sync.Once
	dir  string // holds kms-plugin and kmsctl
	err  error
}

// PluginBinary returns the kms-plugin binary the integration tests run: $KMS_PLUGIN_BIN if
// set, or else one built from this checkout with -race, once per source tree: the build is
// cached under the OS temp dir by a hash of the module's sources and done under a file lock,
// so parallel test processes never build twice. Call BuildPlugin from TestMain to keep the
// build out of every test's time.
func PluginBinary(t testing.TB) string {
	t.Helper()
	path, err := BuildPlugin()
	if err != nil {
		t.Fatalf("kms-plugin binary: %v", err)
	}
	return path
}

// KmsctlBinary is PluginBinary for the operator's tools, kmsctl ($KMSCTL_BIN if set), built
// with kms-plugin from the same sources.
func KmsctlBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("KMSCTL_BIN"); bin != "" {
		return bin
	}
	if os.Getenv("KMS_PLUGIN_BIN") != "" {
		// BuildPlugin builds nothing then: a bare "kmsctl" would run whichever is on PATH.
		t.Fatal("KMS_PLUGIN_BIN is set: set KMSCTL_BIN to the kmsctl built with it")
	}
	if _, err := BuildPlugin(); err != nil {
		t.Fatalf("kmsctl binary: %v", err)
	}
	return filepath.Join(binaries.dir, "kmsctl")
}

// BuildPlugin is PluginBinary for TestMain: it returns the binary's path or why there is none.
// It builds kmsctl too.
func BuildPlugin() (string, error) {
	if bin := os.Getenv("KMS_PLUGIN_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("KMS_PLUGIN_BIN: %w", err)
		}
		return bin, nil
	}
	binaries.once.Do(func() { binaries.dir, binaries.err = buildBinaries() })
	return filepath.Join(binaries.dir, "kms-plugin"), binaries.err
}

// buildBinaries builds both commands into a directory named by the sources' hash.
func buildBinaries() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	hash, err := sourceHash(root)
	if err != nil {
		return "", err
	}
	cache := filepath.Join(os.TempDir(), "kms-plugin-test-bin")
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(cache, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	dir := filepath.Join(cache, hash)
	if _, err := os.Stat(dir); err == nil {
		now := time.Now()
		_ = os.Chtimes(dir, now, now) // marks it used, for pruneOldBuilds
		return dir, nil
	}
	pruneOldBuilds(cache)
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-race", "-trimpath", "-o", tmp+"/", "./cmd/kms-plugin", "./cmd/kmsctl")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/kms-plugin ./cmd/kmsctl: %v\n%s", err, out)
	}
	return dir, os.Rename(tmp, dir)
}

// moduleRoot finds the directory of our go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/kmsplugin/kms-plugin\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod of github.com/kmsplugin/kms-plugin not found above the working directory")
		}
		dir = parent
	}
}

// sourceHash hashes what the binary is built from: go.mod, go.sum and every non-test Go
// file of the module (nested modules, such as the real servers' builders, are not ours), and
// the Go version.
func sourceHash(root string) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, runtime.Version())
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || exists(filepath.Join(path, "go.mod"))) {
				return filepath.SkipDir
			}
			return nil
		}
		if !(rel == "go.mod" || rel == "go.sum" || strings.HasSuffix(rel, ".go") && !strings.HasSuffix(rel, "_test.go")) {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(h, "%s\x00", rel)
		_, err = io.Copy(h, f)
		return err
	})
	return hex.EncodeToString(h.Sum(nil))[:16], err
}

// pruneOldBuilds removes builds of source trees last used more than a day ago.
func pruneOldBuilds(cache string) {
	entries, _ := os.ReadDir(cache)
	for _, e := range entries {
		if info, err := e.Info(); err == nil && e.IsDir() && time.Since(info.ModTime()) > 24*time.Hour {
			os.RemoveAll(filepath.Join(cache, e.Name()))
		}
	}
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// LogContains reports whether the plugin's current process has logged s.
func (p *Plugin) LogContains(s string) bool { return strings.Contains(p.Process.Log(), s) }

package run

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ServersDir is where integration/servers/build.sh puts the binaries.
func ServersDir() string {
	if d := os.Getenv("KMS_PLUGIN_SERVERS_DIR"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "kms-plugin", "servers")
}

// Binary returns the path of a server that build.sh built ("etcd", "vault",
// "kube-apiserver"). A missing binary skips the test when run by hand and fails it under
// scripts/test.sh ($KMS_PLUGIN_REQUIRE_SERVERS): in CI a real component is never skipped.
func Binary(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(ServersDir(), name)
	if _, err := os.Stat(path); err != nil {
		// Run by hand, a test that needs a server the reader has not built skips and says how
		// to build it; under scripts/test.sh and CI, a skipped real component is a failure.
		if os.Getenv(RequireServersEnv) != "" {
			t.Fatalf("%s is not built (%v), and $%s requires every real server: run bash integration/servers/build.sh before go test", name, err, RequireServersEnv)
		} else {
			t.Skipf("%s is not built: run `bash integration/servers/build.sh %s` (or the README's test command) to run this test", name, name)
		}
	}
	return path
}

// RequireServersEnv, when set (scripts/test.sh sets it), makes a missing server binary fail
// the test instead of skipping it.
const RequireServersEnv = "KMS_PLUGIN_REQUIRE_SERVERS"

// FreePort returns a loopback TCP port that was free a moment ago, below the kernel's
// ephemeral range: a server that stops and starts again on its port (Vault across an outage)
// must not find it taken by the source port of some client's connection meanwhile, which a
// port the kernel hands out (":0") can be.
func FreePort(t testing.TB) int {
	t.Helper()
	low := ephemeralLow()
	for range 1000 {
		port := low - 2 - rand.N(low/3) // below the ephemeral range (Vault also takes port+1), above the well-known ports
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			l.Close()
			return port
		}
	}
	t.Fatalf("no free loopback port below %d", low)
	return 0
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768 when unknown).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil || low < 4096 {
		return 32768
	}
	return low
}

// Process is a server started by the harness. Its output goes to a log file that is printed
// when the test fails.
type Process struct {
	Name    string
	LogPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs bin with args and env (added to the test's environment), logging to a file in
// a test temp dir. The process is killed when the test ends, if it still runs.
func Start(t testing.TB, name, bin string, args []string, env ...string) *Process {
	t.Helper()
	p := &Process{Name: name, LogPath: filepath.Join(t.TempDir(), name+".log")}
	p.start(t, bin, args, env)
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			p.DumpLog(t)
		}
	})
	return p
}

// StartAgain runs bin with args and env again as this process, logging to the same file,
// after the process has ended (Stop or Kill): a server restarted on its own data and address.
func (p *Process) StartAgain(t testing.TB, bin string, args []string, env ...string) {
	t.Helper()
	p.start(t, bin, args, env)
}

func (p *Process) start(t testing.TB, bin string, args, env []string) {
	t.Helper()
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting %s: %v", p.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM and waits up to timeout for the process to exit, then kills it.
func (p *Process) Stop(timeout time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		p.Kill()
	}
}

// Kill ends the process and its process group at once, and waits for it.
func (p *Process) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// Pid is the process's ID.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Log returns what the process has written so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// DumpLog writes the last 64 KiB of the process's log to the test's log (Start does when
// the test fails).
func (p *Process) DumpLog(t testing.TB) {
	b, _ := os.ReadFile(p.LogPath)
	if len(b) > 64<<10 {
		b = append([]byte("...\n"), b[len(b)-64<<10:]...)
	}
	t.Logf("---- %s log (%s) ----\n%s", p.Name, p.LogPath, bytes.TrimSpace(b))
}

// Eventually calls f until it returns nil or timeout passes, then fails the test with f's
// last error.
func Eventually(t testing.TB, timeout time.Duration, what string, f func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var err error
	for {
		attempt, stop := context.WithTimeout(ctx, 5*time.Second)
		err = f(attempt)
		stop()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Must ends the test with a message built like fmt.Sprintf's when err, a harness setup
// error, is not nil.
func Must(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

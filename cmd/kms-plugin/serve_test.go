package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/cmd/internal/serveconfig"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

// syncBuffer collects a command's log while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// runInProcess runs the root command with args until stop is called; it returns the log and
// the command's error.
func runInProcess(t *testing.T, args ...string) (stop func() error, log *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log = &syncBuffer{}
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "health-addr") || a == "--config" }) {
		args = append(args, "--health-addr=127.0.0.1:0") // the default port is for one plugin per host
	}
	cmd := newRootCommand()
	cmd.SetArgs(args)
	cmd.SetErr(log)
	cmd.SetOut(log)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(15 * time.Second):
				err = fmt.Errorf("command did not stop")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop, log
}

func status(t *testing.T, socket string) (*kmsapi.StatusResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return kmsapi.NewKeyManagementServiceClient(conn).Status(ctx, &kmsapi.StatusRequest{})
}

func waitStatus(t *testing.T, socket string) *kmsapi.StatusResponse {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := status(t, socket)
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin never answered Status on %s: %v", socket, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestEmbeddedDefaultCreatesAKeyLoudlyOnce(t *testing.T) {
	dir := plugintest.ShortTempDir(t)
	old := serveconfig.DefaultKeyFile
	serveconfig.DefaultKeyFile = filepath.Join(dir, "state", "keys.yaml")
	defer func() { serveconfig.DefaultKeyFile = old }()
	socket := filepath.Join(dir, "kms.sock")

	stop, log := runInProcess(t, "--listen", "unix://"+socket)
	first := waitStatus(t, socket)
	if first.Healthz != "ok" || !strings.HasPrefix(first.KeyId, "localaes:key1:") {
		t.Fatalf("Status = %+v", first)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "CREATED A NEW KEY") || !strings.Contains(log.String(), serveconfig.DefaultKeyFile) {
		t.Fatalf("no loud warning naming the key file in the log:\n%s", log)
	}
	if !strings.Contains(log.String(), socket) {
		t.Fatalf("socket path not logged:\n%s", log)
	}
	if info, err := os.Stat(serveconfig.DefaultKeyFile); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", info, err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Fatal("socket left behind after stop")
	}

	// The second run uses the key it made: same key id, no warning.
	stop, log = runInProcess(t, "--listen", socket)
	if again := waitStatus(t, socket); again.KeyId != first.KeyId {
		t.Fatalf("second run key id %q, first %q", again.KeyId, first.KeyId)
	}
	stop()
	if strings.Contains(log.String(), "CREATED A NEW KEY") {
		t.Fatal("second run created another key")
	}
}

func TestNamedKeyFileThatIsMissingIsAnError(t *testing.T) {
	dir := plugintest.ShortTempDir(t)
	missing := filepath.Join(dir, "keys.yaml")
	stop, _ := runInProcess(t, "--listen", filepath.Join(dir, "kms.sock"), "--localaes-key-file", missing)
	err := stop()
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("err = %v, want a missing-file error", err)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatal("a named key file was created")
	}
}

func TestBadFlagsAreRefused(t *testing.T) {
	dir := plugintest.ShortTempDir(t)
	keys := filepath.Join(dir, "keys.yaml")
	addKey(t, keys, "", false)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--backend", "nope"}, "--backend"},
		{[]string{"--listen", "relative.sock"}, "absolute path"},
		{[]string{"--socket-mode", "rw"}, "--socket-mode"},
		{[]string{"--log-format", "xml"}, "--log-format"},
	} {
		args := append([]string{"--localaes-key-file", keys, "--listen", filepath.Join(dir, "k.sock")}, tc.args...)
		stop, _ := runInProcess(t, args...)
		if err := stop(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %s", tc.args, err, tc.want)
		}
	}
}

// addKey adds a key to a key file, as kmsctl keygen does.
func addKey(t *testing.T, keys, name string, write bool) {
	t.Helper()
	if _, err := localaes.AddKey(keys, name, write); err != nil {
		t.Fatal(err)
	}
}

func runCmd(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := newRootCommand()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

// The built binary, for what only a separate process shows: signals and exit codes.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kms-plugin")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestSignals(t *testing.T) {
	bin := buildBinary(t)
	dir := plugintest.ShortTempDir(t)
	keys := filepath.Join(dir, "keys.yaml")
	socket := filepath.Join(dir, "kms.sock")
	addKey(t, keys, "", false)

	var log syncBuffer
	p := exec.Command(bin, "--listen", socket, "--localaes-key-file", keys, "--health-addr=127.0.0.1:0")
	p.Stderr = &log
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- p.Wait() }()
	t.Cleanup(func() { p.Process.Kill() })
	before := waitStatus(t, socket)

	// A second plugin on the same socket refuses to start and leaves the first alone.
	second, err := exec.Command(bin, "--listen", socket, "--localaes-key-file", keys, "--health-addr=127.0.0.1:0").CombinedOutput()
	if err == nil || !strings.Contains(string(second), "another live process") || strings.Contains(string(second), "serving /healthz") {
		t.Fatalf("second plugin: %v\n%s", err, second)
	}
	if _, err := status(t, socket); err != nil {
		t.Fatalf("first plugin disturbed: %v", err)
	}

	// SIGHUP after a new write key: Status reports it at once.
	addKey(t, keys, "rotated", true)
	p.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := status(t, socket)
		if err == nil && strings.HasPrefix(st.KeyId, "localaes:rotated:") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key id after SIGHUP: %v %v (before %s)\n%s", st, err, before.KeyId, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A broken key file on SIGHUP keeps the keys in use.
	keyFileBefore, _ := os.ReadFile(keys)
	os.WriteFile(keys, []byte("keys: []\n"), 0o600)
	p.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), "reload failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload failure logged:\n%s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, err := status(t, socket); err != nil || !strings.HasPrefix(st.KeyId, "localaes:rotated:") || st.Healthz != "ok" {
		t.Fatalf("after a failed reload: %v %v", st, err)
	}

	// SIGTERM: clean exit, socket removed.
	p.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, log.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Fatal("socket left behind")
	}
	for _, line := range strings.Split(string(keyFileBefore), "\n") {
		if _, secret, ok := strings.Cut(line, "secret: "); ok && strings.Contains(log.String(), secret) {
			t.Fatalf("log contains a key:\n%s", log.String())
		}
	}
}

// With another process on the health address, the default one included, the plugin does not
// start: the manifests' probes would ask that process. The error names the address, and the
// socket is not left behind.
func TestOccupiedHealthAddressStopsTheStart(t *testing.T) {
	dir := plugintest.ShortTempDir(t)
	keys := filepath.Join(dir, "keys.yaml")
	socket := filepath.Join(dir, "kms.sock")
	addKey(t, keys, "", false)
	stranger, err := net.Listen("tcp", endpoints.DefaultAddr)
	if err == nil { // else something already listens there: the same situation
		defer stranger.Close()
	}
	var out bytes.Buffer
	cmd := newRootCommand() // no --health-addr: the default
	cmd.SetArgs([]string{"--listen", socket, "--localaes-key-file", keys})
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	err = cmd.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), endpoints.DefaultAddr) || !strings.Contains(err.Error(), "--health-addr") {
		t.Fatalf("serve with %s taken: %v\n%s", endpoints.DefaultAddr, err, out.String())
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

// Package swtpm starts a software TPM 2.0 (swtpm, from Debian's packages) for tests: a real
// TPM implementation (libtpms) reached over a unix socket, as go-tpm's linuxudstpm transport
// expects. The kernel's /dev/tpmrm0 path is not exercised by it.
package swtpm

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// TPM is a running swtpm.
type TPM struct {
	// Device is the TPM's address for the plugin's --vault-tpm-device: unix:///path.
	Device string
	// StateDir is where swtpm keeps the TPM's persistent state (NV, seeds).
	StateDir string

	bin, sock string
	args      []string
	proc      *run.Process
}

// Binary returns swtpm's path. Missing, it skips the test when run by hand and fails it under
// scripts/test.sh ($KMS_PLUGIN_REQUIRE_SERVERS), naming the package to install.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		if os.Getenv(run.RequireServersEnv) != "" {
			t.Fatalf("swtpm is not installed (%v), and $%s requires every real server: apt-get install -y swtpm swtpm-tools (integration/servers/build.sh does as root)", err, run.RequireServersEnv)
		}
		t.Skipf("swtpm is not installed: apt-get install -y swtpm swtpm-tools to run this test")
	}
	return bin
}

// Start starts a fresh TPM (manufactured at its first start) that the test stops at its end.
func Start(t testing.TB) *TPM {
	t.Helper()
	bin := Binary(t)
	// A short directory: a unix socket's path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	p := &TPM{StateDir: state, bin: bin, sock: filepath.Join(dir, "tpm.sock")}
	p.Device = "unix://" + p.sock
	p.args = []string{"socket", "--tpm2",
		"--server", "type=unixio,path=" + p.sock,
		"--ctrl", "type=unixio,path=" + filepath.Join(dir, "ctrl.sock"),
		"--tpmstate", "dir=" + state,
		// Powered on and started (TPM2_Startup(CLEAR)) as firmware would at boot.
		"--flags", "not-need-init,startup-clear"}
	p.proc = run.Start(t, "swtpm", bin, p.args)
	p.wait(t)
	return p
}

// Reboot stops the TPM and starts it again on its state, as a node reboot does: PCRs and
// loaded objects reset, NV indices and seeds kept.
func (p *TPM) Reboot(t testing.TB) {
	t.Helper()
	p.proc.Stop(10 * time.Second)
	os.Remove(p.sock)
	p.proc.StartAgain(t, p.bin, p.args)
	p.wait(t)
}

// Stop stops the TPM: a TPM that no longer answers.
func (p *TPM) Stop() { p.proc.Stop(10 * time.Second) }

// wait waits until swtpm accepts connections on its socket.
func (p *TPM) wait(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A connection, not the socket file: the file exists between swtpm's bind and its
		// listen, when a client is refused (seen after a Reboot on a loaded machine).
		if conn, err := net.Dial("unix", p.sock); err == nil {
			conn.Close()
			return
		}
		if p.proc.Exited() || time.Now().After(deadline) {
			p.proc.DumpLog(t)
			t.Fatal(errors.New("swtpm did not open its socket"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

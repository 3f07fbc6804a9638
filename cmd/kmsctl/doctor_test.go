package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/cmd/internal/serveconfig"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

// lines returns the doctor output's lines that start with status.
func lines(out, status string) []string {
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, status+" ") {
			got = append(got, l)
		}
	}
	return got
}

// The doctor and policy commands end to end against a real Vault: the policy that `policy`
// prints passes every check of `doctor`, the same policy without decrypt fails it with exit
// status 3, and doctor takes serve's --config file.
func TestDoctorCommandVault(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	v.Write(t, "transit/keys/k8s", nil)
	policy, err := runCLI("policy", "--vault-transit-key", "k8s", "--vault-addr", v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	dir := plugintest.ShortTempDir(t)
	args := func(tokenFile string) []string {
		return []string{"doctor", "--listen", filepath.Join(dir, "kms.sock"), "--backend", "vault", "--vault-addr", v.Addr,
			"--vault-transit-key", "k8s", "--vault-token-file", tokenFile, "--health-addr", "127.0.0.1:0"}
	}

	good := v.PolicyTokenFile(t, "kms-plugin", policy)
	out, err := runCLI(args(good)...)
	t.Logf("doctor:\n%s", out)
	if err != nil || len(lines(out, "FAIL")) > 0 || len(lines(out, "warn")) > 0 || len(lines(out, "ok")) < 10 {
		t.Fatalf("healthy setup: %v", err)
	}

	blocks := strings.Split(policy, "\n\n")
	var kept []string
	for _, b := range blocks {
		if !strings.Contains(b, `"transit/decrypt/k8s"`) {
			kept = append(kept, b)
		}
	}
	noDecrypt := v.PolicyTokenFile(t, "no-decrypt", strings.Join(kept, "\n\n"))
	out, err = runCLI(args(noDecrypt)...)
	t.Logf("doctor:\n%s", out)
	var failed checkFailure
	if !errors.As(err, &failed) {
		t.Fatalf("policy without decrypt: want a failed check (exit status 3), got %v", err)
	}
	if f := lines(out, "FAIL"); len(f) != 2 || !strings.Contains(f[0], `vault capabilities   the token lacks "update" on transit/decrypt/k8s`) ||
		!strings.Contains(f[1], "vault round trip") {
		t.Errorf("policy without decrypt: FAIL lines %q", f)
	}

	// The same settings from serve's --config file.
	config := filepath.Join(dir, "config.yaml")
	yaml := "listen: " + filepath.Join(dir, "kms.sock") + "\nbackend: vault\nvault-addr: " + v.Addr +
		"\nvault-transit-key: k8s\nvault-token-file: " + good + "\ncheck-interval: 5s\nhealth-addr: \"127.0.0.1:0\"\n"
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI("doctor", "--config", config); err != nil || len(lines(out, "ok")) < 10 {
		t.Errorf("doctor --config: %v\n%s", err, out)
	}
	if out, err := runCLI("policy", "--config", config); err != nil || out != policy {
		t.Errorf("policy --config: %v\n%s", err, out)
	}
	if _, err := runCLI("policy"); err == nil || !strings.Contains(err.Error(), "--vault-transit-key") {
		t.Errorf("policy without a key: %v", err)
	}
}

func TestDoctorCommandLocalAES(t *testing.T) {
	dir := plugintest.ShortTempDir(t)
	keys := filepath.Join(dir, "keys.yaml")
	if _, err := runCLI("keygen", "--localaes-key-file", keys); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "kms.sock")
	// The default --health-addr is for one plugin per host: other tests may hold it.
	out, err := runCLI("doctor", "--listen", socket, "--localaes-key-file", keys, "--health-addr", "127.0.0.1:0")
	if err != nil || len(lines(out, "ok")) != 4 {
		t.Fatalf("healthy: %v\n%s", err, out)
	}

	// Beside a running plugin: --running asks its Status; without it the path is taken.
	kek, err := localaes.Open(keys)
	if err != nil {
		t.Fatal(err)
	}
	served := plugintest.Serve(t, kek, plugintest.Options{Socket: socket})
	out, err = runCLI("doctor", "--running", "--listen", socket, "--localaes-key-file", keys, "--health-addr", "")
	if err != nil || !strings.Contains(out, "ok    plugin status        Status over "+socket+": healthz ok, key_id localaes:") {
		t.Errorf("--running: %v\n%s", err, out)
	}
	out, err = runCLI("doctor", "--listen", socket, "--localaes-key-file", keys, "--health-addr", "")
	if err == nil || !strings.Contains(out, "FAIL  socket") {
		t.Errorf("socket in use without --running: %v\n%s", err, out)
	}
	served.Stop()

	// What serve refuses, doctor fails (issue 18): a socket directory others may write, and a
	// --health-addr another process holds.
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI("doctor", "--listen", filepath.Join(open, "x.sock"), "--localaes-key-file", keys, "--health-addr", "")
	if err == nil || !strings.Contains(out, "FAIL  socket               socket directory "+open+" has mode 0777") {
		t.Errorf("socket directory of mode 0777: %v\n%s", err, out)
	}
	for _, flags := range [][]string{{"--socket-mode", "0999"}, {"--socket-group", "no-such-group-kms"}} {
		args := append([]string{"doctor", "--listen", socket, "--localaes-key-file", keys, "--health-addr", ""}, flags...)
		if _, err := runCLI(args...); err == nil || !strings.Contains(err.Error(), flags[0]) {
			t.Errorf("%v, which serve refuses: %v", flags, err)
		}
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	out, err = runCLI("doctor", "--listen", socket, "--localaes-key-file", keys, "--health-addr", taken.Addr().String())
	if err == nil || !strings.Contains(out, "FAIL  health address       --health-addr "+taken.Addr().String()+" cannot be bound") {
		t.Errorf("--health-addr taken: %v\n%s", err, out)
	}

	if err := os.Chmod(keys, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI("doctor", "--listen", socket, "--localaes-key-file", keys, "--health-addr", "")
	if err == nil || len(lines(out, "FAIL")) != 2 || !strings.Contains(out, "chmod 600 "+keys) {
		t.Errorf("key file readable by others: %v\n%s", err, out)
	}

	saved := serveconfig.DefaultKeyFile
	serveconfig.DefaultKeyFile = filepath.Join(dir, "absent.yaml")
	defer func() { serveconfig.DefaultKeyFile = saved }()
	out, err = runCLI("doctor", "--listen", socket, "--health-addr", "")
	if err != nil || !strings.Contains(out, "warn  localaes key file") {
		t.Errorf("default key file missing: %v\n%s", err, out)
	}
	if _, err := os.Stat(serveconfig.DefaultKeyFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("doctor created the default key file: %v", err)
	}
}

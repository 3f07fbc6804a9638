package serveconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// A config file's value reaches the flag as written: YAML's own reading of an unquoted 0660
// (octal 432) must not turn --socket-mode 0660 into 0432, which lets others connect.
func TestConfigFileValuesAsWritten(t *testing.T) {
	config := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(config, []byte("socket-mode: 0660\nmax-concurrent-backend-calls: 8\ntimeout: 3s\nsocket-group: \"0123\"\nlog-format:\n"), 0o600)
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	all, _ := Backends()
	AddFlags(fs, &Options{}, all)
	if err := fs.Parse([]string{"--config", config}); err != nil {
		t.Fatal(err)
	}
	if err := ApplyConfigFile(fs); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"socket-mode": "0660", "max-concurrent-backend-calls": "8", "timeout": "3s", "socket-group": "0123", "log-format": "",
	} {
		if got := fs.Lookup(name).Value.String(); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// A command with only serve's --vault-* flags takes them from serve's --config file and leaves
// the file's other settings (serve's --timeout is not rollout-status's) aside; a setting serve
// does not know is still an error, and the command line still wins.
func TestApplyVaultSettings(t *testing.T) {
	config := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(config, []byte("backend: vault\nlisten: /run/kms.sock\ntimeout: 3s\nvault-addr: https://vault:8200\nvault-transit-key: k8s\nvault-transit-mount: kms\n"), 0o600)
	fs := pflag.NewFlagSet("rollout-status", pflag.ContinueOnError)
	fs.Duration("timeout", 0, "the command's own")
	(&Vault{}).AddFlags(fs)
	if err := fs.Parse([]string{"--vault-transit-mount", "transit2"}); err != nil {
		t.Fatal(err)
	}
	if err := ApplyVaultSettings(fs, config, "--plugin-config"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"vault-addr": "https://vault:8200", "vault-transit-key": "k8s", "vault-transit-mount": "transit2", "timeout": "0s"} {
		if got := fs.Lookup(name).Value.String(); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	os.WriteFile(config, []byte("vault-adress: https://vault:8200\n"), 0o600)
	if err := ApplyVaultSettings(fs, config, "--plugin-config"); err == nil || !strings.Contains(err.Error(), `--plugin-config `+config+`: unknown setting "vault-adress"`) {
		t.Errorf("a misspelt setting: %v", err)
	}
}

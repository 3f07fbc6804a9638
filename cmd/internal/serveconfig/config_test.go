package serveconfig

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"
)

// A config file's value reaches the flag as written: YAML's own reading of an unquoted 0660
// (octal 432) must not turn --socket-mode 0660 into 0432, which lets others connect.
func TestConfigFileValuesAsWritten(t *testing.T) {
	config := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(config, []byte("socket-mode: 0660\nmax-concurrent-backend-calls: 8\ntimeout: 3s\nsocket-group: \"0123\"\nlog-format:\n"), 0o600)
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	AddFlags(fs, &Options{}, Backends())
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

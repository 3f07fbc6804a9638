package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

func runCLI(args ...string) (string, error) {
	var out bytes.Buffer
	root := newRootCommand()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// The scan command end to end over TLS with client certificates: output formats and the
// --fail-on-* checks.
func TestScanCommand(t *testing.T) {
	e := harness.StartEtcdMTLS(t)
	endpoint, etcd := e.Endpoints[0], e.Client
	for key, v := range map[string]string{
		"/registry/secrets/default/a":    "k8s:enc:aescbc:v1:old:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
		"/registry/secrets/default/b":    "k8s:enc:aescbc:v1:new:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
		"/registry/configmaps/default/c": "k8s\x00plain",
	} {
		if _, err := etcd.Put(context.Background(), key, v); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(t.TempDir(), "enc.yaml")
	os.WriteFile(cfg, []byte(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - aescbc:
      keys:
      - {name: new, secret: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=}
      - {name: old, secret: AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=}
  - identity: {}
`), 0o600)
	conn := []string{"scan", "--etcd-endpoints=" + endpoint, "--etcd-cacert=" + e.CAFile,
		"--etcd-cert=" + e.ClientCert, "--etcd-key=" + e.ClientKey}

	out, err := runCLI(append(conn, "--encryption-config="+cfg)...)
	if err != nil {
		t.Fatalf("scan: %v\n%s", err, out)
	}
	t.Logf("table:\n%s", out)
	for _, want := range []string{"secrets     aescbc     -         old  1        STALE", "secrets     aescbc     -         new  1        current",
		"configmaps  plaintext  -         -    1        current", "3 objects under /registry/ at revision"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	out, err = runCLI(append(conn, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct{ Objects, Plaintext int }
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Objects != 3 || rep.Plaintext != 1 {
		t.Errorf("json: %+v %v\n%s", rep, err, out)
	}

	for _, tc := range []struct {
		args []string
		fail string // "" when the check passes
	}{
		{[]string{"--encryption-config=" + cfg, "--fail-on-stale"}, "1 objects are not on their write key"},
		{[]string{"--fail-on-plaintext=secrets"}, ""},
		{[]string{"--fail-on-plaintext=secrets,configmaps"}, "1 configmaps are stored in plaintext"},
	} {
		_, err := runCLI(append(conn, tc.args...)...)
		var failed checkFailure
		switch {
		case tc.fail == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.fail != "" && (!errors.As(err, &failed) || err.Error() != tc.fail):
			t.Errorf("%v: error %v, want the check failure %q", tc.args, err, tc.fail)
		}
	}

	// Without the client certificate etcd refuses the scan, and it says so instead of hanging.
	_, err = runCLI("scan", "--etcd-endpoints="+endpoint, "--etcd-cacert="+e.CAFile, "--timeout=2s")
	var failed checkFailure
	if err == nil || errors.As(err, &failed) {
		t.Errorf("scan without a client certificate: %v, want an etcd error", err)
	}
	if err != nil {
		t.Logf("without a client certificate: %v", err)
	}
}

func TestScanCommandBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"scan", "--output=yaml"},
		{"scan", "--fail-on-stale"},
		{"scan", "--etcd-cert=/x.crt"},
		{"scan", "--etcd-cacert=/nonexistent/ca.crt"},
		{"scan", "--encryption-config=/nonexistent/enc.yaml"},
	} {
		if _, err := runCLI(args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

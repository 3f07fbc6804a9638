package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/storage/rollout"
)

// fakeAPIServer serves /metrics as kube-apiserver 1.37 writes the series rollout-status reads,
// behind TLS, and a kubeconfig that reaches it.
func fakeAPIServer(t *testing.T, metrics *atomic.Value) (url, kubeconfig string) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, metrics.Load().(string))
	}))
	t.Cleanup(srv.Close)
	kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+srv.URL+`", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, kubeconfig
}

// apiserverMetrics is one apiserver's /metrics: it runs configHash, was reloaded at reloadedAt
// (0: never), and for each provider name the key id hash of its last Status at a time.
func apiserverMetrics(configHash string, reloadedAt float64, status map[string]string, statusAt map[string]float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# TYPE apiserver_encryption_config_controller_last_config_info gauge\n"+
		"apiserver_encryption_config_controller_last_config_info{apiserver_id_hash=\"sha256:x\",hash=%q} 1\n", configHash)
	if reloadedAt > 0 {
		fmt.Fprintf(&b, "# TYPE apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds gauge\n"+
			"apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds{apiserver_id_hash=\"sha256:x\",status=\"success\"} %g\n", reloadedAt)
	}
	b.WriteString("# TYPE apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds gauge\n")
	for name, hash := range status {
		fmt.Fprintf(&b, "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash=\"sha256:x\",key_id_hash=%q,provider_name=%q} %g\n",
			hash, name, statusAt[name])
	}
	return b.String()
}

// rollout-status shows the key ids it knows (the plugin's, here) beside the hashes the
// apiservers publish, and leaves out a provider that a reload removed, whose old series the
// apiserver keeps exporting.
func TestRolloutStatusShowsKeyIDsAndDropsRemovedProviders(t *testing.T) {
	p := plugintest.ServeLocalAES(t, plugintest.Options{})
	keyID, _ := p.Monitor.State()
	config := filepath.Join(t.TempDir(), "enc.yaml")
	data := []byte(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - kms: {apiVersion: v2, name: kms-plugin, endpoint: unix://` + p.Socket + `}
  - identity: {}
`)
	if err := os.WriteFile(config, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var metrics atomic.Value
	// "old-plugin" was the write provider before the last reload (at 1000); no Status answered
	// for it since.
	metrics.Store(apiserverMetrics(rollout.HashConfig(data), 1000,
		map[string]string{"kms-plugin": rollout.HashKeyID(keyID), "old-plugin": rollout.HashKeyID("vault:0123456789abcdef:v1")},
		map[string]float64{"kms-plugin": 1060, "old-plugin": 900}))
	url, kubeconfig := fakeAPIServer(t, &metrics)

	out, err := runCLI("rollout-status", "--kubeconfig", kubeconfig, "--apiservers", url, "--encryption-config", config,
		"--timeout=5s", "--interval=1s")
	t.Logf("rollout-status:\n%s", out)
	if err != nil {
		t.Fatalf("rollout-status: %v", err)
	}
	both := keyID + " (" + rollout.Short(rollout.HashKeyID(keyID)) + ")"
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, url) {
			row = l
		}
	}
	if strings.Count(row, both) != 2 {
		t.Errorf("the row shows %q, want the key id and its hash under WRITES WITH and PLUGIN KEY: %q", row, both)
	}
	if strings.Contains(out, "old-plugin") {
		t.Errorf("the provider removed by the reload still has a row")
	}

	// Without a reload metric, a provider that the file the apiserver runs lacks is left out.
	metrics.Store(apiserverMetrics(rollout.HashConfig(data), 0,
		map[string]string{"kms-plugin": rollout.HashKeyID(keyID), "old-plugin": rollout.HashKeyID("vault:0123456789abcdef:v1")},
		map[string]float64{"kms-plugin": 1060, "old-plugin": 900}))
	out, err = runCLI("rollout-status", "--kubeconfig", kubeconfig, "--apiservers", url, "--encryption-config", config,
		"--timeout=5s", "--interval=1s")
	if err != nil || strings.Contains(out, "old-plugin") {
		t.Errorf("a provider the file lacks, on an apiserver that runs the file: %v\n%s", err, out)
	}
}

// With serve's --vault-* flags rollout-status reads the transit key's latest version: an
// apiserver still writing under the version before a rotation keeps it waiting (exit 3), even
// though no plugin socket is reachable here to say otherwise, and the table names every
// version's key id beside its hash.
func TestRolloutStatusVault(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	v.Write(t, "transit/keys/k8s", nil)
	v1 := latestVaultKeyID(t, v, "k8s")
	v.RotateKey(t, "transit", "k8s")
	v2 := latestVaultKeyID(t, v, "k8s")
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	config := filepath.Join(dir, "enc.yaml")
	data := []byte(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - kms: {apiVersion: v2, name: vault-plugin, endpoint: unix://` + filepath.Join(dir, "absent.sock") + `}
  - identity: {}
`)
	if err := os.WriteFile(config, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var metrics atomic.Value
	on := func(id string) string {
		return apiserverMetrics(rollout.HashConfig(data), 0, map[string]string{"vault-plugin": rollout.HashKeyID(id)},
			map[string]float64{"vault-plugin": 100})
	}
	url, kubeconfig := fakeAPIServer(t, &metrics)
	args := []string{"rollout-status", "--kubeconfig", kubeconfig, "--apiservers", url, "--encryption-config", config,
		"--timeout=3s", "--interval=1s", "--vault-addr", v.Addr, "--vault-transit-key", "k8s", "--vault-token-file", token}

	metrics.Store(on(v1))
	out, err := runCLI(args...)
	t.Logf("on v1:\n%s", out)
	var failed checkFailure
	if !errors.As(err, &failed) || !strings.Contains(out, `writes "vault-plugin" under key id `+v1+" (") ||
		!strings.Contains(out, "not the latest "+v2+" (") || !strings.Contains(out, "transit key transit/keys/k8s: latest version v2") {
		t.Errorf("an apiserver on v1 after the rotation to v2: %v", err)
	}
	// Without the Vault flags nothing here knows of v2: that is what they are for.
	if out, err := runCLI(args[:9]...); err != nil {
		t.Errorf("without the Vault flags: %v\n%s", err, out)
	}

	metrics.Store(on(v2))
	out, err = runCLI(args...)
	t.Logf("on v2:\n%s", out)
	if err != nil || !strings.Contains(out, v2+" (") {
		t.Errorf("an apiserver on the latest version: %v", err)
	}

	// The same from the plugin's serve --config file, whose other settings are serve's.
	metrics.Store(on(v1))
	pluginConfig := filepath.Join(dir, "serve.yaml")
	if err := os.WriteFile(pluginConfig, []byte("backend: vault\nlisten: /run/kms.sock\ntimeout: 1m\nvault-addr: "+v.Addr+
		"\nvault-transit-key: k8s\nvault-token-file: "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI(append(args[:9], "--plugin-config", pluginConfig)...)
	if !errors.As(err, &failed) || !strings.Contains(out, "not the latest "+v2+" (") {
		t.Errorf("--plugin-config, an apiserver on v1: %v\n%s", err, out)
	}

	if _, err := runCLI(append(args, "--kms-provider", "other")...); err == nil || !strings.Contains(err.Error(), `--kms-provider "other"`) {
		t.Errorf("--kms-provider not in the file: %v", err)
	}
}

// latestVaultKeyID is the key id of the transit key's latest version, as the plugin reports
// it once adopted.
func latestVaultKeyID(t *testing.T, v *vaultd.Vault, key string) string {
	t.Helper()
	secret, err := vault.ReadKey(t.Context(), v.Root, "transit", key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := vault.ParseKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := k.KeyID(k.LatestVersion)
	return id
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
	kmsv1 "k8s.io/kms/apis/v1beta1"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/cmd/internal/serveconfig"
	"github.com/kmsplugin/kms-plugin/integration/harness/run"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

var healthAddrRE = regexp.MustCompile(`health_addr=(127\.0\.0\.1:\d+)`)

// servedPlugin is an in-process plugin with its endpoints on a free loopback port.
type servedPlugin struct {
	socket, base string
	conn         *grpc.ClientConn
	log          *syncBuffer
	stop         func() error
}

func serveInProcess(t *testing.T, args ...string) *servedPlugin {
	t.Helper()
	socket := filepath.Join(plugintest.ShortTempDir(t), "kms.sock")
	stop, log := runInProcess(t, append([]string{"--listen", socket, "--health-addr", "127.0.0.1:0"}, args...)...)
	waitStatus(t, socket)
	var base string
	run.Eventually(t, 10*time.Second, "health address in the log", func(context.Context) error {
		m := healthAddrRE.FindStringSubmatch(log.String())
		if m == nil {
			return fmt.Errorf("not logged yet:\n%s", log)
		}
		base = "http://" + m[1]
		return nil
	})
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &servedPlugin{socket: socket, base: base, conn: conn, log: log, stop: stop}
}

func (p *servedPlugin) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(p.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric returns the value of one exact series (name{labels in sorted order}) in a scrape.
func metric(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

func wantMetric(t *testing.T, text, series string, ok func(float64) bool) {
	t.Helper()
	v, found := metric(text, series)
	if !found || !ok(v) {
		t.Errorf("%s = %v (found %v)", series, v, found)
	}
}

func eq(want float64) func(float64) bool   { return func(v float64) bool { return v == want } }
func atLeast(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }

func localKeys(t *testing.T) string {
	t.Helper()
	keys := filepath.Join(plugintest.ShortTempDir(t), "keys.yaml")
	addKey(t, keys, "", false)
	return keys
}

// After real requests over the socket, /metrics (scraped over HTTP) counts them by API,
// method and code, times them and the backend calls, and names the key; the endpoints answer;
// core dumps are off.
func TestMetricsAfterRealRequests(t *testing.T) {
	p := serveInProcess(t, "--localaes-key-file", localKeys(t))
	v2 := kmsapi.NewKeyManagementServiceClient(p.conn)
	v1 := kmsv1.NewKeyManagementServiceClient(p.conn)
	ctx := t.Context()

	st, err := v2.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		enc, err := v2.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: bytes.Repeat([]byte{1}, 32)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v2.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = v2.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: []byte("garbage")})
	if grpcstatus.Code(err) != codes.InvalidArgument {
		t.Fatalf("garbage: %v", err)
	}
	enc1, err := v1.Encrypt(ctx, &kmsv1.EncryptRequest{Version: "v1beta1", Plain: []byte("dek")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v1.Decrypt(ctx, &kmsv1.DecryptRequest{Version: "v1beta1", Cipher: enc1.Cipher}); err != nil {
		t.Fatal(err)
	}

	code, text := p.get(t, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	wantMetric(t, text, `kms_plugin_requests_total{api="v2",backend="localaes",code="OK",method="Encrypt"}`, eq(3))
	wantMetric(t, text, `kms_plugin_requests_total{api="v2",backend="localaes",code="OK",method="Decrypt"}`, eq(3))
	wantMetric(t, text, `kms_plugin_requests_total{api="v2",backend="localaes",code="InvalidArgument",method="Decrypt"}`, eq(1))
	wantMetric(t, text, `kms_plugin_requests_total{api="v2",backend="localaes",code="OK",method="Status"}`, atLeast(1))
	wantMetric(t, text, `kms_plugin_requests_total{api="v1beta1",backend="localaes",code="OK",method="Encrypt"}`, eq(1))
	wantMetric(t, text, `kms_plugin_requests_total{api="v1beta1",backend="localaes",code="OK",method="Decrypt"}`, eq(1))
	wantMetric(t, text, `kms_plugin_request_duration_seconds_count{api="v2",backend="localaes",method="Decrypt"}`, eq(4))
	wantMetric(t, text, `kms_plugin_requests_in_flight{api="v2",backend="localaes",method="Encrypt"}`, eq(0))
	// 4 wraps by requests plus the Monitor's proof; garbage never reaches the backend.
	wantMetric(t, text, `kms_plugin_backend_calls_total{backend="localaes",operation="wrap",result="ok"}`, atLeast(4))
	wantMetric(t, text, `kms_plugin_backend_calls_total{backend="localaes",operation="unwrap",result="ok"}`, atLeast(4))
	wantMetric(t, text, `kms_plugin_backend_call_duration_seconds_count{backend="localaes",operation="check"}`, atLeast(1))
	wantMetric(t, text, fmt.Sprintf(`kms_plugin_key_info{backend="localaes",key_id=%q}`, st.KeyId), eq(1))
	wantMetric(t, text, `kms_plugin_key_rotations_total{backend="localaes"}`, eq(0))
	wantMetric(t, text, `kms_plugin_backend_healthy{backend="localaes"}`, eq(1))
	wantMetric(t, text, `kms_plugin_build_info{backend="localaes",version="dev"}`, eq(1))
	wantMetric(t, text, `go_goroutines`, atLeast(1))
	for _, line := range strings.Split(text, "\n") {
		// Vault's alone: a token, and limits on calls that wait on another process.
		if strings.HasPrefix(line, "kms_plugin_backend_token_ttl") || strings.HasPrefix(line, "kms_plugin_backend_calls_in_progress") ||
			(strings.HasPrefix(line, "kms_plugin_") && strings.Contains(line, "garbage")) {
			t.Errorf("unexpected series %q", line)
		}
	}

	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ok\n"} {
		if code, body := p.get(t, path); code != 200 || body != want {
			t.Errorf("%s = %d %q", path, code, body)
		}
	}
	if code, body := p.get(t, "/version"); code != 200 || !strings.Contains(body, `"version":"dev"`) {
		t.Errorf("/version = %d %q", code, body)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_CORE, &lim); err != nil || lim.Cur != 0 || lim.Max != 0 {
		t.Errorf("RLIMIT_CORE = %+v, %v; want 0", lim, err)
	}
}

func TestHelpGroupsFlagsByBackend(t *testing.T) {
	out := runCmd(t, "--help")
	headings := []string{"General flags:", "localaes backend flags (--backend localaes):", "vault backend flags (--backend vault):", "Operations flags"}
	sections := map[string]string{}
	last := -1
	for i, h := range headings {
		at := strings.Index(out, h)
		if at < last {
			t.Fatalf("heading %q missing or out of order:\n%s", h, out)
		}
		last = at
		end := len(out)
		if i+1 < len(headings) {
			end = strings.Index(out, headings[i+1])
		}
		if end > at {
			sections[h] = out[at:end]
		}
	}
	for h, flags := range map[string][]string{
		headings[0]: {"--listen", "--backend", "--config", "--timeout"},
		headings[1]: {"--localaes-key-file"},
		headings[2]: {"--vault-addr", "--vault-transit-key", "--vault-token-file"},
		headings[3]: {"--health-addr", "--max-concurrent-backend-calls", "--backend-call-queue", "--max-request-size", "--log-level"},
	} {
		for _, f := range flags {
			if !strings.Contains(sections[h], f+" ") {
				t.Errorf("%s not under %q", f, h)
			}
		}
	}
	if strings.Contains(sections[headings[0]], "--vault-") || strings.Contains(sections[headings[3]], "--vault-") {
		t.Error("vault flags outside their section")
	}
	if out := runCmd(t, "serve", "--help"); !strings.Contains(out, headings[2]) {
		t.Errorf("serve --help not grouped:\n%s", out)
	}
}

// A config file sets the flags the command line leaves alone; the command line wins.
func TestConfigFile(t *testing.T) {
	dir := plugintest.ShortTempDir(t)
	keys := localKeys(t)
	socket := filepath.Join(dir, "from-config.sock")
	config := filepath.Join(dir, "config.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`listen: unix://%s
localaes-key-file: /nonexistent/keys.yaml
health-addr: "127.0.0.1:0"
max-concurrent-backend-calls: 8
log-format: json
`, socket)), 0o600)

	stop, log := runInProcess(t, "--config", config, "--localaes-key-file", keys)
	waitStatus(t, socket)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), `"msg":"serving KMS v2"`) {
		t.Fatalf("log-format from the config file not used:\n%s", log)
	}

	for _, tc := range []struct{ body, want string }{
		{"listen: /x.sock\nlisten-typo: 1\n", `unknown setting "listen-typo"`},
		{"max-concurrent-backend-calls: lots\n", "max-concurrent-backend-calls"},
		{"vault-addr: [a, b]\n", "single value"},
		{"not yaml: [", "--config"},
	} {
		os.WriteFile(config, []byte(tc.body), 0o600)
		stop, _ := runInProcess(t, "--config", config, "--localaes-key-file", keys)
		if err := stop(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: err = %v, want %q", tc.body, err, tc.want)
		}
	}
	stop, _ = runInProcess(t, "--config", filepath.Join(dir, "missing.yaml"))
	if err := stop(); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("missing config file: %v", err)
	}
}

// Settings that cannot work together stop the plugin at start with one message naming them.
func TestInvalidCombinationsAreRefused(t *testing.T) {
	dir := plugintest.ShortTempDir(t)
	keys := localKeys(t)
	config := filepath.Join(dir, "config.yaml")
	os.WriteFile(config, []byte("vault-transit-key: kek\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--vault-addr", "https://v:8200"}, []string{"--vault-addr configure another backend than --backend localaes"}},
		{[]string{"--config", config}, []string{"--vault-transit-key"}},
		{[]string{"--backend", "vault", "--localaes-key-file", keys}, []string{"--localaes-key-file configure another backend than --backend vault"}},
		{[]string{"--max-concurrent-backend-calls", "0", "--backend-call-queue", "-1", "--health-addr", "8095"},
			[]string{"--max-concurrent-backend-calls 0", "--backend-call-queue -1", "--health-addr \"8095\""}},
		{[]string{"--max-request-size", "10"}, []string{"--max-request-size"}},
		{[]string{"--max-request-size", "65536"}, []string{"--max-request-size 65536: want 1024 to 32768"}},
	} {
		args := append([]string{"--localaes-key-file", keys, "--listen", filepath.Join(dir, "k.sock")}, tc.args...)
		stop, _ := runInProcess(t, args...)
		err := stop()
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) || strings.Count(err.Error(), "invalid configuration") != 1 {
				t.Errorf("%v: err = %v, want one message with %q", tc.args, err, w)
			}
		}
	}
}

// With a real Vault: when Vault seals, /readyz and the gRPC health service say not ready
// (while /healthz stays ok and Status keeps its key id), and both recover after the unseal.
// The token's TTL is exported.
func TestReadinessFollowsRealVault(t *testing.T) {
	v := vaultd.StartVaultFile(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "kek")
	v.WritePolicy(t, "kms", vaultd.TransitPolicy("transit", "kek"))
	tokenFile := filepath.Join(plugintest.ShortTempDir(t), "token")
	os.WriteFile(tokenFile, []byte(v.CreateToken(t, vaultd.TokenOptions{Policies: []string{"kms"}, TTL: "1h", Renewable: true})), 0o600)

	p := serveInProcess(t, "--backend", "vault", "--vault-addr", v.Addr, "--vault-transit-key", "kek",
		"--vault-token-file", tokenFile, "--check-interval", "100ms", "--proof-interval", "100ms", "--timeout", "1s",
		"--vault-memory-grace", "0") // readiness follows Vault itself; serving from memory: memory_test.go
	health := healthpb.NewHealthClient(p.conn)
	v2 := kmsapi.NewKeyManagementServiceClient(p.conn)
	before, err := v2.Status(t.Context(), &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ready := func(want bool) func(context.Context) error {
		return func(ctx context.Context) error {
			code, body := p.get(t, "/readyz")
			if (code == 200) != want {
				return fmt.Errorf("/readyz %d %q", code, body)
			}
			h, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: "v2.KeyManagementService"})
			if err != nil || (h.Status == healthpb.HealthCheckResponse_SERVING) != want {
				return fmt.Errorf("gRPC health %v %v", h, err)
			}
			_, text := p.get(t, "/metrics")
			if v, _ := metric(text, `kms_plugin_backend_healthy{backend="vault"}`); (v == 1) != want {
				return fmt.Errorf("kms_plugin_backend_healthy %v", v)
			}
			return nil
		}
	}
	run.Eventually(t, 30*time.Second, "ready with Vault up", ready(true))
	_, text := p.get(t, "/metrics")
	wantMetric(t, text, `kms_plugin_backend_token_ttl_seconds{backend="vault"}`, func(v float64) bool { return v > 0 && v <= 3600 })
	wantMetric(t, text, fmt.Sprintf(`kms_plugin_key_info{backend="vault",key_id=%q}`, before.KeyId), eq(1))

	v.Seal(t)
	run.Eventually(t, 30*time.Second, "not ready with Vault sealed", ready(false))
	if code, _ := p.get(t, "/healthz"); code != 200 {
		t.Fatalf("/healthz %d while Vault is sealed: liveness must not depend on the backend", code)
	}
	during, err := v2.Status(t.Context(), &kmsapi.StatusRequest{})
	if err != nil || during.KeyId != before.KeyId || during.Healthz == "ok" {
		t.Fatalf("Status while sealed: %+v %v", during, err)
	}
	_, text = p.get(t, "/metrics")
	wantMetric(t, text, `kms_plugin_backend_calls_total{backend="vault",operation="check",result="unavailable"}`, atLeast(1))

	v.Unseal(t)
	run.Eventually(t, 60*time.Second, "ready again after unseal", ready(true))
}

// Every flag and config-file setting that docs/operations.md and the README's flag table show
// exists, so the operator docs cannot drift from the CLI.
func TestOperationsDocsMatchCLI(t *testing.T) {
	fs := newRootCommand().Flags()
	apiserverFlags := map[string]bool{"feature-gates": true}
	for _, doc := range []string{"../../docs/operations.md", "../../docs/metrics.md", "../../README.md"} {
		raw, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile("`(--[a-z][a-z0-9-]+)").FindAllStringSubmatch(string(raw), -1) {
			name := strings.TrimPrefix(m[1], "--")
			if fs.Lookup(name) == nil && !apiserverFlags[name] && name != "help" {
				t.Errorf("%s shows %s, which kms-plugin does not have", doc, m[1])
			}
		}
	}
	raw, _ := os.ReadFile("../../docs/operations.md")
	_, after, _ := strings.Cut(string(raw), "## Configuration file")
	_, example, _ := strings.Cut(after, "```yaml\n")
	example, _, _ = strings.Cut(example, "```")
	if example == "" {
		t.Fatal("no config file example in docs/operations.md")
	}
	config := filepath.Join(plugintest.ShortTempDir(t), "config.yaml")
	os.WriteFile(config, []byte(example), 0o600)
	cmd := newRootCommand()
	if err := cmd.ParseFlags([]string{"--config", config}); err != nil {
		t.Fatal(err)
	}
	if err := serveconfig.ApplyConfigFile(cmd.Flags()); err != nil {
		t.Fatalf("the documented config file: %v", err)
	}
	if got, _ := cmd.Flags().GetString("vault-transit-key"); got != "kubernetes" {
		t.Fatalf("vault-transit-key = %q", got)
	}
}

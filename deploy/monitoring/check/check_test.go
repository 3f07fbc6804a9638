// Package check tests deploy/monitoring against Prometheus' own code and a running plugin: the
// alert rules load as Prometheus loads them (rulefmt, as `promtool check rules` does), every
// PromQL expression in the rules and in the Grafana dashboard parses with Prometheus' parser, and
// every metric they name is in a real /metrics scrape of kms-plugin, and the alerts fire as the docs
// say through a Vault outage (alerts_test.go, Prometheus' rule engine). It is a module of its own so
// that the Prometheus module stays out of the plugin's go.mod; scripts/test.sh runs it.
package check

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

const (
	rulesFile     = "../kms-plugin-rules.yaml"
	dashboardFile = "../kms-plugin-dashboard.json"
	repoRoot      = "../../.."
)

// promQL is Prometheus' PromQL parser with its default options, as a Prometheus server and
// promtool use it.
var promQL = parser.NewParser(parser.Options{})

// An expression and where it comes from.
type expr struct{ where, promql string }

func TestRulesLoadAsPrometheusLoadsThem(t *testing.T) {
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promQL, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if groups == nil || len(groups.Groups) == 0 || len(groups.Groups[0].Rules) < 10 {
		t.Fatalf("%s: no rules loaded", rulesFile)
	}
	for _, r := range groups.Groups[0].Rules {
		if r.Alert == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
			t.Errorf("rule %q: every rule is an alert with a severity and a summary", r.Alert)
		}
	}
}

func TestExpressionsParseAndNameExportedMetrics(t *testing.T) {
	exprs := append(ruleExprs(t), dashboardExprs(t)...)
	if len(exprs) < 30 {
		t.Fatalf("found only %d expressions: the walk is broken", len(exprs))
	}
	used := map[string][]string{} // metric name -> where
	for _, e := range exprs {
		node, err := promQL.ParseExpr(e.promql)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", e.where, e.promql, err)
			continue
		}
		names := metricNames(node)
		if len(names) == 0 {
			t.Errorf("%s: %q names no metric", e.where, e.promql)
		}
		for _, n := range names {
			used[n] = append(used[n], e.where)
		}
	}

	exported := scrapeLocalAES(t)
	vaultOnly := map[string]bool{}
	if v := scrapeVault(t); v != nil {
		for n := range v {
			if !exported[n] {
				vaultOnly[n] = true
				exported[n] = true
			}
		}
		t.Logf("exported only with --backend vault: %v", keys(vaultOnly))
	}
	for _, n := range keys(used) {
		if !exported[n] {
			t.Errorf("%s is not exported by a running plugin; used by %s", n, strings.Join(used[n], ", "))
		}
	}
	// Every kms_plugin_ metric the plugin exports appears in the dashboard or the rules.
	for _, n := range keys(exported) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if strings.HasPrefix(n, "kms_plugin_") && len(used[n]) == 0 && len(used[base+"_bucket"]) == 0 {
			t.Errorf("%s is exported but neither the rules nor the dashboard use it", n)
		}
	}
}

// metricNames are the names of every series selector in node.
func metricNames(node parser.Node) []string {
	var names []string
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name != "" {
			names = append(names, vs.Name)
			return nil
		}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				names = append(names, m.Value)
			}
		}
		return nil
	})
	return names
}

func ruleExprs(t *testing.T) []expr {
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promQL, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	var out []expr
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			out = append(out, expr{"rule " + r.Alert + r.Record, r.Expr})
		}
	}
	return out
}

// grafanaVars are the dashboard's variables and what they stand for when parsing: Grafana
// replaces them before sending a query.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "${instance}", ".+", "$instance", ".+")

// labelValues is Grafana's variable query label_values(metric, label).
var labelValues = regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)

// dashboardExprs walks the dashboard for every "expr" (panel targets, annotations) and every
// variable query.
func dashboardExprs(t *testing.T) []expr {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var out []expr
	var walk func(v any, where string)
	walk = func(v any, where string) {
		switch v := v.(type) {
		case map[string]any:
			if title, ok := v["title"].(string); ok {
				where = "dashboard " + title
			}
			for k, c := range v {
				if s, ok := c.(string); ok && k == "expr" {
					out = append(out, expr{where, grafanaVars.Replace(s)})
				}
				walk(c, where)
			}
		case []any:
			for _, c := range v {
				walk(c, where)
			}
		}
	}
	walk(doc, "dashboard")
	tmpl, _ := doc.(map[string]any)["templating"].(map[string]any)
	vars, _ := tmpl["list"].([]any)
	for _, v := range vars {
		v, _ := v.(map[string]any)
		if v["type"] != "query" {
			continue
		}
		def, _ := v["definition"].(string)
		m := labelValues.FindStringSubmatch(def)
		if m == nil {
			t.Errorf("dashboard variable %v: query %q is not label_values(metric, label)", v["name"], def)
			continue
		}
		out = append(out, expr{fmt.Sprintf("dashboard variable %v", v["name"]), m[1]})
	}
	return out
}

// buildPlugin builds kms-plugin from the repository once per test run.
func buildPlugin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kms-plugin")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/kms-plugin")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/kms-plugin: %v\n%s", err, out)
	}
	return bin
}

var pluginBinary string

func plugin(t *testing.T) string {
	if pluginBinary == "" {
		pluginBinary = buildPlugin(t)
	}
	return pluginBinary
}

// scrapeLocalAES runs the plugin on a fresh key file and returns the names in its /metrics.
func scrapeLocalAES(t *testing.T) map[string]bool {
	dir := shortTempDir(t)
	secret := make([]byte, 32)
	rand.Read(secret)
	keys := filepath.Join(dir, "keys.yaml")
	if err := os.WriteFile(keys, []byte("keys:\n- name: monitoring\n  secret: "+base64.StdEncoding.EncodeToString(secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return scrape(t, "kms_plugin_backend_healthy", "--localaes-key-file", keys)
}

// scrapeVault runs the plugin against a Vault dev server with a token that expires (so that the
// token's TTL is exported), when the Vault binary that integration/servers/build.sh builds is
// there; nil when it is not (an error with KMS_PLUGIN_REQUIRE_SERVERS=1, as scripts/test.sh sets).
func scrapeVault(t *testing.T) map[string]bool {
	vault := vaultBinary()
	if vault == "" {
		if os.Getenv("KMS_PLUGIN_REQUIRE_SERVERS") != "" {
			t.Fatal("no Vault binary: run integration/servers/build.sh vault")
		}
		t.Log("no Vault binary (integration/servers/build.sh vault): metrics exported only with --backend vault are not checked")
		return nil
	}
	port := freePort(t)
	addr := fmt.Sprintf("http://127.0.0.1:%d", port)
	cmd := exec.Command(vault, "server", "-dev", "-dev-root-token-id=root", fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", port),
		"-dev-no-store-token", "-log-level=warn")
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "VAULT_ADDR="+addr)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, 60*time.Second, "Vault", func() error { _, err := vaultCall(addr, "GET", "/v1/sys/health", ""); return err })
	for _, c := range [][3]string{
		{"POST", "/v1/sys/mounts/transit", `{"type":"transit"}`},
		{"POST", "/v1/transit/keys/kubernetes", `{}`},
	} {
		if _, err := vaultCall(addr, c[0], c[1], c[2]); err != nil {
			t.Fatal(err)
		}
	}
	body, err := vaultCall(addr, "POST", "/v1/auth/token/create", `{"ttl":"1h","policies":["root"]}`)
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	if err := json.Unmarshal(body, &created); err != nil || created.Auth.ClientToken == "" {
		t.Fatalf("token create: %v %s", err, body)
	}
	tokenFile := filepath.Join(shortTempDir(t), "token")
	if err := os.WriteFile(tokenFile, []byte(created.Auth.ClientToken), 0o600); err != nil {
		t.Fatal(err)
	}
	return scrape(t, "kms_plugin_backend_token_ttl_seconds", "--backend", "vault", "--vault-addr", addr,
		"--vault-transit-key", "kubernetes", "--vault-token-file", tokenFile)
}

func vaultBinary() string {
	dir := os.Getenv("KMS_PLUGIN_SERVERS_DIR")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "kms-plugin", "servers")
	}
	if info, err := os.Stat(filepath.Join(dir, "vault")); err == nil && !info.IsDir() {
		return filepath.Join(dir, "vault")
	}
	return ""
}

func vaultCall(addr, method, path, body string) ([]byte, error) {
	req, err := http.NewRequest(method, addr+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", "root")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return out, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, out)
	}
	return out, nil
}

// scrape runs the plugin with args, waits until its /metrics holds want, and returns the
// names of every sample in it.
func scrape(t *testing.T, want string, args ...string) map[string]bool {
	t.Helper()
	dir := shortTempDir(t)
	health := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, plugin(t), append([]string{"--listen", filepath.Join(dir, "kms.sock"), "--health-addr", health, "--log-level", "warn"}, args...)...)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()
	var names map[string]bool
	waitFor(t, 30*time.Second, "the plugin's /metrics with "+want, func() error {
		resp, err := http.Get("http://" + health + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		names = map[string]bool{}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if line == "" || line[0] == '#' {
				continue
			}
			names[line[:strings.IndexAny(line, "{ ")]] = true
		}
		if !names[want] {
			return fmt.Errorf("%s not yet exported; plugin log:\n%s", want, log.String())
		}
		return nil
	})
	return names
}

func waitFor(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// shortTempDir is a temporary directory with a short path: a socket's path holds 107 bytes.
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "kpmon")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

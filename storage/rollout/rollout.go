// Package rollout tells what each kube-apiserver of a cluster has loaded and writes with,
// from the apiserver's own metrics: the EncryptionConfiguration it runs
// (apiserver_encryption_config_controller_last_config_info, a hash of the file), and per KMS
// v2 provider the key id its last Status returned and the key id of its last write
// (apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds and
// apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{transformation_type="to_storage"}).
// The apiservers are found through the `kubernetes` Service's EndpointSlices.
//
// The apiserver publishes hashes, never key ids: "sha256:" and the hex SHA-256 of the key id,
// or of the configuration file's bytes (k8s.io/apiserver pkg/storage/value/encrypt/envelope/metrics
// getHash, pkg/server/options/encryptionconfig computeEncryptionConfigHash). HashKeyID and
// HashConfig compute the same, so a plugin's key id and a file on disk can be compared.
package rollout

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Metric names read from each apiserver.
const (
	configInfoMetric = "apiserver_encryption_config_controller_last_config_info"
	statusKeyMetric  = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"
	writeKeyMetric   = "apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds"
	reloadsMetric    = "apiserver_encryption_config_controller_automatic_reloads_total"
	reloadedAtMetric = "apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds"
)

// probeSlack is how long before a successful reload the apiserver may have asked the plugins
// of the new configuration for their Status: it probes each KMS v2 provider while loading the
// file (a Status and an Encrypt each, usually well under a second), then records the reload.
// A kept provider taken for removed (a load slower than this) shows again at its next Status
// poll, a minute later; a removed one whose last poll fell within it keeps its row.
const probeSlack = 10 * time.Second

// HashKeyID is how the apiserver's metrics name a key id.
func HashKeyID(keyID string) string { return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(keyID))) }

// HashConfig is how the apiserver's metrics name the EncryptionConfiguration it loaded: the
// hash of the file's bytes, exactly as read.
func HashConfig(data []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(data)) }

// State is what one apiserver's metrics say.
type State struct {
	Endpoint string `json:"endpoint"`
	// ConfigHash is the hash of the EncryptionConfiguration it runs ("" if it has none).
	ConfigHash string `json:"configHash,omitempty"`
	// ReloadFailures counts rejected automatic reloads since it started: after one, it still
	// runs the previous configuration.
	ReloadFailures float64 `json:"reloadFailures,omitempty"`
	// ReloadedAt is the time of its last successful automatic reload (zero if none).
	ReloadedAt time.Time `json:"reloadedAt,omitzero"`
	// Providers are the KMS v2 providers it runs. The apiserver keeps a provider's series
	// after a reload removed it, with their last times: Parse leaves out the providers that
	// no Status has answered since the last reload (Removed lists them).
	Providers map[string]ProviderKeys `json:"providers,omitempty"`
	Removed   []string                `json:"removedProviders,omitempty"`
	Err       string                  `json:"error,omitempty"`
}

// ProviderKeys is, for one KMS v2 provider of one apiserver, the key id hash of its latest
// Status answer and of its latest write, with their times.
type ProviderKeys struct {
	Status   string    `json:"status,omitempty"`
	StatusAt time.Time `json:"statusAt"`
	Write    string    `json:"write,omitempty"`
	WriteAt  time.Time `json:"writeAt"`
}

// WritesWith is the key id hash the apiserver writes new objects under: the one of its
// latest Status answer (on a new key id the apiserver switches its write key at that Status
// call), unless it wrote under another key after that answer, which means the switch failed.
func (p ProviderKeys) WritesWith() string {
	if p.Write != "" && p.Write != p.Status && p.WriteAt.After(p.StatusAt) {
		return p.Write
	}
	if p.Status != "" {
		return p.Status
	}
	return p.Write
}

// Endpoints returns the apiservers of the cluster: https://<address>:<port> for every ready
// endpoint of the `kubernetes` Service's EndpointSlices (namespace default).
func Endpoints(ctx context.Context, cs kubernetes.Interface) ([]string, error) {
	slices, err := cs.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=kubernetes",
	})
	if err != nil {
		return nil, fmt.Errorf("listing the kubernetes Service's EndpointSlices: %w", err)
	}
	var out []string
	for _, s := range slices.Items {
		port := 443
		for _, p := range s.Ports {
			if p.Port != nil && (p.Name == nil || *p.Name == "https") {
				port = int(*p.Port)
			}
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				out = append(out, "https://"+net.JoinHostPort(a, strconv.Itoa(port)))
			}
		}
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("the kubernetes Service has no ready endpoint")
	}
	return out, nil
}

// Read asks one apiserver for its /metrics, with cfg's credentials and CA. The apiserver's
// certificate is checked against cfg's server name when the endpoint is an address.
func Read(ctx context.Context, cfg *rest.Config, endpoint string) State {
	st := State{Endpoint: endpoint}
	c := rest.CopyConfig(cfg)
	c.Host = endpoint
	if c.TLSClientConfig.ServerName == "" {
		if u, err := urlHost(cfg.Host); err == nil && net.ParseIP(u) == nil {
			c.TLSClientConfig.ServerName = u
		}
	}
	hc, err := rest.HTTPClientFor(c)
	if err != nil {
		st.Err = err.Error()
		return st
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(endpoint, "/")+"/metrics", nil)
	if err != nil {
		st.Err = err.Error()
		return st
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := hc.Do(req)
	if err != nil {
		st.Err = err.Error()
		return st
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		st.Err = fmt.Sprintf("/metrics: %s: %s", resp.Status, strings.TrimSpace(string(b)))
		return st
	}
	parsed, err := Parse(resp.Body)
	if err != nil {
		st.Err = err.Error()
		return st
	}
	parsed.Endpoint = endpoint
	return parsed
}

func urlHost(raw string) (string, error) {
	raw = strings.TrimPrefix(strings.TrimPrefix(raw, "https://"), "http://")
	host, _, _ := strings.Cut(raw, "/")
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h, nil
	}
	return host, nil
}

// Parse reads the metrics that matter from an apiserver's /metrics (text format).
func Parse(r io.Reader) (State, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(r)
	if err != nil {
		return State{}, fmt.Errorf("reading /metrics: %w", err)
	}
	st := State{Providers: map[string]ProviderKeys{}}
	if f := families[configInfoMetric]; f != nil {
		for _, m := range f.Metric {
			st.ConfigHash = label(m, "hash")
		}
	}
	if f := families[reloadsMetric]; f != nil {
		for _, m := range f.Metric {
			if label(m, "status") == "failure" && m.Counter != nil {
				st.ReloadFailures += m.Counter.GetValue()
			}
		}
	}
	if f := families[reloadedAtMetric]; f != nil {
		for _, m := range f.Metric {
			if at := seconds(m); label(m, "status") == "success" && at.After(st.ReloadedAt) {
				st.ReloadedAt = at
			}
		}
	}
	if f := families[statusKeyMetric]; f != nil {
		for _, m := range f.Metric {
			name, at := label(m, "provider_name"), seconds(m)
			pk := st.Providers[name]
			if at.After(pk.StatusAt) {
				pk.Status, pk.StatusAt = label(m, "key_id_hash"), at
			}
			st.Providers[name] = pk
		}
	}
	if f := families[writeKeyMetric]; f != nil {
		for _, m := range f.Metric {
			if label(m, "transformation_type") != "to_storage" {
				continue
			}
			name, at := label(m, "provider_name"), seconds(m)
			pk := st.Providers[name]
			if at.After(pk.WriteAt) {
				pk.Write, pk.WriteAt = label(m, "key_id_hash"), at
			}
			st.Providers[name] = pk
		}
	}
	// Every KMS v2 provider of a configuration is asked for its Status as the file loads and
	// every minute after: one not asked since the last reload is no longer configured.
	if !st.ReloadedAt.IsZero() {
		for name, pk := range st.Providers {
			if pk.StatusAt.Before(st.ReloadedAt.Add(-probeSlack)) {
				delete(st.Providers, name)
				st.Removed = append(st.Removed, name)
			}
		}
		sort.Strings(st.Removed)
	}
	return st, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func seconds(m *dto.Metric) time.Time {
	if m.Gauge == nil {
		return time.Time{}
	}
	v := m.Gauge.GetValue()
	return time.Unix(0, int64(v*float64(time.Second)))
}

// Want is what every apiserver should show. Empty fields are not checked.
type Want struct {
	// ConfigHash is HashConfig of the EncryptionConfiguration file every apiserver should run.
	ConfigHash string
	// Providers, if set, are the names of the file's KMS v2 providers: an apiserver that runs
	// the file runs no other (its metrics may still show one it ran before).
	Providers []string
	// KeyIDs are, per KMS v2 provider name, the key id its plugin's Status reports now.
	KeyIDs map[string]string
	// Latest are, per KMS v2 provider name, the key id its plugin must report once it has
	// caught up with its backend: for Vault, the key id of the transit key's latest version,
	// which the plugin adopts only after two consecutive checks have seen it.
	Latest map[string]string
	// names maps the hashes of the key ids known here back to the key ids, for display.
	names map[string]string
}

// Learn records key ids (of old key versions, say) so that Name can show them for their
// hashes; the key ids of KeyIDs and Latest are known without it.
func (w *Want) Learn(keyIDs ...string) {
	if w.names == nil {
		w.names = map[string]string{}
	}
	for _, id := range keyIDs {
		if id != "" {
			w.names[HashKeyID(id)] = id
		}
	}
}

// Name shows a key id hash as the operator needs it: the key id with its short hash,
// "vault:0123456789abcdef:v2 (9f86d081884c)", when the key id is known here; the short
// hash alone otherwise.
func (w Want) Name(hash string) string {
	id := w.names[hash]
	if id == "" {
		for _, m := range []map[string]string{w.KeyIDs, w.Latest} {
			for _, k := range m {
				if HashKeyID(k) == hash {
					id = k
				}
			}
		}
	}
	if id == "" || hash == "" {
		return Short(hash)
	}
	return id + " (" + Short(hash) + ")"
}

// Prune drops from each state that runs want's configuration the providers it does not have:
// the apiserver's metrics keep a removed provider's series until it restarts.
func Prune(states []State, want Want) {
	if want.ConfigHash == "" || want.Providers == nil {
		return
	}
	for i, s := range states {
		if s.ConfigHash != want.ConfigHash {
			continue
		}
		for name := range s.Providers {
			if !slices.Contains(want.Providers, name) {
				delete(states[i].Providers, name)
				states[i].Removed = append(states[i].Removed, name)
			}
		}
		sort.Strings(states[i].Removed)
	}
}

// Disagreements lists what keeps the apiservers from agreeing: an apiserver that did not
// answer, runs another configuration than want's, had a reload rejected, or writes a provider's
// objects under another key id than the other apiservers (or than want's). None means all agree.
func Disagreements(states []State, want Want) []string {
	var out []string
	providers := map[string]bool{}
	for _, s := range states {
		if s.Err != "" {
			out = append(out, fmt.Sprintf("%s: %s", s.Endpoint, s.Err))
			continue
		}
		if want.ConfigHash != "" && s.ConfigHash != want.ConfigHash {
			have := s.ConfigHash
			if have == "" {
				have = "none"
			}
			out = append(out, fmt.Sprintf("%s runs EncryptionConfiguration %s, not the file's %s", s.Endpoint, Short(have), Short(want.ConfigHash)))
		}
		for name := range s.Providers {
			providers[name] = true
		}
	}
	for name := range want.KeyIDs {
		providers[name] = true
	}
	for name := range want.Latest {
		providers[name] = true
	}
	names := make([]string, 0, len(providers))
	for n := range providers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		wantHash, what := "", "the plugin's current"
		if id, ok := want.KeyIDs[name]; ok {
			wantHash = HashKeyID(id)
		}
		if latest, ok := want.Latest[name]; ok {
			if id, ok := want.KeyIDs[name]; ok && id != latest {
				out = append(out, fmt.Sprintf("the plugin of %q reports key id %s, not the latest %s yet", name, want.Name(HashKeyID(id)), want.Name(HashKeyID(latest))))
			}
			wantHash, what = HashKeyID(latest), "the latest"
		}
		seen := map[string][]string{}
		for _, s := range states {
			if s.Err != "" {
				continue
			}
			pk, ok := s.Providers[name]
			if !ok {
				if wantHash != "" {
					out = append(out, fmt.Sprintf("%s: no Status from KMS provider %q yet", s.Endpoint, name))
				}
				continue
			}
			w := pk.WritesWith()
			seen[w] = append(seen[w], s.Endpoint)
			if wantHash != "" && w != wantHash {
				out = append(out, fmt.Sprintf("%s writes %q under key id %s, not %s %s", s.Endpoint, name, want.Name(w), what, want.Name(wantHash)))
			}
		}
		if len(seen) > 1 && wantHash == "" {
			var parts []string
			for h, eps := range seen {
				parts = append(parts, fmt.Sprintf("%s at %s", want.Name(h), strings.Join(eps, ", ")))
			}
			sort.Strings(parts)
			out = append(out, fmt.Sprintf("KMS provider %q: the apiservers write under different key ids: %s", name, strings.Join(parts, "; ")))
		}
	}
	return out
}

// Short abbreviates a sha256: hash for a table.
func Short(h string) string {
	if rest, ok := strings.CutPrefix(h, "sha256:"); ok && len(rest) > 12 {
		return rest[:12]
	}
	if h == "" {
		return "-"
	}
	return h
}

package rollout

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// metricsText is an apiserver's /metrics as kube-apiserver 1.37 writes these series.
func metricsText(configHash, statusHash string, statusAt float64, writeHash string, writeAt float64, failures int) string {
	return `# TYPE apiserver_encryption_config_controller_last_config_info gauge
apiserver_encryption_config_controller_last_config_info{apiserver_id_hash="sha256:x",hash="` + configHash + `"} 1
# TYPE apiserver_encryption_config_controller_automatic_reloads_total counter
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:x",status="failure"} ` + itoa(failures) + `
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:x",status="success"} 3
# TYPE apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds gauge
apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash="sha256:x",key_id_hash="sha256:old",provider_name="kms"} 100
apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash="sha256:x",key_id_hash="` + statusHash + `",provider_name="kms"} ` + ftoa(statusAt) + `
# TYPE apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds gauge
apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{apiserver_id_hash="sha256:x",key_id_hash="` + writeHash + `",provider_name="kms",transformation_type="to_storage"} ` + ftoa(writeAt) + `
apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{apiserver_id_hash="sha256:x",key_id_hash="sha256:read",provider_name="kms",transformation_type="from_storage"} 9999
`
}

func itoa(n int) string     { return strconv.Itoa(n) }
func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func at(sec int64) time.Time { return time.Unix(sec, 0) }

func TestParse(t *testing.T) {
	st, err := Parse(strings.NewReader(metricsText("sha256:cfg", "sha256:new", 200, "sha256:new", 250, 1)))
	if err != nil {
		t.Fatal(err)
	}
	pk := st.Providers["kms"]
	if st.ConfigHash != "sha256:cfg" || st.ReloadFailures != 1 || pk.Status != "sha256:new" || pk.Write != "sha256:new" || pk.WriteAt.Unix() != 250 {
		t.Fatalf("parsed %+v", st)
	}
	if pk.WritesWith() != "sha256:new" {
		t.Fatalf("WritesWith %q", pk.WritesWith())
	}
	if _, err := Parse(strings.NewReader("not metrics {")); err == nil {
		t.Fatal("garbage parsed")
	}
}

// An apiserver writes with its latest Status answer's key, unless it wrote under another key
// after that answer: then its switch failed.
func TestWritesWith(t *testing.T) {
	for _, tc := range []struct {
		pk   ProviderKeys
		want string
	}{
		{ProviderKeys{Status: "new", StatusAt: at(200), Write: "old", WriteAt: at(100)}, "new"},
		{ProviderKeys{Status: "new", StatusAt: at(200), Write: "old", WriteAt: at(300)}, "old"},
		{ProviderKeys{Write: "w", WriteAt: at(1)}, "w"},
	} {
		if got := tc.pk.WritesWith(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.pk, got, tc.want)
		}
	}
}

func TestDisagreements(t *testing.T) {
	state := func(ep, cfg, write string) State {
		return State{Endpoint: ep, ConfigHash: cfg, Providers: map[string]ProviderKeys{"kms": {Status: write, StatusAt: at(1)}}}
	}
	newHash := HashKeyID("vault:x:v2")
	agree := []State{state("a", "sha256:cfg", newHash), state("b", "sha256:cfg", newHash)}
	if d := Disagreements(agree, Want{ConfigHash: "sha256:cfg", KeyIDs: map[string]string{"kms": "vault:x:v2"}}); len(d) != 0 {
		t.Fatalf("agreeing apiservers: %v", d)
	}
	split := []State{state("a", "sha256:cfg", newHash), state("b", "sha256:cfg", HashKeyID("vault:x:v1"))}
	if d := Disagreements(split, Want{}); len(d) != 1 || !strings.Contains(d[0], "different key ids") {
		t.Fatalf("two key ids: %v", d)
	}
	if d := Disagreements(split, Want{KeyIDs: map[string]string{"kms": "vault:x:v2"}}); len(d) != 1 || !strings.Contains(d[0], "b writes") {
		t.Fatalf("one apiserver behind the plugin: %v", d)
	}
	other := []State{state("a", "sha256:other", newHash), {Endpoint: "c", Err: "connection refused"}}
	d := Disagreements(other, Want{ConfigHash: "sha256:cfg"})
	if len(d) != 2 || !strings.Contains(strings.Join(d, "\n"), "runs EncryptionConfiguration") || !strings.Contains(strings.Join(d, "\n"), "connection refused") {
		t.Fatalf("another config and an apiserver that did not answer: %v", d)
	}
}

// The apiservers are the ready endpoints of the kubernetes Service's EndpointSlices.
func TestEndpoints(t *testing.T) {
	ready, notReady := true, false
	port, name := int32(6443), "https"
	cs := fake.NewClientset(&discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
			{Addresses: []string{"10.0.0.1"}},
			{Addresses: []string{"10.0.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}},
		},
	}, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "other"}},
		Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"10.9.9.9"}}},
	})
	got, err := Endpoints(context.Background(), cs)
	if err != nil || strings.Join(got, ",") != "https://10.0.0.1:6443,https://10.0.0.2:6443" {
		t.Fatalf("Endpoints = %v, %v", got, err)
	}
	if _, err := Endpoints(context.Background(), fake.NewClientset()); err == nil {
		t.Fatal("no EndpointSlice: no error")
	}
}

// After a reload that removed a provider, the apiserver still exports that provider's series
// with their old times (until it restarts); no Status has answered for it since the reload, so
// Parse leaves it out. A provider the reload kept was asked for its Status as the file loaded,
// a moment before the reload was recorded.
func TestParseDropsRemovedProvider(t *testing.T) {
	text := `# TYPE apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds gauge
apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds{apiserver_id_hash="sha256:x",status="failure"} 5000
apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds{apiserver_id_hash="sha256:x",status="success"} 1000
# TYPE apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds gauge
apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash="sha256:x",key_id_hash="sha256:a",provider_name="old"} 900
apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash="sha256:x",key_id_hash="sha256:b",provider_name="kept"} 999.5
apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash="sha256:x",key_id_hash="sha256:c",provider_name="new"} 1060
# TYPE apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds gauge
apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{apiserver_id_hash="sha256:x",key_id_hash="sha256:a",provider_name="old",transformation_type="to_storage"} 950
`
	st, err := Parse(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if st.ReloadedAt.Unix() != 1000 {
		t.Errorf("ReloadedAt %v, want the last success (1000)", st.ReloadedAt)
	}
	if _, ok := st.Providers["old"]; ok || strings.Join(st.Removed, ",") != "old" {
		t.Errorf("providers %v, removed %v: want old removed", st.Providers, st.Removed)
	}
	for _, name := range []string{"kept", "new"} {
		if _, ok := st.Providers[name]; !ok {
			t.Errorf("provider %q dropped: %v", name, st.Providers)
		}
	}
	// Without a reload, every series is of the running configuration (a restart clears them).
	st, err = Parse(strings.NewReader(metricsText("sha256:cfg", "sha256:new", 200, "sha256:new", 250, 0)))
	if err != nil || len(st.Providers) != 1 || len(st.Removed) != 0 {
		t.Errorf("no reload: %+v, %v", st, err)
	}
}

// An apiserver that runs the file has none of the providers the file lacks.
func TestPrune(t *testing.T) {
	states := []State{
		{Endpoint: "a", ConfigHash: "sha256:cfg", Providers: map[string]ProviderKeys{"kms": {}, "gone": {}}},
		{Endpoint: "b", ConfigHash: "sha256:old", Providers: map[string]ProviderKeys{"kms": {}, "gone": {}}},
	}
	Prune(states, Want{ConfigHash: "sha256:cfg", Providers: []string{"kms"}})
	if _, ok := states[0].Providers["gone"]; ok || len(states[0].Removed) != 1 {
		t.Errorf("apiserver on the file: %+v", states[0])
	}
	if len(states[1].Providers) != 2 {
		t.Errorf("apiserver on another file lost a provider: %+v", states[1])
	}
}

// With the latest key id known (Vault's transit key), apiservers and a plugin that all agree on
// the version before a rotation are not done: the plugin has not adopted the new one yet.
func TestDisagreementsLatest(t *testing.T) {
	v1, v2 := "vault:0123456789abcdef:v1", "vault:fedcba9876543210:v2"
	state := func(ep, id string) State {
		return State{Endpoint: ep, Providers: map[string]ProviderKeys{"kms": {Status: HashKeyID(id), StatusAt: at(1)}}}
	}
	behind := []State{state("a", v1), state("b", v1)}
	if d := Disagreements(behind, Want{KeyIDs: map[string]string{"kms": v1}}); len(d) != 0 {
		t.Fatalf("without the latest key id: %v", d)
	}
	d := Disagreements(behind, Want{KeyIDs: map[string]string{"kms": v1}, Latest: map[string]string{"kms": v2}})
	all := strings.Join(d, "\n")
	if len(d) != 3 || !strings.Contains(all, `the plugin of "kms" reports key id `+v1) || !strings.Contains(all, "not the latest "+v2) ||
		!strings.Contains(all, "a writes \"kms\" under key id "+v1+" ("+Short(HashKeyID(v1))+"), not the latest "+v2) {
		t.Fatalf("plugin and apiservers behind the latest: %v", d)
	}
	// The plugin has adopted it, the apiservers not yet (their next Status poll).
	d = Disagreements(behind, Want{KeyIDs: map[string]string{"kms": v2}, Latest: map[string]string{"kms": v2}})
	if len(d) != 2 || strings.Contains(strings.Join(d, "\n"), "the plugin of") {
		t.Fatalf("apiservers behind the plugin: %v", d)
	}
	// Without a reachable socket the latest key id alone decides.
	if d := Disagreements(behind, Want{Latest: map[string]string{"kms": v2}}); len(d) != 2 {
		t.Fatalf("no plugin socket: %v", d)
	}
	if d := Disagreements([]State{state("a", v2), state("b", v2)}, Want{KeyIDs: map[string]string{"kms": v2}, Latest: map[string]string{"kms": v2}}); len(d) != 0 {
		t.Fatalf("all on the latest: %v", d)
	}
}

// Key ids known here are shown with their hashes; unknown hashes alone.
func TestName(t *testing.T) {
	var w Want
	w.Learn("vault:0123456789abcdef:v1")
	w.KeyIDs = map[string]string{"kms": "vault:0123456789abcdef:v2"}
	h1, h2 := HashKeyID("vault:0123456789abcdef:v1"), HashKeyID("vault:0123456789abcdef:v2")
	if got := w.Name(h1); got != "vault:0123456789abcdef:v1 ("+Short(h1)+")" {
		t.Errorf("learned: %q", got)
	}
	if got := w.Name(h2); got != "vault:0123456789abcdef:v2 ("+Short(h2)+")" {
		t.Errorf("plugin's: %q", got)
	}
	if got := w.Name("sha256:aaaaaaaaaaaaaaaaaaaaaaaa"); got != "aaaaaaaaaaaa" {
		t.Errorf("unknown: %q", got)
	}
	if got := w.Name(""); got != "-" {
		t.Errorf("none: %q", got)
	}
}

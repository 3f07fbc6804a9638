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

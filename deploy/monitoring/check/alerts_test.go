package check

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
)

// TestAlertsDuringAnOutage evaluates the shipped rules with Prometheus' rule engine, as a
// Prometheus server does every minute, on 20 minutes of synthetic series of one plugin, and
// compares the alerts firing at the end with what docs/metrics.md and docs/vault.md promise:
// while the plugin serves from memory within the grace, a warning (and a critical alert only
// when the grace is about to end); once the grace is over or Vault refuses, the critical ones.
//
// Series are in promqltest's `load 1m` notation (`1x9 0x10`: 1 from 0 to 9m, 0 from 10m to
// 20m); each one gets the labels a scrape of one plugin adds.
func TestAlertsDuringAnOutage(t *testing.T) {
	const calls = "kms_plugin_backend_calls_total"
	for _, c := range []struct {
		name    string
		backend string // "" is vault
		series  []string
		want    []string
	}{{
		name: "healthy",
		series: []string{"kms_plugin_backend_healthy 1x20", "kms_plugin_serving_from_memory 0x20",
			"kms_plugin_memory_grace_remaining_seconds 0x20", calls + `{operation="check",result="ok"} 0+6x20`},
	}, {
		name: "serving from memory for 10 minutes, 3 hours of grace left",
		series: []string{"kms_plugin_backend_healthy 1x9 0x10", "kms_plugin_serving_from_memory 0x9 1x10",
			"kms_plugin_memory_grace_remaining_seconds 0x9 10800-60x10",
			calls + `{operation="check",result="ok"} 0+6x9 54x10`, calls + `{operation="check",result="unavailable"} 0x9 0+6x10`},
		want: []string{"KMSPluginServingFromMemory"},
	}, {
		name: "serving from memory, 15 minutes of grace left",
		series: []string{"kms_plugin_backend_healthy 1x9 0x10", "kms_plugin_serving_from_memory 0x9 1x10",
			"kms_plugin_memory_grace_remaining_seconds 0x9 1500-60x10",
			calls + `{operation="check",result="ok"} 0+6x9 54x10`, calls + `{operation="check",result="unavailable"} 0x9 0+6x10`},
		want: []string{"KMSPluginMemoryGraceEnding", "KMSPluginServingFromMemory"},
	}, {
		name: "grace over 10 minutes ago",
		series: []string{"kms_plugin_backend_healthy 1x4 0x15", "kms_plugin_serving_from_memory 0x4 1x4 0x11",
			"kms_plugin_memory_grace_remaining_seconds 0x4 300-60x4 0x11",
			calls + `{operation="check",result="ok"} 0+6x4 24x15`, calls + `{operation="check",result="unavailable"} 0x4 0+6x15`},
		want: []string{"KMSPluginBackendUnavailable", "KMSPluginVaultUnreachable"},
	}, {
		name: "Vault refuses",
		series: []string{"kms_plugin_backend_healthy 1x4 0x15", "kms_plugin_serving_from_memory 0x20",
			"kms_plugin_memory_grace_remaining_seconds 0x20",
			calls + `{operation="check",result="ok"} 0+6x4 24x15`, calls + `{operation="check",result="denied"} 0x4 0+6x15`},
		want: []string{"KMSPluginBackendUnavailable", "KMSPluginVaultDenied"},
	}, {
		// Expiry at 10800 s (3 h after the series start): 20 minutes in, 2h40 are left.
		name: "break-glass mode, hours left",
		series: []string{"kms_plugin_backend_healthy 1x20", "kms_plugin_serving_from_memory 0x20",
			"kms_plugin_break_glass 0x4 1x15", "kms_plugin_break_glass_expiry_timestamp_seconds 0x4 10800x15",
			calls + `{operation="check",result="ok"} 0+6x20`},
		want: []string{"KMSPluginBreakGlass"},
	}, {
		// Expiry at 1500 s: 20 minutes in, 5 minutes are left.
		name: "break-glass mode ending",
		series: []string{"kms_plugin_backend_healthy 1x20", "kms_plugin_serving_from_memory 0x20",
			"kms_plugin_break_glass 0x4 1x15", "kms_plugin_break_glass_expiry_timestamp_seconds 0x4 1500x15",
			calls + `{operation="check",result="ok"} 0+6x20`},
		want: []string{"KMSPluginBreakGlass", "KMSPluginBreakGlassEnding"},
	}, {
		name: "break-glass mode over",
		series: []string{"kms_plugin_backend_healthy 1x20", "kms_plugin_serving_from_memory 0x20",
			"kms_plugin_break_glass 0x4 1x10 0x5", "kms_plugin_break_glass_expiry_timestamp_seconds 0x4 900x15",
			calls + `{operation="check",result="ok"} 0+6x20`},
	}, {
		name: "localaes unhealthy (no serving_from_memory series)", backend: "localaes",
		series: []string{"kms_plugin_backend_healthy 1x9 0x10", calls + `{operation="wrap",result="error"} 0x9 0+6x10`},
		want:   []string{"KMSPluginBackendUnavailable"},
	}} {
		t.Run(c.name, func(t *testing.T) {
			backend := cmp.Or(c.backend, "vault")
			got := firingAfter(t, 20*time.Minute, append(c.series, `kms_plugin_build_info{version="test"} 1x20`), backend)
			if !slices.Equal(got, c.want) {
				t.Errorf("firing after 20 minutes: %v, want %v", got, c.want)
			}
		})
	}
}

// firingAfter loads series (with the labels a scrape of one plugin adds), evaluates the
// rules file every minute from 0 to end, and returns the names of the alerts firing at end.
func firingAfter(t *testing.T, end time.Duration, series []string, backend string) []string {
	lbls := `instance="node1:8095",job="kms-plugin",backend="` + backend + `"`
	var load strings.Builder
	load.WriteString("load 1m\n")
	for _, s := range series {
		name, values, _ := strings.Cut(s, " ")
		if base, rest, ok := strings.Cut(name, "{"); ok {
			name = base + "{" + lbls + "," + rest
		} else {
			name += "{" + lbls + "}"
		}
		load.WriteString("  " + name + " " + values + "\n")
	}
	store := promqltest.LoadedStorage(t, load.String())
	t.Cleanup(func() { store.Close() })
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1e6, Timeout: time.Minute, Parser: promQL})
	t.Cleanup(func() { engine.Close() })

	m := rules.NewManager(&rules.ManagerOptions{
		QueryFunc:    rules.EngineQueryFunc(engine, store),
		AppendableV2: store,
		Context:      context.Background(),
		NotifyFunc:   func(context.Context, string, ...*rules.Alert) {},
		Parser:       promQL,
	})
	groups, errs := m.LoadGroups(time.Minute, labels.EmptyLabels(), "", nil, false, rulesFile)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	var firing []string
	for ts := time.Unix(0, 0).UTC(); !ts.After(time.Unix(0, 0).Add(end)); ts = ts.Add(time.Minute) {
		firing = firing[:0]
		for _, g := range groups {
			g.Eval(context.Background(), ts)
			for _, r := range g.Rules() {
				if err := r.LastError(); err != nil {
					t.Fatalf("rule %s at %s: %v", r.Name(), ts.Format(time.TimeOnly), err)
				}
				if a, ok := r.(*rules.AlertingRule); ok && a.State() == rules.StateFiring {
					firing = append(firing, a.Name())
				}
			}
		}
	}
	slices.Sort(firing)
	return firing
}

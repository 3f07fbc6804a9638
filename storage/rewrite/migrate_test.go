package rewrite

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/storage/rollout"
)

// The pre-check tells a check that could not run (metrics unread: a plain error, exit 1)
// from one that ran and failed (apiservers on different keys: *CheckFailed, exit 3), and
// Migrate stops there, before it reaches the cluster.
func TestMigratePreCheck(t *testing.T) {
	node := func(endpoint, keyID string) rollout.State {
		return rollout.State{Endpoint: endpoint, Providers: map[string]rollout.ProviderKeys{
			"kms-plugin": {Status: rollout.HashKeyID(keyID), StatusAt: time.Unix(1000, 0)}}}
	}
	for _, tc := range []struct {
		name    string
		states  []rollout.State
		named   bool
		check   bool
		message string
	}{
		{"unread", []rollout.State{node("a", "key-2"), {Endpoint: "b", Err: "connection refused"}}, true, false,
			"the metrics of 1 of 2 apiservers (from --apiservers) are unreachable or refused"},
		{"unread through the Service", []rollout.State{{Endpoint: "b", Err: "connection refused"}}, false, false,
			"(the kubernetes Service's endpoints)"},
		{"disagree", []rollout.State{node("a", "key-2"), node("b", "key-1")}, false, true,
			"not rewriting: the apiservers do not all write under the current key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			sum, err := Migrate(t.Context(), Plan{Via: ViaPatch, Log: &log, NamedAPIServers: tc.named,
				States: func(context.Context) ([]rollout.State, error) { return tc.states, nil }})
			if err == nil || sum != nil {
				t.Fatalf("Migrate: %v, %v; want no summary and an error", sum, err)
			}
			var failed *CheckFailed
			if errors.As(err, &failed) != tc.check {
				t.Errorf("Migrate's error %T %q: *CheckFailed %v, want %v", err, err, !tc.check, tc.check)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("Migrate's error %q does not say %q", err, tc.message)
			}
		})
	}
}

func TestFailuresError(t *testing.T) {
	if err := failuresError(nil, "objects were not rewritten"); err != nil {
		t.Errorf("failuresError of none: %v", err)
	}
	err := failuresError([]Failure{{Resource: "secrets", Namespace: "ns", Name: "a", Reason: "why"}}, "objects were not rewritten")
	var failed *CheckFailed
	if !errors.As(err, &failed) || err.Error() != "1 objects were not rewritten:\n  secrets ns/a: why" {
		t.Errorf("failuresError: %T %q", err, err)
	}
}

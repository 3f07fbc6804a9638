package vault

import (
	"log/slog"
	"testing"
)

func TestLaggingView(t *testing.T) {
	view := func(latest int, created map[int]int64) *keyState {
		st := &keyState{created: created}
		st.latest = KeyVersion{lineage: lineage(created[latest]), version: latest}
		return st
	}
	k := &KEK{cfg: Config{Log: slog.New(slog.DiscardHandler)}}
	if k.laggingView(view(1, map[int]int64{1: 100})) {
		t.Error("nothing adopted yet: no view is lagging")
	}
	k.observed = view(2, map[int]int64{1: 100, 2: 200})
	k.adoptedView = k.observed
	k.adoption.adopt(k.observed.latest)
	for _, c := range []struct {
		name    string
		state   *keyState
		lagging bool
	}{
		{"replica before the rotation", view(1, map[int]int64{1: 100}), true},
		{"same view", view(2, map[int]int64{1: 100, 2: 200}), false},
		{"newer view", view(3, map[int]int64{1: 100, 2: 200, 3: 300}), false},
		{"deleted and recreated key", view(1, map[int]int64{1: 999}), false},
	} {
		if got := k.laggingView(c.state); got != c.lagging {
			t.Errorf("%s: lagging %v, want %v", c.name, got, c.lagging)
		}
	}
}

// TestLaggingViewAfterRetirement: the usual rotation runbook rotates and then raises
// min_decryption_version, so the backend's own view no longer lists the old version. A replica
// that has seen neither must still count as lagging: two of its answers in a row must not move
// the key id back (v2 -> v1, then forward again: a flip-flop the apiserver takes for rotations).
func TestLaggingViewAfterRetirement(t *testing.T) {
	lin := lineage
	view := func(latest, minDecrypt int, created map[int]int64) *keyState {
		st := &keyState{minDecrypt: minDecrypt, created: created}
		st.latest = KeyVersion{lineage: lin(created[latest]), version: latest}
		return st
	}
	k := &KEK{cfg: Config{Log: slog.New(slog.DiscardHandler)}}
	k.apply(view(1, 1, map[int]int64{1: 100}), nil)
	k.apply(view(2, 1, map[int]int64{1: 100, 2: 200}), nil)
	k.apply(view(2, 2, map[int]int64{2: 200}), nil) // rotated, then v1 retired
	v2 := KeyVersion{lin(200), 2}.String()
	if got := k.CurrentID(); got != v2 {
		t.Fatalf("after the rotation: key id %s, want %s", got, v2)
	}
	for i := 0; i < 3; i++ {
		k.apply(view(1, 1, map[int]int64{1: 100}), nil) // the lagging replica
		if got := k.CurrentID(); got != v2 {
			t.Fatalf("lagging view %d moved the key id to %s, want %s", i+1, got, v2)
		}
		if _, _, err := k.wrappable(v2); err != nil {
			t.Fatalf("after lagging view %d, Wrap/Unwrap under %s would fail: %v", i+1, v2, err)
		}
	}
	// A deleted and recreated key (created after the adopted version) still moves, after two checks.
	k.apply(view(1, 1, map[int]int64{1: 300}), nil)
	k.apply(view(1, 1, map[int]int64{1: 300}), nil)
	if got, want := k.CurrentID(), (KeyVersion{lin(300), 1}).String(); got != want {
		t.Fatalf("recreated key: key id %s, want %s", got, want)
	}
}

package vault

import (
	"log/slog"
	"testing"
)

func TestLaggingView(t *testing.T) {
	view := func(latest int, created map[int]int64) *keyState {
		st := &keyState{created: created, lineageOf: func(c int64) string { return lineage("cluster", "", "transit", "k", c) }}
		st.latest = keyVersion{lineage: st.lineageOf(created[latest]), version: latest}
		return st
	}
	k := &KEK{cfg: Config{Log: slog.New(slog.DiscardHandler)}}
	if k.laggingView(view(1, map[int]int64{1: 100})) {
		t.Error("nothing adopted yet: no view is lagging")
	}
	k.observed = view(2, map[int]int64{1: 100, 2: 200})
	k.deb.adopt(k.observed.latest)
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

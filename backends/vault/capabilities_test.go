package vault

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// The capabilities check decides, from sys/capabilities-self's answer alone: "update" on both
// transit paths (or root) is a yes, anything less a refusal naming the paths, and a 403 on the
// endpoint itself no refusal (a token that may not ask). It runs at the first check, then every
// CapabilitiesInterval, and at every check until it has said yes.
func TestCapabilitiesCheck(t *testing.T) {
	var caps string // sys/capabilities-self's answer: a JSON object, or "403"
	fv := &fakeVault{handler: func(path string, _ map[string]any, _ string) (int, string) {
		switch path {
		case "/v1/sys/health":
			return 200, `{"initialized":true,"sealed":false,"cluster_id":"c"}`
		case "/v1/auth/token/lookup-self":
			return 200, `{"data":{"ttl":0,"renewable":false}}`
		case "/v1/transit/keys/k":
			return 200, `{"data":{"type":"aes256-gcm96","supports_encryption":true,"latest_version":1,"min_decryption_version":1,"keys":{"1":1700000000}}}`
		case "/v1/sys/capabilities-self":
			if caps == "403" {
				return 403, `{"errors":["permission denied"]}`
			}
			return 200, `{"data":` + caps + `}`
		}
		return 404, `{"errors":[]}`
	}}
	srv := httptest.NewServer(fv)
	defer srv.Close()
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	k, err := Open(Config{Address: srv.URL, Key: "k", Clock: clk, Retry: RetryPolicy{Attempts: 1},
		Auth: StaticToken{"t"}, CapabilitiesInterval: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	asked := func() int {
		n := 0
		for _, p := range fv.paths() {
			if p == "/v1/sys/capabilities-self" {
				n++
			}
		}
		return n
	}
	ctx := context.Background()
	both := func(c string) string {
		return `{"transit/encrypt/k":` + c + `,"transit/decrypt/k":` + c + `}`
	}

	caps = both(`["update"]`)
	if err := k.Check(ctx); err != nil || asked() != 1 {
		t.Fatalf("first check: %v, asked %d times; want ok, asked once", err, asked())
	}
	clk.Advance(time.Minute)
	if err := k.Check(ctx); err != nil || asked() != 1 {
		t.Fatalf("a check within the interval: %v, asked %d times; want not asked again", err, asked())
	}
	caps = `{"transit/encrypt/k":["update"],"transit/decrypt/k":["deny"]}`
	clk.Advance(9 * time.Minute)
	err = k.Check(ctx)
	if !errors.Is(err, dek.ErrDenied) || !strings.Contains(err.Error(), "transit/decrypt/k") || strings.Contains(err.Error(), "transit/encrypt/k") || asked() != 2 {
		t.Fatalf("policy cut to deny decrypt: %v (asked %d); want ErrDenied naming transit/decrypt/k alone", err, asked())
	}
	clk.Advance(time.Minute)
	if err := k.Check(ctx); !errors.Is(err, dek.ErrDenied) || asked() != 3 {
		t.Fatalf("the next check, still refused: %v (asked %d); want asked again, ErrDenied", err, asked())
	}
	caps = both(`["root"]`)
	clk.Advance(time.Minute)
	if err := k.Check(ctx); err != nil || asked() != 4 {
		t.Fatalf("root: %v (asked %d); want ok", err, asked())
	}
	caps = both(`["read"]`)
	clk.Advance(10 * time.Minute)
	if err := k.Check(ctx); !errors.Is(err, dek.ErrDenied) || !strings.Contains(err.Error(), "transit/encrypt/k and transit/decrypt/k") {
		t.Fatalf("read only: %v; want ErrDenied naming both paths", err)
	}
	caps = "403"
	clk.Advance(time.Minute)
	if err := k.Check(ctx); err != nil {
		t.Fatalf("sys/capabilities-self itself denied: %v; want no refusal (the proofs judge)", err)
	}
}

package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/kektest"
	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// These tests run against a real Vault server that the harness starts. Each subtest has its
// own transit key (and policy, token or role), so they share one server and run in parallel.

var keySeq atomic.Int64

// fixture is one transit key in a running Vault, with a token limited to it.
type fixture struct {
	v          *harness.Vault
	mount, key string
	token      string // least-privilege token for the key
}

func newFixture(t *testing.T, v *harness.Vault) *fixture {
	t.Helper()
	n := keySeq.Add(1)
	f := &fixture{v: v, mount: "transit", key: fmt.Sprintf("kek-%d", n)}
	v.CreateKey(t, f.mount, f.key)
	policy := fmt.Sprintf("kms-%d", n)
	v.WritePolicy(t, policy, harness.TransitPolicy(f.mount, f.key))
	f.token = v.CreateToken(t, harness.TokenOptions{Policies: []string{policy}, TTL: "1h", Renewable: true})
	return f
}

func (f *fixture) config(t *testing.T, auth Auth) Config {
	return Config{Address: f.v.Addr, Mount: f.mount, Key: f.key, Auth: auth, Log: testLogger(t)}
}

func (f *fixture) open(t *testing.T, auth Auth) *KEK {
	t.Helper()
	k, err := Open(f.config(t, auth))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func mustCheck(t *testing.T, k *KEK) {
	t.Helper()
	if err := k.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

func TestVault(t *testing.T) {
	v := harness.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	ctx := context.Background()

	t.Run("contract", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		kektest.Run(t, kektest.Backend{
			KEK:    f.open(t, StaticToken{f.token}),
			Rotate: func(t *testing.T) { v.RotateKey(t, f.mount, f.key) },
		})
	})

	t.Run("sealer round trip and rotation", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		k := f.open(t, StaticToken{f.token})
		mustCheck(t, k)
		id1 := k.CurrentID()
		if !strings.HasPrefix(id1, "vault:") || !strings.HasSuffix(id1, ":v1") {
			t.Fatalf("key id %q: want vault:<lineage>:v1", id1)
		}
		s := dek.NewSealer(k)
		ct1, err := s.Encrypt(ctx, id1, []byte("secret one"))
		if err != nil {
			t.Fatal(err)
		}

		v.RotateKey(t, f.mount, f.key)
		mustCheck(t, k)
		if got := k.CurrentID(); got != id1 {
			t.Fatalf("key id changed to %q after one check: want two checks", got)
		}
		mustCheck(t, k)
		id2 := k.CurrentID()
		if want := strings.TrimSuffix(id1, "1") + "2"; id2 != want {
			t.Fatalf("after two checks key id = %q, want %q", id2, want)
		}
		ct2, err := s.Encrypt(ctx, id2, []byte("secret two"))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			ct   []byte
			want string
			id   string
		}{{ct1, "secret one", id1}, {ct2, "secret two", id2}} {
			got, id, err := s.Decrypt(ctx, c.ct)
			if err != nil || string(got) != c.want || id != c.id {
				t.Fatalf("Decrypt = %q, %q, %v; want %q, %q", got, id, err, c.want, c.id)
			}
		}
		// Wrap honours the version in the key id, not the key's latest.
		w, err := k.Wrap(ctx, id1, bytes.Repeat([]byte{7}, 32))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := k.Unwrap(ctx, id2, w); !errors.Is(err, dek.ErrTampered) {
			t.Fatalf("a v1 wrap unwrapped as v2: err = %v, want dek.ErrTampered", err)
		}
	})
}

var _ = filepath.Join
var _ = time.Second
var _ clock.Clock

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

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/kektest"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// These tests run against a real Vault server that the harness starts. Each subtest has its
// own transit key (and policy, token or role), so they share one server and run in parallel.

var keySeq atomic.Int64

// fixture is one transit key in a running Vault, with a token limited to it.
type fixture struct {
	v          *vaultd.Vault
	mount, key string
	token      string // least-privilege token for the key
}

func newFixture(t *testing.T, v *vaultd.Vault) *fixture {
	t.Helper()
	n := keySeq.Add(1)
	f := &fixture{v: v, mount: "transit", key: fmt.Sprintf("kek-%d", n)}
	v.CreateKey(t, f.mount, f.key)
	policy := fmt.Sprintf("kms-%d", n)
	v.WritePolicy(t, policy, vaultd.TransitPolicy(f.mount, f.key))
	f.token = v.CreateToken(t, vaultd.TokenOptions{Policies: []string{policy}, TTL: "1h", Renewable: true})
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
	v := vaultd.StartVaultDev(t)
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
		if id2 == id1 || !strings.HasSuffix(id2, ":v2") {
			t.Fatalf("after two checks key id = %q, want vault:<lineage>:v2", id2)
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

	t.Run("plugin over a unix socket", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		k := f.open(t, StaticToken{f.token})
		m, client := servePlugin(t, k)
		st, err := client.Status(ctx, &kmsapi.StatusRequest{})
		if err != nil || st.Healthz != "ok" || st.KeyId != k.CurrentID() || st.Version != "v2" {
			t.Fatalf("Status = %v, %v", st, err)
		}
		seed := bytes.Repeat([]byte{0x42}, 32)
		enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "u1"})
		if err != nil || enc.KeyId != st.KeyId {
			t.Fatalf("Encrypt = %v, %v; want key id %s", enc, err, st.KeyId)
		}
		dec, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "u2"})
		if err != nil || !bytes.Equal(dec.Plaintext, seed) {
			t.Fatalf("Decrypt = %v, %v", dec, err)
		}

		// Rotation: Status moves after two refreshes; Encrypt follows; old data still decrypts.
		v.RotateKey(t, f.mount, f.key)
		m.Refresh(ctx)
		m.Refresh(ctx)
		st2, err := client.Status(ctx, &kmsapi.StatusRequest{})
		if err != nil || st2.Healthz != "ok" || st2.KeyId == st.KeyId || !strings.HasSuffix(st2.KeyId, ":v2") {
			t.Fatalf("Status after rotation = %v, %v", st2, err)
		}
		enc2, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed})
		if err != nil || enc2.KeyId != st2.KeyId {
			t.Fatalf("Encrypt after rotation = %v, %v", enc2, err)
		}
		if dec, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); err != nil || !bytes.Equal(dec.Plaintext, seed) {
			t.Fatalf("old ciphertext after rotation: %v", err)
		}

		// Retiring v1 makes its data fail with FailedPrecondition, not a crash or Internal.
		v.SetMinDecryptionVersion(t, f.mount, f.key, 2)
		m.Refresh(ctx)
		_, err = client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "min_decryption_version") {
			t.Fatalf("Decrypt of retired version: %v; want FailedPrecondition naming min_decryption_version", err)
		}
		if st, _ := client.Status(ctx, &kmsapi.StatusRequest{}); st.Healthz != "ok" || st.KeyId != st2.KeyId {
			t.Fatalf("Status after retiring v1 = %v", st)
		}
		if dec, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc2.Ciphertext, KeyId: enc2.KeyId}); err != nil || !bytes.Equal(dec.Plaintext, seed) {
			t.Fatalf("v2 ciphertext after retiring v1: %v", err)
		}
	})

	t.Run("min_decryption_version", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		k := f.open(t, StaticToken{f.token})
		mustCheck(t, k)
		id1 := k.CurrentID()
		key := bytes.Repeat([]byte{1}, 32)
		w1, err := k.Wrap(ctx, id1, key)
		if err != nil {
			t.Fatal(err)
		}
		// The operator rotates and retires v1 at once, before a second check could adopt v2:
		// v2 is adopted at the next check, and nothing is wrapped under the retired v1.
		v.RotateKey(t, f.mount, f.key)
		v.SetMinDecryptionVersion(t, f.mount, f.key, 2)
		if _, err := k.Unwrap(ctx, id1, w1); !errors.Is(err, dek.ErrUnknownKey) || !strings.Contains(err.Error(), "min_decryption_version") {
			t.Fatalf("Unwrap of retired v1 (before a check): %v; want dek.ErrUnknownKey from Vault", err)
		}
		mustCheck(t, k)
		id2 := k.CurrentID()
		if !strings.HasSuffix(id2, ":v2") {
			t.Fatalf("after retiring v1 the key id is %q; want v2 at once", id2)
		}
		if _, err := k.Wrap(ctx, id1, key); !errors.Is(err, dek.ErrUnknownKey) {
			t.Fatalf("Wrap with retired v1: %v; want dek.ErrUnknownKey", err)
		}
		if _, err := k.Unwrap(ctx, id1, w1); !errors.Is(err, dek.ErrUnknownKey) {
			t.Fatalf("Unwrap of retired v1: %v; want dek.ErrUnknownKey", err)
		}
		// Lowering it again restores access: the data was intact all along.
		v.SetMinDecryptionVersion(t, f.mount, f.key, 1)
		mustCheck(t, k)
		if got, err := k.Unwrap(ctx, id1, w1); err != nil || !bytes.Equal(got, key) {
			t.Fatalf("Unwrap after restoring v1: %v", err)
		}
	})

	t.Run("deleted and recreated key gets a new lineage", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		k := f.open(t, StaticToken{f.token})
		mustCheck(t, k)
		id1 := k.CurrentID()
		w1, err := k.Wrap(ctx, id1, bytes.Repeat([]byte{2}, 32))
		if err != nil {
			t.Fatal(err)
		}
		created := keyCreated(t, v, f)
		v.DeleteKey(t, f.mount, f.key)
		// Vault stamps creation in whole seconds: recreate in a later one, as any real
		// delete-and-recreate is.
		for time.Now().Unix() <= created {
			time.Sleep(20 * time.Millisecond)
		}
		v.CreateKey(t, f.mount, f.key)
		mustCheck(t, k)
		// The adopted key id names material that is gone: the first check that sees the new
		// key adopts it, with no debounce (waiting would only keep writing under the old id).
		id2 := k.CurrentID()
		if _, err := k.Wrap(ctx, id1, bytes.Repeat([]byte{2}, 32)); !errors.Is(err, dek.ErrUnknownKey) {
			t.Fatalf("Wrap under the deleted key's id: %v; want dek.ErrUnknownKey (never mislabel the new key)", err)
		}
		if err := k.Usable(id1); !errors.Is(err, dek.ErrUnknownKey) {
			t.Fatalf("Usable(deleted key's id): %v; want dek.ErrUnknownKey, so serve drops its local KEK and cache entries", err)
		}
		if id2 == id1 || !strings.HasSuffix(id2, ":v1") || id2[:22] == id1[:22] {
			t.Fatalf("recreated key id %q vs old %q: want a new lineage at v1", id2, id1)
		}
		if _, err := k.Unwrap(ctx, id1, w1); !errors.Is(err, dek.ErrUnknownKey) {
			t.Fatalf("Unwrap of data under the deleted key: %v; want dek.ErrUnknownKey", err)
		}
	})

	t.Run("wrong key name or mount", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		for _, c := range []struct{ mount, key string }{{f.mount, "no-such-key"}, {"no-such-mount", f.key}} {
			cfg := f.config(t, StaticToken{v.RootToken})
			cfg.Mount, cfg.Key = c.mount, c.key
			k, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = k.Check(ctx)
			if !errors.Is(err, dek.ErrUnknownKey) || !strings.Contains(err.Error(), "not found") {
				t.Errorf("%s/%s: Check = %v; want dek.ErrUnknownKey, not found", c.mount, c.key, err)
			}
			if k.CurrentID() != "" {
				t.Errorf("%s/%s: key id %q without a key", c.mount, c.key, k.CurrentID())
			}
		}
	})

	t.Run("missing permissions", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		// A token with only the default policy cannot read the key.
		bare := v.CreateToken(t, vaultd.TokenOptions{Policies: []string{"default"}, TTL: "1h"})
		k := f.open(t, StaticToken{bare})
		err := k.Check(ctx)
		if !errors.Is(err, dek.ErrDenied) || !strings.Contains(err.Error(), f.mount+"/keys/"+f.key) {
			t.Fatalf("Check without read: %v; want dek.ErrDenied naming the key path", err)
		}
		if _, err := v.LookupToken(bare); err != nil {
			t.Fatalf("the token was disturbed: %v", err)
		}
		// Read but no encrypt/decrypt: the key reads, but the check's sys/capabilities-self
		// (the default policy allows it) says the token may not use it: a refusal naming both
		// paths, and the token is not logged out for it.
		v.WritePolicy(t, "read-only-"+f.key, fmt.Sprintf(`path "%s/keys/%s" { capabilities = ["read"] }`, f.mount, f.key))
		ro := v.CreateToken(t, vaultd.TokenOptions{Policies: []string{"read-only-" + f.key, "default"}, TTL: "1h"})
		k = f.open(t, StaticToken{ro})
		err = k.Check(ctx)
		if !errors.Is(err, dek.ErrDenied) || !strings.Contains(err.Error(), f.mount+"/encrypt/"+f.key) || !strings.Contains(err.Error(), f.mount+"/decrypt/"+f.key) {
			t.Fatalf("Check with read only: %v; want dek.ErrDenied naming the encrypt and decrypt paths", err)
		}
		if id := k.CurrentID(); id != "" {
			t.Fatalf("key id %q adopted by a check that was refused", id)
		}
		if _, err := v.LookupToken(ro); err != nil {
			t.Fatalf("the token was disturbed: %v", err)
		}
	})

	t.Run("token file", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		file := filepath.Join(t.TempDir(), "token")
		writeFile(t, file, f.token)
		policies := policiesOf(t, v, f.token)
		k := f.open(t, &TokenFile{Path: file})
		m := plugin.NewMonitor(k, plugin.MonitorConfig{CheckInterval: time.Hour, ProofInterval: time.Hour, Timeout: 10 * time.Second}, clock.Real{}, testLogger(t))
		healthy := func(want bool) error {
			t.Helper()
			m.Refresh(ctx)
			id, err := m.State()
			if id == "" || (err == nil) != want {
				t.Fatalf("Monitor state = %q, %v; want healthy=%v", id, err, want)
			}
			return err
		}
		healthy(true)
		id := k.CurrentID()
		w, err := k.Wrap(ctx, id, bytes.Repeat([]byte{4}, 32))
		if err != nil {
			t.Fatal(err)
		}

		// Rotation of the token in the file: the new token is picked up, the old one revoked.
		second := v.CreateToken(t, vaultd.TokenOptions{Policies: policies, TTL: "1h"})
		writeFile(t, file, second)
		v.RevokeToken(t, f.token)
		healthy(true)
		if _, err := k.Unwrap(ctx, id, w); err != nil {
			t.Fatalf("Unwrap with the rotated token: %v", err)
		}

		// Revoked while the file still holds it: healthz says so, the key id stays.
		v.RevokeToken(t, second)
		err = healthy(false)
		if !errors.Is(err, dek.ErrDenied) || !strings.Contains(err.Error(), "token") {
			t.Fatalf("revoked token: %v; want dek.ErrDenied about the token", err)
		}
		if got, _ := m.State(); got != id {
			t.Fatalf("key id changed to %q during the outage", got)
		}
		if _, err := k.Unwrap(ctx, id, w); !errors.Is(err, dek.ErrDenied) {
			t.Fatalf("Unwrap with a revoked token: %v; want dek.ErrDenied", err)
		}

		// A good token written to the file: recovered without a restart.
		writeFile(t, file, v.CreateToken(t, vaultd.TokenOptions{Policies: policies, TTL: "1h"}))
		healthy(true)
		if got, err := k.Unwrap(ctx, id, w); err != nil || len(got) != 32 {
			t.Fatalf("Unwrap after recovery: %v", err)
		}
	})

	t.Run("approle login, renewal and re-login", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		mount := "approle-" + f.key
		v.EnableAuth(t, mount, "approle")
		roleID, secretID := v.AppRole(t, mount, "kms", map[string]any{
			"token_policies": policiesOf(t, v, f.token), "token_ttl": "60s", "token_max_ttl": "10m",
		})
		dir := t.TempDir()
		secretFile := filepath.Join(dir, "secret-id")
		writeFile(t, secretFile, secretID)
		clk := clock.NewFake(time.Now())
		cfg := f.config(t, AppRole{Mount: mount, RoleID: roleID, SecretIDFile: secretFile})
		cfg.Clock = clk
		k, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		mustCheck(t, k)
		first := k.tokens.token
		if renewals(t, v, first) != 0 {
			t.Fatal("a fresh token was renewed")
		}

		clk.Advance(41 * time.Second) // past two thirds of the 60 s TTL
		mustCheck(t, k)
		if k.tokens.token != first || renewals(t, v, first) != 1 {
			t.Fatalf("at 41 s of 60: token changed or not renewed once (renewals %d)", renewals(t, v, first))
		}

		// Revoked: the next check logs in again, with the secret id the file holds now.
		newSecret := v.SecretID(t, mount, "kms")
		writeFile(t, secretFile, newSecret)
		v.Write(t, "auth/"+mount+"/role/kms/secret-id/destroy", map[string]any{"secret_id": secretID})
		v.RevokeToken(t, first)
		mustCheck(t, k)
		second := k.tokens.token
		if second == first {
			t.Fatal("no new login after revocation")
		}
		if _, err := k.Wrap(ctx, k.CurrentID(), bytes.Repeat([]byte{5}, 32)); err != nil {
			t.Fatalf("Wrap after re-login: %v", err)
		}

		// A login that fails (secret id destroyed) backs off and never stops the backend.
		v.Write(t, "auth/"+mount+"/role/kms/secret-id/destroy", map[string]any{"secret_id": newSecret})
		v.RevokeToken(t, second)
		if err := k.Check(ctx); !errors.Is(err, dek.ErrDenied) && !errors.Is(err, errBadRequest) {
			t.Fatalf("Check with a dead secret id: %v", err)
		}
		if err := k.Check(ctx); err == nil || !strings.Contains(err.Error(), "next approle login attempt") {
			t.Fatalf("second Check inside the backoff: %v", err)
		}
		writeFile(t, secretFile, v.SecretID(t, mount, "kms"))
		clk.Advance(loginBackoffBase)
		mustCheck(t, k)
	})
}

// servePlugin serves k through the plugin's gRPC service on a real unix socket.
func servePlugin(t *testing.T, k *KEK) (*plugin.Monitor, kmsapi.KeyManagementServiceClient) {
	t.Helper()
	p := plugintest.Serve(t, k, plugintest.Options{Timeout: 10 * time.Second})
	return p.Monitor, plugintest.Client(t, p.Socket)
}

func keyCreated(t *testing.T, v *vaultd.Vault, f *fixture) int64 {
	t.Helper()
	keys, _ := v.Read(t, f.mount+"/keys/"+f.key).Data["keys"].(map[string]any)
	n, err := creationTime(keys["1"])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func policiesOf(t *testing.T, v *vaultd.Vault, token string) []string {
	t.Helper()
	s, err := v.LookupToken(token)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range s.Data["policies"].([]any) {
		if p != "default" {
			out = append(out, p.(string))
		}
	}
	return out
}

// renewals reads from Vault how often a token has been renewed (0 or 1 is all tests need).
func renewals(t *testing.T, v *vaultd.Vault, token string) int {
	t.Helper()
	s, err := v.LookupToken(token)
	if err != nil {
		t.Fatal(err)
	}
	if s.Data["last_renewal_time"] == nil && s.Data["last_renewal"] == nil {
		return 0
	}
	return 1
}

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

// Data outlives its Vault cluster: whether an envelope decrypts depends on the transit key's
// material only, never on which Vault cluster, mount or key name holds it. Envelopes written
// through a plugin on one Vault are decrypted by plugins on another Vault that holds the same
// key, brought there by Transit backup/restore (under its own name, another name, another
// mount), by a Raft snapshot, and after a plugin's --vault-addr is changed to that other
// cluster. The key id stays what it was (no rotation for the apiserver), and a key that merely
// has the same name but other material decrypts nothing.

// sealed is one Encrypt response, to be decrypted elsewhere.
type sealed struct {
	keyID      string
	ciphertext []byte
	plaintext  []byte
}

// writeEnvelopes encrypts n random seeds through p and returns them.
func writeEnvelopes(t *testing.T, p *harness.Plugin, n int) []sealed {
	t.Helper()
	c := plugintest.Client(t, p.Socket)
	var out []sealed
	for i := range n {
		seed := make([]byte, 32)
		_, _ = rand.Read(seed)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: fmt.Sprintf("outlive-%d", i)})
		cancel()
		if err != nil {
			t.Fatalf("Encrypt: %v", err)
		}
		out = append(out, sealed{resp.KeyId, resp.Ciphertext, seed})
	}
	return out
}

// decryptAll decrypts every envelope through p and fails the test for each that does not
// decrypt to its plaintext.
func decryptAll(t *testing.T, p *harness.Plugin, what string, envs []sealed) {
	t.Helper()
	c := plugintest.Client(t, p.Socket)
	ok := 0
	for _, e := range envs {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e.ciphertext, KeyId: e.keyID, Uid: "outlive"})
		cancel()
		if err != nil || !bytes.Equal(resp.Plaintext, e.plaintext) {
			t.Errorf("%s: decrypt of an envelope under %s: %v", what, e.keyID, err)
			continue
		}
		ok++
	}
	t.Logf("%s: %d of %d envelopes decrypted", what, ok, len(envs))
}

// vaultPlugin starts a plugin on transit key mount/key of the Vault at addr, with a token that
// only the printed least-privilege policy backs.
func vaultPlugin(t *testing.T, addr, mount, key, tokenFile string) *harness.Plugin {
	t.Helper()
	return harness.StartPlugin(t, vaultPluginArgs(addr, mount, key, tokenFile)...)
}

func vaultPluginArgs(addr, mount, key, tokenFile string) []string {
	return []string{"--backend=vault", "--vault-addr=" + addr, "--vault-transit-mount=" + mount,
		"--vault-transit-key=" + key, "--vault-auth=token", "--vault-token-file=" + tokenFile,
		"--check-interval=200ms", "--proof-interval=5s", "--log-level=warn"}
}

// sourceEnvelopes writes envelopes through p under two versions of the key: before and after
// a rotation.
func sourceEnvelopes(t *testing.T, p *harness.Plugin, rootc *api.Client, mount, key string) []sealed {
	t.Helper()
	envs := writeEnvelopes(t, p, 5)
	if _, err := rootc.Logical().Write(mount+"/keys/"+key+"/rotate", nil); err != nil {
		t.Fatal(err)
	}
	waitKeyVersion(t, p, "source plugin", 2)
	return append(envs, writeEnvelopes(t, p, 5)...)
}

func TestVaultDataOutlivesCluster(t *testing.T) {
	t.Parallel()

	t.Run("transit backup and restore, and a --vault-addr change", func(t *testing.T) {
		t.Parallel()
		src, dst := harness.StartVaultDev(t), harness.StartVaultDev(t)
		const key = "k8s"
		src.EnableTransit(t, "transit")
		src.Write(t, "transit/keys/"+key, nil)
		srcToken := leastPrivilegeToken(t, src, "transit", key)
		p := vaultPlugin(t, src.Addr, "transit", key, srcToken)
		envs := sourceEnvelopes(t, p, src.Root, "transit", key)
		keyID := p.KeyID(t)

		// Export: the backup needs exportable and allow_plaintext_backup (irreversible).
		src.Write(t, "transit/keys/"+key+"/config", map[string]any{"exportable": true, "allow_plaintext_backup": true})
		backup, _ := src.Read(t, "transit/backup/"+key).Data["backup"].(string)
		if backup == "" {
			t.Fatal("no backup")
		}
		dst.EnableTransit(t, "transit")
		dst.EnableTransit(t, "other")
		dst.Write(t, "transit/restore", map[string]any{"backup": backup})         // its own name
		dst.Write(t, "transit/restore/renamed", map[string]any{"backup": backup}) // another name
		dst.Write(t, "other/restore/moved", map[string]any{"backup": backup})     // another mount and name
		dst.Write(t, "transit/keys/fresh", nil)                                   // other material
		for _, c := range []struct{ mount, key string }{{"transit", key}, {"transit", "renamed"}, {"other", "moved"}} {
			what := fmt.Sprintf("restored as %s/%s in another cluster", c.mount, c.key)
			q := vaultPlugin(t, dst.Addr, c.mount, c.key, leastPrivilegeToken(t, dst, c.mount, c.key))
			if id := q.KeyID(t); id != keyID {
				t.Errorf("%s: key id %s, the source's is %s (a rotation for the apiserver)", what, id, keyID)
			}
			decryptAll(t, q, what, envs)
		}

		// A key with the same role but other material decrypts nothing, and says why.
		q := vaultPlugin(t, dst.Addr, "transit", "fresh", leastPrivilegeToken(t, dst, "transit", "fresh"))
		c := plugintest.Client(t, q.Socket)
		for _, e := range envs {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e.ciphertext, KeyId: e.keyID})
			cancel()
			want := codes.FailedPrecondition // v1: the other key's v1 cannot authenticate it
			if keyIDVersion(e.keyID) == 2 {
				want = codes.Unavailable // v2: newer than the other key has
			}
			if status.Code(err) != want {
				t.Errorf("another key's plugin, envelope under %s: %v; want %v", e.keyID, err, want)
			}
		}

		// The plugin moves to the other cluster (--vault-addr and its token change), the source
		// goes away: same key id, every envelope decrypts, and new ones can be written.
		src.Process.Stop(20 * time.Second)
		p.RestartWith(t, vaultPluginArgs(dst.Addr, "transit", key, leastPrivilegeToken(t, dst, "transit", key))...)
		if id := p.KeyID(t); id != keyID {
			t.Errorf("after --vault-addr moved to the other cluster: key id %s, was %s", id, keyID)
		}
		decryptAll(t, p, "after a --vault-addr change", append(envs, writeEnvelopes(t, p, 2)...))
	})

	t.Run("raft snapshot restored into another cluster", func(t *testing.T) {
		t.Parallel()
		src, dst := harness.StartVaultRaftCluster(t, 1), harness.StartVaultRaftCluster(t, 1)
		s := src.Nodes[0]
		const key = "k8s"
		s.EnableTransit(t, "transit")
		s.Write(t, "transit/keys/"+key, nil) // not exportable: a snapshot needs no export
		p := vaultPlugin(t, s.Addr, "transit", key, leastPrivilegeToken(t, s, "transit", key))
		envs := sourceEnvelopes(t, p, s.Root, "transit", key)
		keyID := p.KeyID(t)

		dst.RestoreSnapshot(t, src.Snapshot(t), src)
		d := dst.Nodes[0]
		q := vaultPlugin(t, d.Addr, "transit", key, leastPrivilegeToken(t, d, "transit", key))
		if id := q.KeyID(t); id != keyID {
			t.Errorf("restored from a raft snapshot: key id %s, the source's is %s", id, keyID)
		}
		decryptAll(t, q, "restored from a raft snapshot", envs)
	})
}

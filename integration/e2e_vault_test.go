package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// TestVault runs every scenario with the Vault backend against one real Vault: each scenario
// has its own transit key and a token limited to that key, as docs/vault.md sets up; the
// plugins of a scenario share that key. Rotation is transit/keys/<key>/rotate, which the
// plugins find on their own.
func TestVault(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultDev(t) // stopped after every parallel subtest has finished
	v.EnableTransit(t, "transit")
	runScenarios(t, func(t *testing.T) kekBackend { return newVaultBackend(t, v) })
}

type vaultBackend struct {
	vault     *harness.Vault
	key       string
	tokenFile string
}

func newVaultBackend(t *testing.T, v *harness.Vault) kekBackend {
	key := "kms-" + strings.ReplaceAll(strings.ToLower(filepath.Base(t.Name())), "_", "-")
	v.CreateKey(t, "transit", key)
	v.WritePolicy(t, key, harness.TransitPolicy("transit", key))
	token := v.CreateToken(t, harness.TokenOptions{Policies: []string{key}})
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return &vaultBackend{vault: v, key: key, tokenFile: tokenFile}
}

func (b *vaultBackend) pluginArgs() []string {
	return []string{"--backend=vault", "--vault-addr=" + b.vault.Addr, "--vault-transit-key=" + b.key,
		"--vault-auth=token", "--vault-token-file=" + b.tokenFile}
}

func (b *vaultBackend) rotate(t *testing.T, plugins ...*harness.Plugin) string {
	t.Helper()
	old := plugins[0].KeyID(t)
	b.vault.RotateKey(t, "transit", b.key)
	var ids []string
	for _, p := range plugins {
		var id string
		harness.Eventually(t, 3*time.Minute, "plugin adopts the rotated Vault key", func(ctx context.Context) error {
			st, err := p.Status(ctx)
			if err != nil {
				return err
			}
			if st.KeyId == old {
				time.Sleep(time.Second)
				return fmt.Errorf("still on %s", old)
			}
			id = st.KeyId
			return nil
		})
		ids = append(ids, id)
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("plugins on one Vault key report key ids %v after rotation", ids)
		}
	}
	return ids[0]
}

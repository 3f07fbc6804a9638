package vaultd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// VaultCluster is a Vault HA cluster of Raft nodes on loopback, each its own process with its
// own API and cluster port: one node is active, the others are standbys that forward requests
// to it. Each node is a *Vault whose Stop, Start, Restart, Kill-and-Start and Unseal work as
// for a file-storage Vault (a restarted node comes back sealed and rejoins when unsealed).
type VaultCluster struct {
	Nodes     []*Vault
	RootToken string
}

// StartVaultRaftCluster starts n Raft nodes, initialises the first with one key share,
// unseals every node and waits until the others have joined as standbys.
func StartVaultRaftCluster(t testing.TB, n int) *VaultCluster {
	t.Helper()
	bin, dir := run.Binary(t, "vault"), t.TempDir()
	c := &VaultCluster{}
	var leader string
	for i := 0; i < n; i++ {
		v := &Vault{bin: bin}
		nodeDir := filepath.Join(dir, fmt.Sprintf("node-%d", i))
		run.Must(t, os.MkdirAll(filepath.Join(nodeDir, "raft"), 0o700), "raft dir")
		clusterPort := run.FreePort(t)
		v.startOnFreePort(t, func(port int) []string {
			v.Addr = fmt.Sprintf("http://127.0.0.1:%d", port)
			join := ""
			if i > 0 {
				join = fmt.Sprintf("retry_join { leader_api_addr = %q }", leader)
			}
			v.configPath = filepath.Join(nodeDir, "vault.hcl")
			config := fmt.Sprintf(`storage "raft" {
  path    = %q
  node_id = "node-%d"
  performance_multiplier = 1
  %s
}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable     = true
}
api_addr      = "%s"
cluster_addr  = "https://127.0.0.1:%d"
disable_mlock = true
log_level     = "warn"
`, filepath.Join(nodeDir, "raft"), i, join, port, clusterPort, v.Addr, clusterPort)
			run.Must(t, os.WriteFile(v.configPath, []byte(config), 0o600), "vault config")
			return []string{"server", "-config=" + v.configPath}
		}, nodeDir)
		if i == 0 {
			leader = v.Addr
		}
		c.Nodes = append(c.Nodes, v)
	}

	first := c.Nodes[0]
	first.waitHealth(t, func(*api.HealthResponse) bool { return true })
	init, err := first.Client(t, "").Sys().Init(&api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	run.Must(t, err, "vault init")
	c.RootToken = init.RootToken
	for _, v := range c.Nodes {
		v.RootToken, v.unsealKey = init.RootToken, init.KeysB64[0]
		v.Root = v.Client(t, v.RootToken)
	}
	first.Unseal(t)
	c.WaitActive(t, first)
	// Joining nodes are non-voters until autopilot finds them stable (10 s by default); a
	// cluster that loses its first node before then has no quorum.
	first.Write(t, "sys/storage/raft/autopilot/configuration", map[string]any{
		"server_stabilization_time": "1s", "cleanup_dead_servers": false,
	})
	for _, v := range c.Nodes[1:] {
		v.unsealJoined(t)
	}
	run.Eventually(t, 60*time.Second, "every raft node a voter", func(ctx context.Context) error {
		s, err := first.Root.Logical().ReadWithContext(ctx, "sys/storage/raft/configuration")
		if err != nil {
			return err
		}
		cfg, _ := s.Data["config"].(map[string]any)
		servers, _ := cfg["servers"].([]any)
		voters := 0
		for _, srv := range servers {
			if m, _ := srv.(map[string]any); m["voter"] == true {
				voters++
			}
		}
		if voters != n {
			return fmt.Errorf("%d of %d nodes are voters", voters, n)
		}
		return nil
	})
	return c
}

// unsealJoined unseals a node that joins through retry_join: the unseal key is taken only
// once the node has fetched the leader's join challenge, so it is offered until it sticks.
func (v *Vault) unsealJoined(t testing.TB) {
	t.Helper()
	anon := v.Client(t, "")
	run.Eventually(t, 60*time.Second, "raft node "+v.Addr+" joined and unsealed", func(ctx context.Context) error {
		st, err := anon.Sys().SealStatusWithContext(ctx)
		if err == nil && st.Sealed {
			st, err = anon.Sys().UnsealWithContext(ctx, v.unsealKey)
		}
		if err != nil {
			return err
		}
		if st.Sealed {
			return fmt.Errorf("still sealed (progress %d/%d)", st.Progress, st.T)
		}
		h, err := anon.Sys().HealthWithContext(ctx)
		if err != nil {
			return err
		}
		if !h.Initialized || h.Sealed {
			return fmt.Errorf("not serving: %+v", *h)
		}
		return nil
	})
}

// Active returns the node that is active now, waiting for an election if there is none.
func (c *VaultCluster) Active(t testing.TB) *Vault {
	t.Helper()
	var active *Vault
	run.Eventually(t, 60*time.Second, "an active vault node", func(ctx context.Context) error {
		for _, v := range c.Nodes {
			if v.Process.Exited() {
				continue
			}
			h, err := v.Client(t, "").Sys().HealthWithContext(ctx)
			if err == nil && h.Initialized && !h.Sealed && !h.Standby {
				active = v
				return nil
			}
		}
		return fmt.Errorf("no node is active")
	})
	return active
}

// WaitActive waits until v is the active node.
func (c *VaultCluster) WaitActive(t testing.TB, v *Vault) {
	t.Helper()
	run.Eventually(t, 60*time.Second, "vault node "+v.Addr+" active", func(ctx context.Context) error {
		h, err := v.Client(t, "").Sys().HealthWithContext(ctx)
		if err != nil {
			return err
		}
		if !h.Initialized || h.Sealed || h.Standby {
			return fmt.Errorf("not active: %+v", *h)
		}
		// The core answers health before the mounts are loaded; wait for a mounted path too.
		_, err = v.Root.Sys().ListMountsWithContext(ctx)
		return err
	})
}

// Addrs are the nodes' API addresses, in node order.
func (c *VaultCluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, v := range c.Nodes {
		out[i] = v.Addr
	}
	return out
}

// StartAndRejoin starts a stopped node again and unseals it; it rejoins as a standby.
func (c *VaultCluster) StartAndRejoin(t testing.TB, v *Vault) {
	t.Helper()
	v.Process.StartAgain(t, v.bin, []string{"server", "-config=" + v.configPath}, vaultEnv(filepath.Dir(v.configPath))...)
	if !v.waitListening(30 * time.Second) {
		t.Fatalf("vault node %s did not listen again:\n%s", v.Addr, lastLines(v.Process.Log(), 20))
	}
	v.unsealJoined(t)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Snapshot saves a Raft snapshot of the cluster (sys/storage/raft/snapshot), as root.
func (c *VaultCluster) Snapshot(t testing.TB) []byte {
	t.Helper()
	var buf bytes.Buffer
	run.Must(t, c.Active(t).Root.Sys().RaftSnapshot(&buf), "raft snapshot")
	return buf.Bytes()
}

// RestoreSnapshot installs a snapshot that src's Snapshot took into this cluster
// (sys/storage/raft/snapshot-force, as for a cluster rebuilt after a disaster). The cluster then
// holds src's data and keyring: from then on src's root token and unseal key are the ones that
// work here, and the nodes' Root clients use them.
func (c *VaultCluster) RestoreSnapshot(t testing.TB, snap []byte, src *VaultCluster) {
	t.Helper()
	active := c.Active(t)
	run.Must(t, active.Root.Sys().RaftSnapshotRestore(bytes.NewReader(snap), true), "raft snapshot restore")
	c.RootToken = src.RootToken
	for _, v := range c.Nodes {
		v.RootToken, v.unsealKey = src.RootToken, src.Nodes[0].unsealKey
		v.Root = v.Client(t, v.RootToken)
	}
	anon := active.Client(t, "")
	run.Eventually(t, 60*time.Second, "vault serving the restored snapshot", func(ctx context.Context) error {
		st, err := anon.Sys().SealStatusWithContext(ctx)
		if err == nil && st.Sealed {
			_, err = anon.Sys().UnsealWithContext(ctx, active.unsealKey)
		}
		if err != nil {
			return err
		}
		_, err = active.Root.Sys().ListMountsWithContext(ctx)
		return err
	})
	c.WaitActive(t, active)
}

package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/integration/harness/swtpm"
)

// TestRestartDuringVaultOutage restarts the plugin while Vault is down, as a liveness restart
// or an OOM kill would, and then the node, with what it keeps: on tmpfs for the process
// restart, sealed to a TPM (swtpm) for the reboot. Each time the apiserver restarts after the
// plugin: it reads every Secret and ConfigMap written before, writes new ones, and /readyz is
// ok, all with Vault still down.
func TestRestartDuringVaultOutage(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultFile(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "keep")
	tokenFile := vaultTokenFile(t, v, "keep")
	tmpfs := tmpfsDir(t)
	tpm := swtpm.Start(t)
	tpmState := t.TempDir()
	base := []string{"--backend=vault", "--vault-addr=" + v.Addr, "--vault-transit-key=keep",
		"--vault-token-file=" + tokenFile, "--check-interval=1s"}
	withTmpfs := append(base[:len(base):len(base)], "--vault-keep-memory=tmpfs", "--vault-keep-memory-dir="+tmpfs)
	withTPM := append(base[:len(base):len(base)], "--vault-keep-memory=tpm", "--vault-tpm-device="+tpm.Device, "--vault-keep-memory-dir="+tpmState)

	p := harness.StartPlugin(t, withTmpfs...)
	e := harness.StartEtcd(t)
	api := harness.StartKubeAPIServer(t, harness.APIServerOptions{
		EtcdServers:      e.Endpoints,
		EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, p.Endpoint), harness.Identity()),
	})
	keyID := p.KeyID(t)
	createNamespace(t, api.Clientset, "keep")
	written := createMany(t, api.Clientset, "keep", "before", 4)
	checkKMSStored(t, e, keyID, written...)
	waitSaved(t, filepath.Join(tmpfs, "state"))

	// A process restart: Vault down, the plugin SIGKILLed (no last save) and started again,
	// then the apiserver.
	v.Stop(t)
	waitServingFromMemory(t, p, keyID)
	p.Process.Kill()
	p.Resume(t)
	if !p.LogContains("RESTORED kept state") {
		t.Fatal("the restarted plugin did not restore its kept state")
	}
	waitServingFromMemory(t, p, keyID)
	written = append(written, servesTheApiserver(t, api, "after-restart", written)...)
	checkKMSStored(t, e, keyID, written...)

	// Vault back; the plugin moves to the TPM store (a graceful restart), and saves there.
	v.Start(t)
	v.Unseal(t)
	p.RestartWith(t, withTPM...)
	harness.Eventually(t, time.Minute, "plugin healthy on Vault", func(ctx context.Context) error {
		st, err := p.Status(ctx)
		if err != nil || st.Healthz != "ok" || st.KeyId != keyID {
			return fmt.Errorf("Status %v, %v", st, err)
		}
		return nil
	})
	// The new plugin holds only what it has seen: the apiserver's restart makes it unwrap the
	// DEK seeds in use (and Encrypt a new one), as a plugin that has served a while has.
	api.Restart(t)
	written = append(written, createMany(t, api.Clientset, "keep", "vault-back", 2)...)
	waitSaved(t, filepath.Join(tpmState, "state"))

	// A node reboot: Vault down; the apiserver and the plugin end, tmpfs is gone, the TPM
	// resets (PCRs to their boot values); all start again.
	v.Stop(t)
	waitServingFromMemory(t, p, keyID)
	api.Stop()
	p.Process.Kill()
	if err := os.RemoveAll(tmpfs); err != nil {
		t.Fatal(err)
	}
	tpm.Reboot(t)
	p.Resume(t)
	if !strings.Contains(p.Process.Log(), "RESTORED kept state") {
		t.Fatal("the plugin did not restore its TPM-sealed state after the reboot")
	}
	waitServingFromMemory(t, p, keyID)
	servesTheApiserver(t, api, "after-reboot", written)

	// Vault returns and refuses (the token revoked): serving from memory ends and the kept
	// state is erased; a copy of the older state put back (a restored backup of the state
	// directory) does not bring it back after another restart during an outage.
	older := filepath.Join(t.TempDir(), "older-state")
	copyFile(t, filepath.Join(tpmState, "state"), older)
	v.Start(t)
	v.Unseal(t)
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	v.RevokeToken(t, string(token))
	harness.Eventually(t, time.Minute, "the refusal erases the kept state", func(context.Context) error {
		if !p.LogContains("KEPT STATE ERASED") {
			return errors.New("not yet")
		}
		if _, err := os.Stat(filepath.Join(tpmState, "state")); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("the state file is still there: %v", err)
		}
		return nil
	})
	v.Stop(t)
	p.Process.Kill()
	copyFile(t, older, filepath.Join(tpmState, "state"))
	p.ResumeUnready(t)
	if p.LogContains("RESTORED kept state") || !p.LogContains("kept state NOT restored") {
		t.Fatal("a state restored from before the refusal was used again")
	}
	if _, err := p.Status(t.Context()); err == nil || !strings.Contains(err.Error(), "no key id yet") {
		t.Fatalf("Status after restoring an older state past a refusal: %v; want no key id yet", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// servesTheApiserver restarts the apiserver (which waits for /readyz), and checks that it
// reads objs, writes new objects and reads them back, and that /readyz stays ok.
func servesTheApiserver(t *testing.T, api *harness.APIServer, prefix string, objs []*object) []*object {
	t.Helper()
	api.Restart(t)
	checkReads(t, api.Clientset, objs...)
	fresh := createMany(t, api.Clientset, "keep", prefix, 2)
	checkReads(t, api.Clientset, fresh...)
	if ok, body, err := api.Health(t.Context(), "/readyz"); err != nil || !ok {
		t.Fatalf("/readyz of the apiserver restarted after the plugin: %v %s", err, body)
	}
	return fresh
}

// waitServingFromMemory waits until the plugin says it serves from memory and Status is ok
// with keyID.
func waitServingFromMemory(t *testing.T, p *harness.Plugin, keyID string) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, "plugin serving from memory", func(ctx context.Context) error {
		if !strings.Contains(p.Process.Log(), "SERVING FROM MEMORY") {
			return errors.New("not yet")
		}
		st, err := p.Status(ctx)
		if err != nil || st.Healthz != "ok" || st.KeyId != keyID {
			return fmt.Errorf("Status %v, %v", st, err)
		}
		return nil
	})
}

// waitSaved waits until the kept state at path was written after now: after the writes so
// far, the check that follows them has saved.
func waitSaved(t *testing.T, path string) {
	t.Helper()
	since := time.Now()
	harness.Eventually(t, 30*time.Second, "kept state saved", func(context.Context) error {
		info, err := os.Stat(path)
		if err != nil {
			return err
		}
		if !info.ModTime().After(since) {
			return errors.New("not saved since")
		}
		return nil
	})
}

// tmpfsDir is a directory to create on tmpfs (/dev/shm), removed at the test's end.
func tmpfsDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "kms-keep")
	if err != nil {
		t.Fatalf("a tmpfs directory for --vault-keep-memory tmpfs: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "state")
}

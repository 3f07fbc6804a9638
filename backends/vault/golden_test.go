package vault

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/kektest"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
)

// Golden files: envelopes written by released versions of the plugin under one transit key,
// whose Transit backup (the base64 that transit/backup/<key> returns; the key was made
// exportable with allow_plaintext_backup for it) is checked in beside them. Every later version
// must still decrypt every envelope in testdata/golden/envelopes.json: TestVaultGolden restores
// the backup into a fresh Vault, under another mount and key name than the key had, and
// decrypts them all.
//
// New entries are added, never changed, by
//
//	KMS_PLUGIN_WRITE_GOLDEN=<label> go test ./backends/vault -run TestVaultGolden
//
// which restores the backup (or, when there is none yet, creates the key with two versions and
// backs it up) and appends an envelope under each version, labelled written_by=<label>.
const (
	goldenDir        = "testdata/golden"
	goldenBackupFile = "transit-key.backup"
	goldenEnvelopes  = "envelopes.json"
)

func readGolden(t *testing.T) (backup string, envs []kektest.Golden) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(goldenDir, goldenBackupFile))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	backup = strings.TrimSpace(string(b))
	return backup, kektest.ReadGolden(t, filepath.Join(goldenDir, goldenEnvelopes))
}

func TestVaultGolden(t *testing.T) {
	if label := os.Getenv("KMS_PLUGIN_WRITE_GOLDEN"); label != "" {
		writeGolden(t, label)
		return
	}
	backup, envs := readGolden(t)
	if backup == "" || len(envs) == 0 {
		t.Fatal("no golden files in " + goldenDir)
	}
	v := vaultd.StartVaultDev(t)
	// Another mount and key name than the key had when the envelopes were written, in another
	// Vault cluster: none of them may matter.
	const mount, key = "restored-transit", "restored-golden"
	v.EnableTransit(t, mount)
	v.Write(t, mount+"/restore/"+key, map[string]any{"backup": backup})
	k, err := Open(Config{Address: v.Addr, Mount: mount, Key: key, Auth: StaticToken{v.RootToken}, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	mustCheck(t, k)
	s := dek.NewSealer(k)
	ids := map[string]bool{}
	for _, e := range envs {
		ids[e.KeyID] = true
		ct := e.Check(t, s)

		// A changed byte of the wrapped DEK fails Vault's authentication: ErrTampered under a key
		// id that names this key's version (format 2), ErrUnknownKey under one that names none
		// (format 1 hashed the cluster, mount and name the key no longer has).
		kv, _ := ParseKeyID(e.KeyID)
		ct[2+len(e.KeyID)+2+5] ^= 1
		_, _, err := s.Decrypt(context.Background(), ct)
		wantErr := dek.ErrUnknownKey
		if kv.Lineage() == lineage(keyCreatedAt(t, k, kv.Version())) {
			wantErr = dek.ErrTampered
		}
		if !errors.Is(err, wantErr) {
			t.Errorf("envelope under %s with a changed wrapped DEK: %v; want %v", e.KeyID, err, wantErr)
		}
	}
	// The DEK cache keeps what unwrapped (format 1 of another cluster included), and drops a
	// key id of another lineage that never did.
	for id := range ids {
		if err := k.Usable(id); err != nil {
			t.Errorf("Usable(%s) after it unwrapped: %v", id, err)
		}
	}
	if err := k.Usable("vault:0123456789abcdef:v1"); !errors.Is(err, dek.ErrUnknownKey) {
		t.Errorf("Usable of a key id that never unwrapped: %v; want dek.ErrUnknownKey", err)
	}
	// The restored key keeps its key id (format 2): after a restore the apiserver sees no rotation.
	if !ids[k.CurrentID()] {
		t.Errorf("restored key's key id %s is none of the golden envelopes' %v", k.CurrentID(), ids)
	}
}

func keyCreatedAt(t *testing.T, k *KEK, version int) int64 {
	t.Helper()
	k.mu.RLock()
	defer k.mu.RUnlock()
	created, ok := k.observed.created[version]
	if !ok {
		t.Fatalf("version %d not listed", version)
	}
	return created
}

// writeGolden appends envelopes written by this version under every version of the golden key.
func writeGolden(t *testing.T, label string) {
	backup, envs := readGolden(t)
	v := vaultd.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	const key = "golden"
	if backup == "" {
		v.Write(t, "transit/keys/"+key, nil)
		v.RotateKey(t, "transit", key)
		v.Write(t, "transit/keys/"+key+"/config", map[string]any{"exportable": true, "allow_plaintext_backup": true})
		backup, _ = v.Read(t, "transit/backup/"+key).Data["backup"].(string)
	} else {
		v.Write(t, "transit/restore/"+key, map[string]any{"backup": backup})
	}
	k, err := Open(Config{Address: v.Addr, Mount: "transit", Key: key, Auth: StaticToken{v.RootToken}, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for k.CurrentID() == "" {
		mustCheck(t, k)
	}
	current, err := ParseKeyID(k.CurrentID())
	if err != nil {
		t.Fatal(err)
	}
	s := dek.NewSealer(k)
	for ver := 1; ver <= current.Version(); ver++ {
		k.mu.RLock()
		st := k.observed
		k.mu.RUnlock()
		id := KeyVersion{lineage: lineage(st.created[ver]), version: ver}.String()
		envs = append(envs, kektest.Seal(t, s, label, id, ""))
	}
	// And one in local KEK mode: envelope format 2, a local KEK wrapped by the current version.
	local := dek.NewLocalSealer(k, dek.LocalKEKConfig{})
	envs = append(envs, kektest.Seal(t, local, label, k.CurrentID(), "envelope format 2 (local KEK mode)"))
	kektest.WriteGolden(t, filepath.Join(goldenDir, goldenEnvelopes), envs)
	if err := os.WriteFile(filepath.Join(goldenDir, goldenBackupFile), []byte(backup+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d envelopes to %s", len(envs), goldenDir)
}

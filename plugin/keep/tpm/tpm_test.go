package tpm_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/kmsplugin/kms-plugin/integration/harness/swtpm"
	"github.com/kmsplugin/kms-plugin/plugin/keep/tpm"
)

func open(t *testing.T, device, dir string, pcrs ...int) *tpm.Store {
	t.Helper()
	s, err := tpm.Open(tpm.Config{Device: device, Dir: dir, PCRs: pcrs, NVIndex: tpm.DefaultNVIndex})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// The sealed state survives a reboot (PCRs reset to the values they had), and is ciphertext
// on disk.
func TestSealedStateSurvivesAReboot(t *testing.T) {
	for name, pcrs := range map[string][]int{"pcr7": tpm.DefaultPCRs, "no-pcrs": nil} {
		t.Run(name, func(t *testing.T) {
			sw := swtpm.Start(t)
			dir := t.TempDir()
			s := open(t, sw.Device, dir, pcrs...)
			if _, err := s.Load(); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Load of nothing: %v; want fs.ErrNotExist", err)
			}
			want := bytes.Repeat([]byte("kept DEK "), 100)
			if err := s.Save(want); err != nil {
				t.Fatal(err)
			}
			onDisk, err := os.ReadFile(filepath.Join(dir, "state"))
			if err != nil || bytes.Contains(onDisk, []byte("kept DEK")) {
				t.Fatalf("state file (%v) holds the plaintext", err)
			}
			s.Close()
			sw.Reboot(t)
			got, err := open(t, sw.Device, dir, pcrs...).Load()
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("Load after a reboot: %v", err)
			}
		})
	}
}

// After an erase (the backend refused), a copy of an older state file, put back, does not
// load: the NV counter moved on.
func TestRolledBackStateDoesNotLoad(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := open(t, sw.Device, dir, tpm.DefaultPCRs...)
	if err := s.Save([]byte("before the refusal")); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Erase(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load after Erase: %v; want fs.ErrNotExist", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state"), old, 0o600); err != nil {
		t.Fatal(err)
	}
	s.Close()
	sw.Reboot(t)
	s = open(t, sw.Device, dir, tpm.DefaultPCRs...)
	if _, err := s.Load(); !errors.Is(err, tpm.ErrRolledBack) {
		t.Fatalf("Load of a rolled-back copy: %v; want ErrRolledBack", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the rolled-back copy is still there: %v", err)
	}
	// Saves after the refusal load again.
	if err := s.Save([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(); err != nil || string(got) != "after" {
		t.Fatalf("Load of a state saved after the erase: %q, %v", got, err)
	}
}

// An erase removes the state even when the TPM does not answer (and says so): a failed
// counter increment must not leave the state loadable.
func TestEraseWithoutTheTPMStillRemovesTheState(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := open(t, sw.Device, dir, tpm.DefaultPCRs...)
	if err := s.Save([]byte("before the refusal")); err != nil {
		t.Fatal(err)
	}
	sw.Stop()
	if err := s.Erase(); err == nil {
		t.Fatal("Erase with the TPM gone reported success")
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the state is still there after a failed increment: %v", err)
	}
}

// A TPM that does not answer at start fails the start and leaves the kept state and its
// sealed key alone: only a TPM that refuses to unseal (ErrPolicy) loses them.
func TestUnansweringTPMAtStartTouchesNothing(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := open(t, sw.Device, dir, tpm.DefaultPCRs...)
	if err := s.Save([]byte("kept")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	before := map[string][]byte{}
	for _, f := range []string{"state", "key.pub", "key.priv"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		before[f] = b
	}
	sw.Stop()
	if _, err := tpm.Open(tpm.Config{Device: sw.Device, Dir: dir, PCRs: tpm.DefaultPCRs, NVIndex: tpm.DefaultNVIndex}); err == nil {
		t.Fatal("Open with no TPM answering succeeded")
	}
	for f, b := range before {
		if got, err := os.ReadFile(filepath.Join(dir, f)); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s changed by a failed start: %v", f, err)
		}
	}
}

// A changed PCR (another boot chain) unseals nothing: Load says why once, and the store
// seals a new key so that later saves work.
func TestChangedPCRUnsealsNothing(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := open(t, sw.Device, dir, tpm.DefaultPCRs...)
	if err := s.Save([]byte("sealed to PCR 7")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	extendPCR(t, sw.Device, 7)
	s = open(t, sw.Device, dir, tpm.DefaultPCRs...)
	_, err := s.Load()
	if !errors.Is(err, tpm.ErrPolicy) || !strings.Contains(err.Error(), "PCRs [7] differ") {
		t.Fatalf("Load with PCR 7 extended: %v; want ErrPolicy naming the PCRs", err)
	}
	if _, err := s.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("second Load: %v; want fs.ErrNotExist (the old state is gone)", err)
	}
	if err := s.Save([]byte("new")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(); err != nil || string(got) != "new" {
		t.Fatalf("Load after resealing: %q, %v", got, err)
	}
}

// The sealed key and the state, copied to another machine (another TPM), unseal nothing.
func TestAnotherTPMUnsealsNothing(t *testing.T) {
	dir := t.TempDir()
	s := open(t, swtpm.Start(t).Device, dir)
	if err := s.Save([]byte("this TPM's")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	other := open(t, swtpm.Start(t).Device, dir)
	if _, err := other.Load(); !errors.Is(err, tpm.ErrPolicy) {
		t.Fatalf("Load on another TPM: %v; want ErrPolicy", err)
	}
}

// A changed byte of the state fails authentication, and the file is erased.
func TestTamperedStateFails(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := open(t, sw.Device, dir)
	if err := s.Save([]byte("state")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "state")
	b, _ := os.ReadFile(path)
	b[len(b)-1] ^= 1
	os.WriteFile(path, b, 0o600)
	if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("Load of a tampered state: %v", err)
	}
}

func TestBadConfig(t *testing.T) {
	for _, cfg := range []tpm.Config{
		{Device: "unix:///nonexistent/tpm.sock", Dir: t.TempDir(), NVIndex: tpm.DefaultNVIndex},
		{Device: "unix:///x", Dir: t.TempDir(), NVIndex: 0x81000001},
		{Device: "unix:///x", Dir: t.TempDir(), NVIndex: tpm.DefaultNVIndex, PCRs: []int{24}},
		{Device: "", Dir: t.TempDir(), NVIndex: tpm.DefaultNVIndex},
		{Device: "unix:///x", Dir: openDir(t), NVIndex: tpm.DefaultNVIndex},
	} {
		if _, err := tpm.Open(cfg); err == nil {
			t.Errorf("Open(%+v) succeeded", cfg)
		}
	}
}

// extendPCR extends a PCR of the TPM at device, as a measured boot of something else would.
func extendPCR(t *testing.T, device string, pcr int) {
	t.Helper()
	conn, err := linuxudstpm.Open(strings.TrimPrefix(device, "unix://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{
			HashAlg: tpm2.TPMAlgSHA256, Digest: bytes.Repeat([]byte{1}, 32),
		}}},
	}.Execute(conn)
	if err != nil {
		t.Fatal(err)
	}
}

// Root on the node cannot wind the counter back by deleting and redefining the NV index: a
// counter defined anew starts at or above the highest count the TPM's counters have had, so a
// state written before the erase still does not load.
func TestRedefinedCounterDoesNotGoBack(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	s := open(t, sw.Device, dir)
	if err := s.Save([]byte("before the refusal")); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(filepath.Join(dir, "state"))
	for range 3 {
		if err := s.Erase(); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	conn, err := linuxudstpm.Open(strings.TrimPrefix(sw.Device, "unix://"))
	if err != nil {
		t.Fatal(err)
	}
	idx := tpm2.TPMHandle(tpm.DefaultNVIndex)
	pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: idx, Name: pub.NVName}}).Execute(conn); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	os.WriteFile(filepath.Join(dir, "state"), old, 0o600)
	s = open(t, sw.Device, dir) // defines the counter again
	if _, err := s.Load(); !errors.Is(err, tpm.ErrRolledBack) {
		t.Fatalf("Load of the old state after the counter was redefined: %v; want ErrRolledBack", err)
	}
}

// openDir is a directory others may write in.
func openDir(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	return dir
}

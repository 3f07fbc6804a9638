// Package tpm keeps the plugin's snapshot (plugin/keep) sealed to the node's TPM 2.0, so that
// it survives a reboot but not a stolen disk: the snapshot is encrypted (AES-256-GCM) under a
// random state key that only this TPM unseals, and only while the PCRs it is bound to hold the
// values they had at sealing (the boot chain: a disk moved to another machine, or booted into
// something else, unseals nothing). An NV counter in the TPM defeats rollback: every erase
// (after the backend refused) increments it, and a snapshot written under another count does
// not load, so a copy of the state restored from a backup cannot re-open serving.
//
// Files in the state directory (all mode 0600): key.pub and key.priv, the sealed state key
// (TPM2B_PUBLIC and TPM2B_PRIVATE, encrypted by the TPM's storage key: useless off this TPM);
// state, the snapshot: magic, the NV count it was written under, a nonce, the ciphertext.
package tpm

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
)

// Defaults of Config.
const (
	DefaultDevice = "/dev/tpmrm0"
	DefaultDir    = "/var/lib/kms-plugin/state"
	// DefaultNVIndex is the NV counter's index, in the owner's range (TCG's registry of
	// handles: 0x01000000 to 0x013FFFFF); "KP" in its low bytes.
	DefaultNVIndex = 0x01004b50
)

// DefaultPCRs binds the seal to PCR 7 (Secure Boot's state and keys), as systemd-cryptenroll
// does by default: it changes when Secure Boot's configuration does, not at every kernel update.
var DefaultPCRs = []int{7}

// Config says which TPM, where the files go, and what binds the seal.
type Config struct {
	// Device is the TPM: a character device (/dev/tpmrm0, the kernel's resource manager) or
	// unix:///path, a software TPM's socket (swtpm socket --server type=unixio).
	Device string
	Dir    string
	// PCRs are the SHA-256 PCRs whose values the state key is sealed to; empty: none (the
	// TPM alone, whatever booted).
	PCRs    []int
	NVIndex uint32
}

// Store is a keep.Store sealed to a TPM.
type Store struct {
	cfg Config
	tpm transport.TPMCloser

	mu   sync.Mutex // the transport takes one command at a time
	aead cipher.AEAD
	// unsealErr is why the state key sealed before could not be unsealed at Open (PCRs moved,
	// another TPM): the state written under it can never load, and Load says so once.
	unsealErr error
}

// Open opens the TPM and unseals the state key kept in cfg.Dir, sealing a new one when there is
// none or the old one no longer unseals (then the old state is unreadable: Load says why).
func Open(cfg Config) (*Store, error) {
	if cfg.NVIndex < 0x01000000 || cfg.NVIndex > 0x01BFFFFF || (cfg.NVIndex >= 0x01400000 && cfg.NVIndex <= 0x017FFFFF) {
		return nil, fmt.Errorf("NV index %#x: want one in the owner's ranges (0x01000000-0x013FFFFF, 0x01800000-0x01BFFFFF)", cfg.NVIndex)
	}
	for _, p := range cfg.PCRs {
		if p < 0 || p > 23 {
			return nil, fmt.Errorf("PCR %d: want 0 to 23", p)
		}
	}
	if cfg.Device == "" {
		return nil, errors.New("no TPM device given")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	// What it holds is ciphertext and sealed blobs, each 0600: others must not replace them.
	info, err := os.Stat(cfg.Dir)
	switch {
	case err != nil:
		return nil, fmt.Errorf("state directory: %w", err)
	case !info.IsDir():
		return nil, fmt.Errorf("state directory %s is not a directory", cfg.Dir)
	}
	if err := privatefile.JudgeInfo(cfg.Dir, info, privatefile.Public); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	var t transport.TPMCloser
	if path, ok := strings.CutPrefix(cfg.Device, "unix://"); ok {
		t, err = linuxudstpm.Open(path)
	} else {
		t, err = linuxtpm.Open(cfg.Device)
	}
	if err != nil {
		return nil, fmt.Errorf("opening the TPM %s: %w", cfg.Device, err)
	}
	s := &Store{cfg: cfg, tpm: t}
	if err := s.open(); err != nil {
		t.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) open() error {
	if _, err := s.counter(); err != nil {
		return err
	}
	key, err := s.unsealKey()
	switch {
	case errors.Is(err, ErrPolicy):
		// The TPM will never unseal this key (other PCRs, another TPM): the state it protects is
		// lost for good, so a new key is sealed and Load says why once.
		s.unsealErr = err
		os.Remove(s.path(stateFile))
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		// Anything else (a TPM busy or failing, an unreadable key file) may pass: keep the
		// state and its key as they are, and do not start on a TPM that does not answer.
		return fmt.Errorf("unsealing the state key: %w", err)
	}
	if key == nil {
		if key, err = s.sealNewKey(); err != nil {
			return err
		}
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	s.aead, err = cipher.NewGCM(block)
	return err
}

// Close closes the TPM.
func (s *Store) Close() error { return s.tpm.Close() }

func (s *Store) String() string {
	return fmt.Sprintf("tpm %s (PCRs %v, NV counter %#x) %s", s.cfg.Device, s.cfg.PCRs, s.cfg.NVIndex, s.cfg.Dir)
}

const (
	stateFile = "state"
	pubFile   = "key.pub"
	privFile  = "key.priv"
)

var magic = []byte("kms-plugin-keep-tpm\x01")

func (s *Store) path(name string) string { return filepath.Join(s.cfg.Dir, name) }

// ad is the snapshot's additional data: it binds the ciphertext to this NV index and count.
func (s *Store) ad(count uint64) []byte {
	ad := append([]byte(nil), magic...)
	ad = binary.BigEndian.AppendUint32(ad, s.cfg.NVIndex)
	return binary.BigEndian.AppendUint64(ad, count)
}

// Save encrypts b under the state key, bound to the NV counter's value now.
func (s *Store) Save(b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	count, err := s.counter()
	if err != nil {
		return err
	}
	out := append([]byte(nil), magic...)
	out = binary.BigEndian.AppendUint64(out, count)
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	out = append(out, nonce...)
	out = s.aead.Seal(out, nonce, b, s.ad(count))
	return privatefile.Write(s.path(stateFile), out, true)
}

// ErrRolledBack is a snapshot written under another NV count than the TPM's: an older copy,
// restored after the backend refused.
var ErrRolledBack = errors.New("kept state rolled back")

// Load decrypts the snapshot, if it was written under the NV counter's value now.
func (s *Store) Load() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.unsealErr; err != nil {
		s.unsealErr = nil
		return nil, fmt.Errorf("the state kept before cannot be read: %w", err)
	}
	raw, err := privatefile.Read(s.path(stateFile))
	if err != nil {
		return nil, err
	}
	n := len(magic) + 8 + s.aead.NonceSize()
	if len(raw) < n+s.aead.Overhead() || !bytes.Equal(raw[:len(magic)], magic) {
		os.Remove(s.path(stateFile))
		return nil, errors.New("kept state: not a TPM-sealed snapshot of this format; erased")
	}
	written := binary.BigEndian.Uint64(raw[len(magic):])
	count, err := s.counter()
	if err != nil {
		return nil, err
	}
	if written != count {
		os.Remove(s.path(stateFile))
		return nil, fmt.Errorf("%w: it was written at NV count %d, the TPM's is %d (erased after a refusal since); erased", ErrRolledBack, written, count)
	}
	b, err := s.aead.Open(nil, raw[n-s.aead.NonceSize():n], raw[n:], s.ad(count))
	if err != nil {
		os.Remove(s.path(stateFile))
		return nil, errors.New("kept state failed authentication (changed, or sealed by another key); erased")
	}
	return b, nil
}

// Erase deletes the file and increments the NV counter, so that no copy of the state written
// so far ever loads again. The file goes first, whatever the TPM does: a failed increment must
// not leave the state itself loadable.
func (s *Store) Erase() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var removeErr error
	if err := os.Remove(s.path(stateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		removeErr = err
	}
	return errors.Join(removeErr, s.increment())
}

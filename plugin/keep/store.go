package keep

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
)

// Store holds one snapshot's bytes across a restart.
type Store interface {
	// Save replaces what is kept with b.
	Save(b []byte) error
	// Load returns what is kept: nil and fs.ErrNotExist when nothing is. A kept state that
	// must not be served (rolled back, unsealable) is an error, and is erased.
	Load() ([]byte, error)
	// Erase deletes what is kept, for good: a copy of it restored later must not load.
	Erase() error
	// String names the store in the log.
	String() string
}

// FileName is the snapshot's file in a store's directory.
const FileName = "state"

// tmpfsMagic is Linux's TMPFS_MAGIC (statfs f_type).
const tmpfsMagic = 0x01021994

// Tmpfs keeps the snapshot as a file (mode 0600) in a directory on tmpfs (under /run): it
// survives a restart of the process, not a reboot of the node. It is the plaintext state:
// whoever reads the file (root on the node, a process of the plugin's user) holds the keys.
type Tmpfs struct{ Dir string }

// NewTmpfs returns the store in dir, created (0700) if missing, once dir is found to be on
// tmpfs and writable by its owner only.
func NewTmpfs(dir string) (*Tmpfs, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	t := &Tmpfs{Dir: dir}
	if err := t.check(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tmpfs) String() string { return "tmpfs " + t.Dir }

// check refuses a directory that is not on tmpfs (a snapshot on disk would silently survive
// a reboot and a stolen disk) or that others may read or write.
func (t *Tmpfs) check() error {
	if err := OnTmpfs(t.Dir); err != nil {
		return err
	}
	return PrivateDir(t.Dir)
}

// OnTmpfs reports an error unless dir is on tmpfs.
func OnTmpfs(dir string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if st.Type != tmpfsMagic {
		return fmt.Errorf("state directory %s is not on tmpfs (filesystem type %#x): kept state there would outlive a reboot on disk; name a directory under /run, or use the TPM store", dir, st.Type)
	}
	return nil
}

// PrivateDir reports an error unless dir is a directory owned by root or this process's
// user, which no one else may read or write.
func PrivateDir(dir string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("state directory %s is not a directory", dir)
	}
	if err := privatefile.JudgeInfo(dir, info, privatefile.Public); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("state directory %s has mode %04o: group or others may read or change kept keys (chmod 700 %s)", dir, perm, dir)
	}
	return nil
}

func (t *Tmpfs) Save(b []byte) error {
	if err := t.check(); err != nil {
		return err
	}
	return privatefile.Write(filepath.Join(t.Dir, FileName), b, true)
}

func (t *Tmpfs) Load() ([]byte, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	return privatefile.Read(filepath.Join(t.Dir, FileName))
}

func (t *Tmpfs) Erase() error {
	err := os.Remove(filepath.Join(t.Dir, FileName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

package plugin

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// SocketOptions set who may connect.
type SocketOptions struct {
	Mode os.FileMode // permissions of the socket file, 0600 by default
	GID  int         // group of the socket file; -1 keeps the process's
}

// Listen creates the unix socket at path. A stale socket file left by a dead process is
// removed; a socket that a live process still serves is an error, so that two plugins never
// fight over one path. A missing directory is created 0700.
//
// The directory must be writable by its owner alone, root or this process's user: in a
// directory others may write, the path could be swapped for a link between any check and
// use, turning our cleanup or permission change onto another file. The socket is created
// with its mode already set (no chmod after the fact) and its group is set without following
// links.
func Listen(path string, opts SocketOptions) (net.Listener, error) {
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	// The umask gives the socket its mode from its creation on.
	old := syscall.Umask(int(0o777 &^ opts.Mode.Perm()))
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if opts.GID >= 0 {
		if err := os.Lchown(path, -1, opts.GID); err != nil {
			lis.Close()
			return nil, fmt.Errorf("socket group: %w", err)
		}
	}
	return lis, nil
}

// checkSocketDir refuses a socket directory that someone else could write in.
func checkSocketDir(dir string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	if perm := info.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("socket directory %s has mode %04o: group or others may write in it, and could swap the socket for a link; use a directory only its owner can write (chmod go-w %s)", dir, perm, dir)
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("socket directory %s is owned by uid %d, neither root nor this process's user (%d)", dir, st.Uid, os.Geteuid())
	}
	return nil
}

func removeStaleSocket(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if info.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("socket %s: a file that is not a socket is in the way; refusing to remove it", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("socket %s is served by another live process; stop it first", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	return nil
}

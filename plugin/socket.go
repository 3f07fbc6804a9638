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
func Listen(path string, opts SocketOptions) (net.Listener, error) {
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	// The umask keeps the socket private from its creation until the chmod below.
	old := syscall.Umask(0o177)
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, opts.Mode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("socket permissions: %w", err)
	}
	if opts.GID >= 0 {
		if err := os.Chown(path, -1, opts.GID); err != nil {
			lis.Close()
			return nil, fmt.Errorf("socket group: %w", err)
		}
	}
	return lis, nil
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

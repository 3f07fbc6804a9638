package plugin

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
)

// SocketOptions set who may connect.
type SocketOptions struct {
	Mode os.FileMode // permissions of the socket file, 0600 by default
	GID  int         // group of the socket file; -1 keeps the process's
}

// Listen creates the unix socket at path, once CheckSocketPath accepts it. A stale socket file
// left by a dead process is removed; a socket that a live process still serves is an error, so
// that two plugins never fight over one path. A missing directory is created 0700.
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
	state, err := CheckSocketPath(path)
	if err != nil {
		return nil, err
	}
	if state.CreateDir {
		dir := filepath.Dir(path)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("socket directory: %w", err)
		}
		if err := checkSocketDir(dir); err != nil { // ours and 0700, unless another process raced us
			return nil, err
		}
	}
	if state.Stale {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
		}
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

// MaxSocketPath is the longest path a unix socket address holds on Linux (sun_path is 108
// bytes, one of them the terminating NUL).
const MaxSocketPath = 107

// SocketPathState is what Listen will do at a path CheckSocketPath accepts.
type SocketPathState struct {
	CreateDir bool // the directory is missing: Listen creates it 0700
	Stale     bool // a socket file that no process serves is there: Listen removes it
}

// SocketPathError is a socket path Listen refuses: what is wrong and what fixes it.
type SocketPathError struct {
	Problem string // names the path
	Fix     string
	Live    bool // a live process serves the socket
}

func (e *SocketPathError) Error() string { return e.Problem + " (" + e.Fix + ")" }

// CheckSocketPath is Listen's verdict on path, changing nothing: Listen runs it first, and kmsctl
// doctor runs it alone. The path must fit a socket address; its directory must be owned by root
// or us and writable by no one else (internal/privatefile's rule for public files), or be
// missing under a directory we may create it in; and nothing but a stale socket may be at the
// path. A live socket is a *SocketPathError with Live set.
func CheckSocketPath(path string) (SocketPathState, error) {
	var state SocketPathState
	if len(path) > MaxSocketPath {
		return state, &SocketPathError{Fix: "use a shorter --listen path",
			Problem: fmt.Sprintf("socket path %s: %d bytes is longer than a unix socket address holds (%d)", path, len(path), MaxSocketPath)}
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); missing(err) {
		state.CreateDir = true
		return state, creatable(dir)
	}
	if err := checkSocketDir(dir); err != nil {
		return state, err
	}
	info, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return state, nil
	case err != nil:
		return state, fmt.Errorf("socket %s: %w", path, err)
	case info.Mode().Type() != os.ModeSocket:
		return state, &SocketPathError{Fix: "remove it, or choose another --listen path",
			Problem: fmt.Sprintf("socket %s: a file that is not a socket is in the way; refusing to remove it", path)}
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return state, &SocketPathError{Live: true, Fix: "stop it first",
			Problem: fmt.Sprintf("socket %s is served by another live process", path)}
	}
	state.Stale = true
	return state, nil
}

// checkSocketDir refuses a socket directory that someone else could write in.
func checkSocketDir(dir string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if !info.IsDir() {
		return &SocketPathError{Fix: "choose a --listen path under a directory",
			Problem: fmt.Sprintf("socket directory %s is not a directory", dir)}
	}
	var bad *privatefile.Error
	if err := privatefile.JudgeInfo(dir, info, privatefile.Public); errors.As(err, &bad) {
		return &SocketPathError{Fix: "choose a --listen path in a directory only its owner can write, or " + bad.Fix,
			Problem: "socket directory " + dir + " " + bad.Problem}
	} else if err != nil {
		return err
	}
	return nil
}

// creatable refuses a missing socket directory that MkdirAll could not create: the nearest
// existing ancestor must be a directory we may write in.
func creatable(dir string) error {
	existing := dir
	for {
		info, err := os.Stat(existing)
		if err == nil {
			if !info.IsDir() {
				return &SocketPathError{Fix: "choose a --listen path under a directory",
					Problem: fmt.Sprintf("socket directory %s cannot be created: %s is not a directory", dir, existing)}
			}
			break
		}
		if !missing(err) {
			return fmt.Errorf("socket directory: %w", err)
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if err := syscall.Access(existing, 0o2|0o1); err != nil { // W_OK|X_OK
		return &SocketPathError{Fix: "create the directory for the plugin's user, or run as a user that may write there",
			Problem: fmt.Sprintf("socket directory %s does not exist and its parent %s is not writable by uid %d: %v", dir, existing, os.Geteuid(), err)}
	}
	return nil
}

// missing reports a path that does not exist, or that a file stands in the way of.
func missing(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
)

// maxSocketPath is the longest path a unix socket address holds on Linux (sun_path is 108
// bytes, one of them the terminating NUL).
const maxSocketPath = 107

// Socket checks that serve can listen at path: its directory exists or can be created, and no
// live process holds the socket. With running, a plugin is expected there instead, and its
// Status must answer healthy.
func Socket(ctx context.Context, path string, running bool) []Result {
	const check = "socket"
	if len(path) > maxSocketPath {
		return []Result{fail(check, "use a shorter --listen path",
			"%s: %d bytes is longer than a unix socket address holds (%d)", path, len(path), maxSocketPath)}
	}
	if r, bad := socketDir(filepath.Dir(path)); bad {
		return []Result{r}
	}
	info, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if running {
			return []Result{fail(check, "start the plugin, or give doctor the --listen it serves on",
				"%s does not exist, but --running says a plugin serves it", path)}
		}
		return []Result{ok(check, "%s: directory usable, no socket yet", path)}
	case err != nil:
		return []Result{fail(check, "", "%s: %v", path, err)}
	case info.Mode().Type() != os.ModeSocket:
		return []Result{fail(check, "remove it, or choose another --listen path",
			"%s is a %s, not a socket; serve refuses to remove it", path, info.Mode().Type())}
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	live := err == nil
	if live {
		conn.Close()
	}
	switch {
	case live && running:
		return []Result{pluginStatus(ctx, path)}
	case live:
		return []Result{fail(check, "stop that process first; if it is the plugin, run doctor with --running",
			"%s is served by a live process: serve would refuse to start", path)}
	case running:
		return []Result{fail(check, "start the plugin; a socket without a process is left by one that died",
			"%s exists, but no process listens on it (%v)", path, err)}
	}
	return []Result{ok(check, "%s: stale socket of an earlier run, which serve removes", path)}
}

// socketDir checks that dir exists as a directory we may create files in, or can be created.
func socketDir(dir string) (Result, bool) {
	const check = "socket"
	existing := dir
	for {
		info, err := os.Stat(existing)
		if err == nil {
			if !info.IsDir() {
				return fail(check, "choose a --listen path under a directory",
					"%s is not a directory", existing), true
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fail(check, "", "socket directory: %v", err), true
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if err := syscall.Access(existing, 0o2|0o1); err != nil { // W_OK|X_OK
		what := "socket directory " + dir
		if existing != dir {
			what = fmt.Sprintf("%s does not exist and its parent %s", dir, existing)
		}
		return fail(check, "create the directory for the plugin's user, or run as a user that may write there",
			"%s is not writable by uid %d: %v", what, os.Getuid(), err), true
	}
	return Result{}, false
}

// status asks the plugin at path for its Status, as the apiserver does.
func status(ctx context.Context, path string) (kmsclient.Status, error) {
	conn, err := kmsclient.Dial(path)
	if err != nil {
		return kmsclient.Status{}, err
	}
	defer conn.Close()
	return kmsclient.CheckStatus(ctx, conn, kmsclient.APIServerTimeout)
}

// PluginKeyID is the key id the plugin serving at path reports by Status now ("" if it does
// not answer well: the socket check says why).
func PluginKeyID(ctx context.Context, path string) string {
	st, err := status(ctx, path)
	if err != nil {
		return ""
	}
	return st.KeyID
}

// pluginStatus asks a running plugin's Status, as the apiserver does.
func pluginStatus(ctx context.Context, path string) Result {
	const check = "plugin status"
	st, err := status(ctx, path)
	switch {
	case err != nil && st.Version != "" && st.Version != "v2":
		return fail(check, "run a KMS v2 plugin on this socket", "Status over %s: %v", path, err)
	case err != nil:
		return fail(check, "see the plugin's log", "Status over %s: %v", path, err)
	case st.Healthz != "ok":
		return fail(check, "see the other checks and the plugin's log",
			"Status over %s: key_id %s, unhealthy: %s", path, st.KeyID, st.Healthz)
	}
	return ok(check, "Status over %s: healthz ok, key_id %s", path, st.KeyID)
}

package doctor

import (
	"context"
	"errors"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// Socket checks path with serve's own check (plugin.CheckSocketPath, which Listen runs): its
// length, its directory's owner and mode (or that the directory can be created), and that no
// live process holds the socket. With running, a plugin is expected there instead, and its
// Status must answer healthy.
func Socket(ctx context.Context, path string, running bool) []Result {
	const check = "socket"
	state, err := plugin.CheckSocketPath(path)
	var bad *plugin.SocketPathError
	switch {
	case errors.As(err, &bad) && bad.Live && running:
		return []Result{pluginStatus(ctx, path)}
	case errors.As(err, &bad) && bad.Live:
		return []Result{fail(check, "stop that process first; if it is the plugin, run doctor with --running",
			"%s: serve would refuse to start", bad.Problem)}
	case errors.As(err, &bad):
		return []Result{fail(check, bad.Fix, "%s: serve would refuse to start", bad.Problem)}
	case err != nil:
		return []Result{fail(check, "", "%v", err)}
	case running && state.Stale:
		return []Result{fail(check, "start the plugin; a socket without a process is left by one that died",
			"%s exists, but no process listens on it", path)}
	case running:
		return []Result{fail(check, "start the plugin, or give doctor the --listen it serves on",
			"%s does not exist, but --running says a plugin serves it", path)}
	case state.Stale:
		return []Result{ok(check, "%s: stale socket of an earlier run, which serve removes", path)}
	case state.CreateDir:
		return []Result{ok(check, "%s: serve creates its directory (0700), no socket yet", path)}
	}
	return []Result{ok(check, "%s: directory usable, no socket yet", path)}
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

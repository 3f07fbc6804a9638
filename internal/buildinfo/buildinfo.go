// Package buildinfo formats what `--version` prints: the version and commit that
// scripts/build.sh stamps into main.version and main.commit, and the Go release that built the
// binary, so that a user can check a binary against the release it claims to be (docs/security.md).
package buildinfo

import (
	"fmt"
	"runtime"
)

// String is the version line after "NAME version ": "v0.1.0 (commit 16a65a2..., go1.26.8)".
func String(version, commit string) string {
	return fmt.Sprintf("%s (commit %s, %s)", version, commit, runtime.Version())
}

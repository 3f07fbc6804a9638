package doctor

import (
	"bytes"
	"fmt"
	"os"
)

// File is a file the plugin reads.
type File struct {
	What string // "localaes key file", "vault token file", ...
	Path string
	// Secret files must be readable by their owner only. A file that is not secret (a CA
	// bundle, a certificate) must still not be writable by others: whoever can replace a CA
	// can impersonate Vault. A certificate file holding a private key counts as secret.
	Secret bool
	// Lenient marks secrets whose usual deployments make them group- or world-readable inside
	// the container (a projected service-account token): that is a warning, not a failure.
	Lenient bool
}

// Files checks each file's existence and permissions.
func Files(files []File) []Result {
	var out []Result
	for _, f := range files {
		out = append(out, checkFile(f))
	}
	return out
}

func checkFile(f File) Result {
	const check = "file permissions"
	info, err := os.Stat(f.Path)
	if err != nil {
		return fail(check, "create it, or fix the flag that names it", "%s %s: %v", f.What, f.Path, err)
	}
	if !info.Mode().IsRegular() {
		return fail(check, "name a regular file", "%s %s is not a regular file", f.What, f.Path)
	}
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return fail(check, "run as a user who may read it", "%s %s: %v", f.What, f.Path, err)
	}
	secret := f.Secret || bytes.Contains(b, []byte("PRIVATE KEY-----"))
	clear(b)
	perm := info.Mode().Perm()
	switch {
	case secret && perm&0o077 != 0:
		msg := fmt.Sprintf("%s %s has mode %04o: group or others can read or change a secret", f.What, f.Path, perm)
		fix := fmt.Sprintf("chmod 600 %s", f.Path)
		if f.Lenient {
			return warn(check, fix+" (for a projected token: defaultMode 0400)", "%s", msg)
		}
		return fail(check, fix, "%s", msg)
	case perm&0o022 != 0:
		return fail(check, fmt.Sprintf("chmod go-w %s", f.Path),
			"%s %s has mode %04o: group or others can replace it", f.What, f.Path, perm)
	}
	return ok(check, "%s %s: mode %04o", f.What, f.Path, perm)
}

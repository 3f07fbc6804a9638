package doctor

import (
	"errors"
	"io/fs"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
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

// checkFile gives the verdict serve acts on: the rule of internal/privatefile, which serve
// applies when it reads the same file (a refusal here is a refusal there). Only a Lenient
// file's mode or owner is a warning, since serve accepts whatever mode kubelet gives it.
func checkFile(f File) Result {
	const check = "file permissions"
	rule := privatefile.Public // a file holding a private key is held to Secret
	if f.Secret {
		rule = privatefile.Secret
	}
	b, info, err := privatefile.Judge(f.Path, rule)
	clear(b)
	var bad *privatefile.Error
	switch {
	case errors.As(err, &bad) && bad.Permissions && f.Lenient:
		return warn(check, bad.Fix+" (for a projected token: defaultMode 0400)", "%s %s", f.What, bad.Problem)
	case errors.As(err, &bad):
		return fail(check, bad.Fix, "%s %s %s", f.What, f.Path, bad.Problem)
	case errors.Is(err, fs.ErrNotExist):
		return fail(check, "create it, or fix the flag that names it", "%s %s: %v", f.What, f.Path, err)
	case err != nil:
		return fail(check, "run as a user who may read it", "%s %s: %v", f.What, f.Path, err)
	}
	return ok(check, "%s %s: mode %04o", f.What, f.Path, info.Mode().Perm())
}

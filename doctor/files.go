package doctor

import (
	"errors"
	"io/fs"
	"os"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/internal/privatefile"
)

// File is a file serve reads, with serve's own reading of it.
type File struct {
	What string // "localaes key file", "token file", ...
	Path string
	// Rule is internal/privatefile's rule serve reads it by. Any marks a projected
	// service-account token, which kubelet usually mounts readable by all: serve takes it,
	// doctor warns unless it is private.
	Rule privatefile.Rule
	Read func() ([]byte, error) // serve's reading: a refusal here is a refusal there
}

// VaultFiles are the files the Vault backend reads with cfg: its TLS files and its auth
// method's credentials, at their default paths where cfg names none (vault.Files).
func VaultFiles(cfg vault.Config) []File {
	var out []File
	for _, f := range vault.Files(cfg) {
		out = append(out, File{What: f.What, Path: f.Path, Rule: f.Rule, Read: f.Read})
	}
	return out
}

// KeyFile is the localaes key file, read as localaes reads it.
func KeyFile(path string) File {
	return File{What: "localaes key file", Path: path, Rule: privatefile.Secret,
		Read: func() ([]byte, error) { return privatefile.Read(path) }}
}

// Files checks each file by reading it as serve does.
func Files(files []File) []Result {
	var out []Result
	for _, f := range files {
		out = append(out, checkFile(f))
	}
	return out
}

// checkFile gives serve's verdict: the file read by serve's own reading of it. A file serve
// takes whatever its mode (Rule Any) warns when group or others may read it.
func checkFile(f File) Result {
	const check = "file permissions"
	b, err := f.Read()
	clear(b)
	var bad *privatefile.Error
	var pathErr *fs.PathError
	switch {
	case errors.As(err, &bad):
		return fail(check, bad.Fix, "%s %s %s", f.What, f.Path, bad.Problem)
	case errors.Is(err, fs.ErrNotExist):
		return fail(check, "create it, or fix the flag that names it", "%s %s does not exist", f.What, f.Path)
	case errors.As(err, &pathErr):
		return fail(check, "run as a user who may read it", "%s %s: %v", f.What, f.Path, pathErr.Err)
	case err != nil:
		return fail(check, "fix the file, or the flag that names it", "%v", err)
	}
	if f.Rule == privatefile.Any {
		b, _, err := privatefile.Judge(f.Path, privatefile.Secret)
		clear(b)
		if errors.As(err, &bad) && bad.Permissions {
			return warn(check, bad.Fix+" (for a projected token: defaultMode 0400)", "%s %s %s", f.What, f.Path, bad.Problem)
		}
	}
	info, err := os.Stat(f.Path)
	if err != nil {
		return fail(check, "", "%s %s: %v", f.What, f.Path, err)
	}
	return ok(check, "%s %s: mode %04o", f.What, f.Path, info.Mode().Perm())
}

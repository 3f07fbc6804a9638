package privatefile

import (
	"os"
	"path/filepath"
)

// Write writes data (mode 0600) to path so that a reader sees the old file or the new one,
// never half of one, and the new one survives a crash: to a temporary file in the same
// directory, synced, then renamed over path (replace) or linked to it, which fails with
// fs.ErrExist if path exists (create); then the directory is synced so the new name is durable.
func Write(path string, data []byte, replace bool) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if replace {
		err = os.Rename(tmp.Name(), path)
	} else {
		err = os.Link(tmp.Name(), path) // exclusive like O_EXCL, and the file appears whole
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

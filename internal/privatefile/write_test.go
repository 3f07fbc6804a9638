package privatefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.yaml")
	if err := Write(path, []byte("one"), false); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("two"), false); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("create over an existing file: err = %v; want fs.ErrExist", err)
	}
	if b, err := Read(path); err != nil || string(b) != "one" {
		t.Fatalf("after a refused create: %q, %v; want the first content, readable as a secret", b, err)
	}
	if err := Write(path, []byte("three"), true); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(path); err != nil || string(b) != "three" {
		t.Fatalf("after replace: %q, %v; want the new content, readable as a secret", b, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("dir holds %d entries; want only the file, no temporary left behind", len(entries))
	}
}

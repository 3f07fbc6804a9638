package privatefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func write(t *testing.T, path, content string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// wantRefused checks that err is an *Error naming the path, saying says and giving fix.
func wantRefused(t *testing.T, err error, path, says, fix string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v; want a refusal (*Error)", err)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(e.Problem, says) || !strings.Contains(e.Fix, fix) {
		t.Fatalf("err = %q; want it to name %s, say %q and fix with %q", err, path, says, fix)
	}
}

func TestModes(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		mode       os.FileMode
		rule       Rule
		says, fix  string // "" when the file is accepted
		permission bool
	}{
		{0o600, Secret, "", "", false},
		{0o400, Secret, "", "", false},
		{0o644, Secret, "mode 0644", "chmod 600", true},
		{0o640, Secret, "mode 0640", "chmod 600", true},
		{0o604, Secret, "mode 0604", "chmod 600", true},
		{0o644, Public, "", "", false},
		{0o664, Public, "mode 0664: group or others can replace it", "chmod go-w", true},
		{0o644, Any, "", "", false},
		{0o666, Any, "", "", false},
	} {
		path := write(t, filepath.Join(dir, "f"), "s3cr3t\n", c.mode)
		b, err := ReadAs(path, c.rule)
		if c.says == "" {
			if err != nil || string(b) != "s3cr3t\n" {
				t.Errorf("mode %04o, rule %d: %q, %v; want the content", c.mode, c.rule, b, err)
			}
			continue
		}
		if b != nil {
			t.Errorf("mode %04o, rule %d: a refused file returned its content", c.mode, c.rule)
		}
		wantRefused(t, err, path, c.says, c.fix)
		// Judge returns the content with the same verdict, for doctor's warnings.
		if b, info, err := Judge(path, c.rule); string(b) != "s3cr3t\n" || info.Mode().Perm() != c.mode || err == nil || !err.(*Error).Permissions {
			t.Errorf("mode %04o, rule %d: Judge = %q, %v, %v", c.mode, c.rule, b, info, err)
		}
	}
}

func TestPublicFileHoldingAPrivateKeyIsASecret(t *testing.T) {
	path := write(t, filepath.Join(t.TempDir(), "client.pem"),
		"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n", 0o644)
	_, err := ReadAs(path, Public)
	wantRefused(t, err, path, "mode 0644", "chmod 600")
}

// Kubernetes Secret and ConfigMap volumes mount each file as a symlink into ..data/: the
// link is followed and the file it resolves to is judged.
func TestSymlinkIsFollowedAndItsTargetJudged(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "..2024_01_01_00_00_00.000000001")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(data, "token"), "tok", 0o600)
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "token")
	if err := os.Symlink("..data/token", link); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(link); err != nil || string(b) != "tok" {
		t.Fatalf("Read through a symlink = %q, %v", b, err)
	}
	// A link's own mode (0777) does not matter; the target's does.
	os.Chmod(filepath.Join(data, "token"), 0o644)
	_, err := Read(link)
	wantRefused(t, err, link, "mode 0644", "chmod 600")
}

func TestOwner(t *testing.T) {
	path := write(t, filepath.Join(t.TempDir(), "secret"), "s", 0o600)
	if _, err := Read(path); err != nil {
		t.Fatalf("a file of our own: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("changing a file's owner needs root")
	}
	// Owned by root: allowed whoever we are. Owned by another user: refused, since that user
	// can read it, or chmod it and replace it.
	if err := os.Chown(path, 4321, 4321); err != nil {
		t.Fatal(err)
	}
	_, err := Read(path)
	wantRefused(t, err, path, "owned by uid 4321", "chown root "+path)
	if _, err := ReadAs(path, Public); err == nil {
		t.Error("a CA file owned by another user was accepted")
	}
	if _, err := ReadAs(path, Any); err != nil {
		t.Errorf("rule Any refused a file of another user: %v", err)
	}
}

func TestNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	_, err := Read(dir)
	wantRefused(t, err, dir, "not a regular file", "regular file")
	// A FIFO must be refused, not waited on.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Read(fifo)
	wantRefused(t, err, fifo, "not a regular file", "regular file")
	if _, err := Read(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
}

func TestTooLarge(t *testing.T) {
	path := write(t, filepath.Join(t.TempDir(), "big"), strings.Repeat("x", MaxSize+1), 0o600)
	_, err := Read(path)
	wantRefused(t, err, path, "larger than", "right file")
}

// JudgeOpen applies the same rule to a file already open, without reading it.
func TestJudgeOpen(t *testing.T) {
	dir := t.TempDir()
	path := write(t, filepath.Join(dir, "f.lock"), "", 0o600)
	open := func(p string) *os.File {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	if err := JudgeOpen(open(path), path, Secret); err != nil {
		t.Fatalf("a 0600 file of our own: %v", err)
	}
	os.Chmod(path, 0o644)
	wantRefused(t, JudgeOpen(open(path), path, Secret), path, "mode 0644", "chmod 600")
	wantRefused(t, JudgeOpen(open(dir), dir, Secret), dir, "not a regular file", "regular file")
	if os.Geteuid() == 0 {
		os.Chmod(path, 0o600)
		os.Chown(path, 4321, 4321)
		wantRefused(t, JudgeOpen(open(path), path, Secret), path, "owned by uid 4321", "chown root "+path)
	}
}

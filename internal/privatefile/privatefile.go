// Package privatefile reads the files that hold secrets (the localaes key file, Vault
// credentials) under one rule, the same for the plugin that serves and for doctor that judges.
//
// The file is opened once and the open file is judged (fstat on the descriptor, never a
// separate stat of the path): it must be a regular file owned by root or by the process's own
// user, and a secret must not be readable or writable by group or others. A symlink is
// followed and the file it resolves to is judged: Kubernetes Secret and ConfigMap volumes
// mount files as links into ..data/.
//
// Write is the one way such files (and others that must not be left half written) are
// written: owner-only, atomically and durably.
package privatefile

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// MaxSize bounds what is read: secrets are small, and a huge or endless file is a mistake.
const MaxSize = 1 << 20

// Rule is what a file's mode and owner must allow.
type Rule int

const (
	// Secret: readable and writable by its owner only (chmod 600), owned by root or us.
	Secret Rule = iota
	// Public: others may read it but not write it (a CA bundle, a certificate: whoever can
	// replace a CA can impersonate the server), owned by root or us. A file that holds a
	// private key is a Secret.
	Public
	// Any: a regular file, whatever its mode and owner. For a projected service-account
	// token, which kubelet usually mounts readable by all; doctor warns about it.
	Any
)

// Error is a file that breaks the rule: what is wrong and the command that fixes it.
type Error struct {
	Path    string
	Problem string // "has mode 0644: group or others can read or change it"
	Fix     string // "chmod 600 /etc/kubernetes/kms/keys.yaml"
	// Permissions is true when only the mode or the owner is wrong: the file was read.
	Permissions bool
}

func (e *Error) Error() string { return e.Path + " " + e.Problem + " (" + e.Fix + ")" }

// Read reads a Secret file: see the package comment.
func Read(path string) ([]byte, error) { return ReadAs(path, Secret) }

// ReadAs reads path and judges it by rule. A file that breaks the rule returns an *Error and
// no content.
func ReadAs(path string, rule Rule) ([]byte, error) {
	b, _, err := Judge(path, rule)
	if err != nil {
		clear(b)
		return nil, err
	}
	return b, nil
}

// Judge reads path and judges it by rule, returning its content and the open file's status.
// A file that can be read but whose mode or owner breaks the rule returns both with the
// *Error (Permissions set), so that a caller may warn instead of refusing (doctor, for a
// projected service-account token); any other error returns neither.
func Judge(path string, rule Rule) ([]byte, fs.FileInfo, error) {
	// O_NONBLOCK: opening a FIFO must not hang; a regular file ignores it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	info, err := f.Stat() // fstat of the descriptor: the file we read is the file we judge
	if err != nil {
		return nil, nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, nil, notRegular(path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		clear(b)
		return nil, nil, err
	}
	if len(b) > MaxSize {
		clear(b)
		return nil, nil, &Error{Path: path, Problem: fmt.Sprintf("is larger than %d bytes: not a credential or key file", MaxSize), Fix: "name the right file"}
	}
	if rule == Public && HoldsPrivateKey(b) {
		rule = Secret
	}
	return b, info, check(path, info, rule)
}

// JudgeOpen judges a file that is already open, by rule, through its descriptor (fstat) and
// without reading it: for a file opened for another use than its content, such as a lock file.
// path names it in the *Error.
func JudgeOpen(f *os.File, path string, rule Rule) error {
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return notRegular(path)
	}
	return check(path, info, rule)
}

func notRegular(path string) error {
	return &Error{Path: path, Problem: "is not a regular file", Fix: "name a regular file"}
}

// HoldsPrivateKey reports whether b holds a PEM private key.
func HoldsPrivateKey(b []byte) bool { return bytes.Contains(b, []byte("PRIVATE KEY-----")) }

// JudgeInfo judges a file or directory already looked at (info from fstat or stat) by rule, for
// a caller that does not read it: a socket's directory is held to Public (owned by root or us,
// writable by no one else). A directory's mode is judged like a file's.
func JudgeInfo(path string, info fs.FileInfo, rule Rule) error { return check(path, info, rule) }

func check(path string, info fs.FileInfo, rule Rule) error {
	if rule == Any {
		return nil
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		// The owners allowed: root and the process's effective user.
		self := uint32(os.Geteuid())
		if st.Uid != 0 && st.Uid != self {
			owner := "root"
			if self != 0 {
				owner = fmt.Sprint(self)
			}
			return &Error{Path: path, Permissions: true,
				Problem: fmt.Sprintf("is owned by uid %d: only root or this process's user (uid %d) may own it, since its owner can read or replace it", st.Uid, self),
				Fix:     fmt.Sprintf("chown %s %s", owner, path)}
		}
	}
	perm := info.Mode().Perm()
	switch {
	case rule == Secret && perm&0o077 != 0:
		return &Error{Path: path, Permissions: true,
			Problem: fmt.Sprintf("has mode %04o: group or others can read or change a secret", perm),
			Fix:     "chmod 600 " + path}
	case perm&0o022 != 0 && info.IsDir():
		return &Error{Path: path, Permissions: true,
			Problem: fmt.Sprintf("has mode %04o: group or others may write in it, and could swap what it holds for a link", perm),
			Fix:     "chmod go-w " + path}
	case perm&0o022 != 0:
		return &Error{Path: path, Permissions: true,
			Problem: fmt.Sprintf("has mode %04o: group or others can replace it", perm),
			Fix:     "chmod go-w " + path}
	}
	return nil
}

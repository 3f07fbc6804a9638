package localaes

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/internal/privatefile"
)

// KeySize is the size of every local KEK: AES-256.
const KeySize = 32

// File is the key file's schema, shaped like the apiserver's own provider keys (docs/localaes.md).
type File struct {
	Keys []FileKey `json:"keys"`
}

// FileKey is one named key; Secret is its base64 encoding.
type FileKey struct {
	Name   string `json:"name"`
	Secret string `json:"secret"`
}

// validName keeps names short and free of ':' so that key ids parse unambiguously.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// key is one loaded KEK.
type key struct {
	name string
	id   string
	aead cipher.AEAD // AES-256-GCM under the key; safe for concurrent use
}

// keySet is one loaded key file: keys[0] wraps, every key unwraps.
type keySet struct {
	keys []*key
	byID map[string]*key
}

// readKeyFile loads and checks a key file, naming the first problem it finds. The file is
// opened once and the open file checked (internal/privatefile): mode 0600 or stricter, owned
// by root or the plugin's own user; a symlink is followed.
func readKeyFile(path string) (*keySet, error) {
	raw, err := privatefile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer clear(raw) // one copy fewer of the secrets in memory
	_, set, err := parseKeyFile(path, raw)
	return set, err
}

func parseKeyFile(path string, raw []byte) (File, *keySet, error) {
	var f File
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		return File{}, nil, fmt.Errorf("key file %s: %w", path, err)
	}
	set, err := newKeySet(f)
	if err != nil {
		return File{}, nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return f, set, nil
}

func newKeySet(f File) (*keySet, error) {
	if len(f.Keys) == 0 {
		return nil, errors.New("no keys: the file needs a 'keys' list with at least one {name, secret}")
	}
	set := &keySet{byID: make(map[string]*key, len(f.Keys))}
	names := make(map[string]bool, len(f.Keys))
	fingerprints := make(map[string]string, len(f.Keys)) // fingerprint -> name
	for i, fk := range f.Keys {
		if !validName.MatchString(fk.Name) {
			return nil, fmt.Errorf("keys[%d]: name %q must be 1 to 64 letters, digits, '.', '_' or '-'", i, fk.Name)
		}
		if names[fk.Name] {
			return nil, fmt.Errorf("keys[%d]: duplicate name %q", i, fk.Name)
		}
		names[fk.Name] = true
		secret, err := base64.StdEncoding.DecodeString(fk.Secret)
		if err != nil {
			return nil, fmt.Errorf("keys[%d] (%s): secret is not valid base64", i, fk.Name)
		}
		if len(secret) != KeySize {
			return nil, fmt.Errorf("keys[%d] (%s): secret is %d bytes, must be %d (AES-256)", i, fk.Name, len(secret), KeySize)
		}
		if isZero(secret) {
			return nil, fmt.Errorf("keys[%d] (%s): secret is all zeros", i, fk.Name)
		}
		block, err := aes.NewCipher(secret)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		fp := fingerprint(secret)
		clear(secret)
		if where, published := publishedKeys[fp]; published {
			return nil, fmt.Errorf("keys[%d] (%s): this secret is published in kms-plugin's examples (%s), so anyone can read it; generate a key with 'kmsctl keygen'", i, fk.Name, where)
		}
		if prev, dup := fingerprints[fp]; dup {
			return nil, fmt.Errorf("keys[%d] (%s): same secret as %s", i, fk.Name, prev)
		}
		fingerprints[fp] = fk.Name
		k := &key{name: fk.Name, id: "localaes:" + fk.Name + ":" + fp, aead: aead}
		set.keys = append(set.keys, k)
		set.byID[k.id] = k
	}
	return set, nil
}

// fingerprint names a key in its id, "localaes:<name>:<fingerprint>": the first 16 hex digits
// of a domain-separated HMAC keyed by the key, so the id reveals nothing usable about the
// key, not even a hash to look up.
func fingerprint(secret []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("kms-plugin/localaes/key-fingerprint/v1"))
	return hex.EncodeToString(mac.Sum(nil))[:16]
}

func isZero(b []byte) bool {
	var acc byte
	for _, c := range b {
		acc |= c
	}
	return acc == 0
}

// DefaultLockWait bounds how long a change to a key file waits for the key file's lock while
// another writer holds it (Editor.Wait).
const DefaultLockWait = time.Minute

// Editor changes key files (AddKey, CreateKeyFile, RemoveKey) under the key file's lock,
// waiting a bounded time for it while another writer — a kmsctl keygen, a plugin creating the
// default file — holds it. The zero Editor waits DefaultLockWait and says nothing while it
// waits; the package's functions of the same names use it.
type Editor struct {
	// Wait bounds the wait for the lock: past it the change fails, naming the lock and who
	// holds it. DefaultLockWait if zero.
	Wait time.Duration
	// Waiting, if set, is told once, when the lock is found held, what is waited for: the lock
	// file, its holder (the process, when /proc/locks names it) and the bound.
	Waiting func(msg string)
	// Clock times the wait; the system clock if nil.
	Clock clock.Clock
}

// AddKey is Editor{}.AddKey.
func AddKey(path, name string, asWriteKey bool) (string, error) {
	return Editor{}.AddKey(path, name, asWriteKey)
}

// CreateKeyFile is Editor{}.CreateKeyFile.
func CreateKeyFile(path string) (id string, created bool, err error) {
	return Editor{}.CreateKeyFile(path)
}

// RemoveKey is Editor{}.RemoveKey.
func RemoveKey(path, name string, inUse func(id string) error) (string, error) {
	return Editor{}.RemoveKey(path, name, inUse)
}

// AddKey adds a freshly generated key to the key file at path, creating the file (mode 0600)
// if it does not exist. The new key is the write key when asWriteKey is true (or the file is
// new), otherwise a decrypt-only key at the end of the list. It returns the new key's id.
// Concurrent calls, in one process or several, each add their key: see update.
func (e Editor) AddKey(path, name string, asWriteKey bool) (string, error) {
	var id string
	err := e.update(path, func(f *File, _ bool) (bool, error) {
		var err error
		id, err = addKey(f, name, asWriteKey)
		return true, err
	})
	return id, err
}

// CreateKeyFile creates the key file at path with one new key, unless the file exists. It
// reports whether it created the file and, if so, the new key's id. Plugins starting at once
// on one path end with one file: one of them creates it, the others find it; each then loads
// what the file holds.
func (e Editor) CreateKeyFile(path string) (id string, created bool, err error) {
	err = e.update(path, func(f *File, exists bool) (bool, error) {
		if exists {
			return false, nil
		}
		var err error
		id, err = addKey(f, "", true)
		created = err == nil
		return true, err
	})
	return id, created, err
}

func addKey(f *File, name string, asWriteKey bool) (string, error) {
	secret := make([]byte, KeySize)
	defer clear(secret)
	if _, err := rand.Read(secret); err != nil {
		return "", err
	}
	if name == "" {
		name = fmt.Sprintf("key%d", len(f.Keys)+1)
		for taken(*f, name) {
			name += "x"
		}
	}
	nk := FileKey{Name: name, Secret: base64.StdEncoding.EncodeToString(secret)}
	if asWriteKey {
		f.Keys = append([]FileKey{nk}, f.Keys...)
	} else {
		f.Keys = append(f.Keys, nk)
	}
	return "localaes:" + name + ":" + fingerprint(secret), nil
}

// update is the one read-modify-write of a key file. It holds an exclusive lock (flock of
// "<path>.lock", beside the file) across the read, the edit and the replace, so concurrent
// writers — kmsctl keygen runs, plugins creating the default file — never lose each other's
// keys. A missing file is created exclusively (it appears whole, and never over a file that
// appeared meanwhile: then it is read again and edited). The new content reaches the disk
// before the rename, and the rename before update returns. edit gets the file's keys and
// whether the file exists, and reports whether to write.
func (e Editor) update(path string, edit func(f *File, exists bool) (bool, error)) error {
	// A symlinked key file is edited where the link points; the link stays.
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	unlock, err := e.lock(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	for attempt := 0; ; attempt++ {
		var f File
		raw, err := privatefile.Read(path)
		exists := err == nil
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("key file: %w", err)
		default:
			f, _, err = parseKeyFile(path, raw)
			clear(raw)
			if err != nil {
				return err
			}
		}
		write, err := edit(&f, exists)
		if err != nil || !write {
			return err
		}
		if _, err := newKeySet(f); err != nil {
			return err
		}
		out, err := yaml.Marshal(f)
		if err != nil {
			return err
		}
		err = privatefile.Write(path, out, exists)
		clear(out)
		if errors.Is(err, fs.ErrExist) && attempt < 3 {
			continue // created meanwhile by a writer that does not lock: edit what it wrote
		}
		if err != nil {
			return fmt.Errorf("key file %s: %w", path, err)
		}
		return nil
	}
}

// lock takes an exclusive flock of the lock file at path, creating it (mode 0600). The lock
// file is judged like the key file (internal/privatefile: a regular file, owned by root or
// us, mode 0600 or stricter, through the open descriptor), and must not be a symlink: whoever
// can replace it can hold a lock no keygen sees, or point it elsewhere. While another writer
// holds the lock, lock tries again every lockPoll until e.Wait has passed, then fails. The
// lock file is never removed: a writer that removed it could let a later writer lock a new
// file while another still holds the old one.
func (e Editor) lock(path string) (unlock func(), err error) {
	// O_NONBLOCK: a FIFO put in its place must not hang the open; a regular file ignores it.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		err = &privatefile.Error{Path: path, Problem: "is a symlink: the lock must be a file of its own beside the key file", Fix: "rm " + path}
	}
	if err != nil {
		return nil, fmt.Errorf("key file lock: %w", err)
	}
	if err := privatefile.JudgeOpen(f, path, privatefile.Secret); err != nil {
		f.Close()
		return nil, fmt.Errorf("key file lock: %w", err)
	}
	clk, wait := e.Clock, e.Wait
	if clk == nil {
		clk = clock.Real{}
	}
	if wait <= 0 {
		wait = DefaultLockWait
	}
	err = flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		return func() { f.Close() }, nil // closing the last descriptor releases the lock
	}
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, fmt.Errorf("key file lock %s: %w", path, err)
	}
	if e.Waiting != nil {
		e.Waiting(fmt.Sprintf("waiting for the lock on %s, held by %s; giving up after %s", path, lockHolder(f), wait))
	}
	// A blocking flock, in the kernel's queue with the other waiters, bounded by the clock.
	got := make(chan error, 1)
	go func() { got <- flock(f, syscall.LOCK_EX) }()
	select {
	case err = <-got:
	case <-clk.After(wait):
		select {
		case err = <-got: // taken just now
		default:
			holder := lockHolder(f)
			// The flock returns when the holder lets go: release the lock at once.
			go func() { <-got; f.Close() }()
			return nil, fmt.Errorf("key file lock %s: still held by %s after %s; try again once it is done (keygen --remove holds it while it scans etcd)", path, holder, wait)
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("key file lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// lockHolder names who holds the flock of the open file f, as /proc/locks tells (the process
// that took it, by pid and command name), or says what usually holds it.
func lockHolder(f *os.File) string {
	const usual = "another writer (a kmsctl keygen, or a plugin creating the key file)"
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return usual
	}
	dev := uint64(st.Dev)
	major := (dev>>8)&0xfff | (dev>>32)&^0xfff
	minor := dev&0xff | (dev>>12)&^0xff
	file := fmt.Sprintf("%02x:%02x:%d", major, minor, st.Ino)
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		return usual
	}
	// "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; waiters' lines have "->" after the number.
	for _, line := range strings.Split(string(locks), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != file {
			continue
		}
		pid, err := strconv.Atoi(fields[4])
		if err != nil || pid <= 0 {
			break
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if name := strings.TrimSpace(string(comm)); name != "" {
			return fmt.Sprintf("pid %d (%s), %s", pid, name, "another kmsctl keygen or a plugin creating the key file")
		}
		return fmt.Sprintf("pid %d, %s", pid, "another kmsctl keygen or a plugin creating the key file")
	}
	return usual
}

func taken(f File, name string) bool {
	for _, k := range f.Keys {
		if k.Name == name {
			return true
		}
	}
	return false
}

// RemoveKey removes the key named name from the key file at path and returns its id. The
// write key (the first) cannot be removed: make another key the write key first. Before the
// file is changed, inUse is called with the key's id (under the file's lock); an error from
// it keeps the key. Plugins keep serving the removed key until they reload the file (SIGHUP).
func (e Editor) RemoveKey(path, name string, inUse func(id string) error) (string, error) {
	var id string
	err := e.update(path, func(f *File, exists bool) (bool, error) {
		if !exists {
			return false, fmt.Errorf("key file %s does not exist", path)
		}
		set, err := newKeySet(*f)
		if err != nil {
			return false, err
		}
		for i, k := range set.keys {
			if k.name != name {
				continue
			}
			if i == 0 {
				return false, fmt.Errorf("%s is the write key of %s: make another key the write key first (kmsctl keygen --write), rewrite, then remove it", name, path)
			}
			id = k.id
			if err := inUse(id); err != nil {
				return false, err
			}
			f.Keys = append(f.Keys[:i], f.Keys[i+1:]...)
			return true, nil
		}
		return false, fmt.Errorf("no key named %q in %s", name, path)
	})
	return id, err
}

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
	"os"
	"path/filepath"
	"regexp"

	"sigs.k8s.io/yaml"
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

// readKeyFile loads and checks a key file, naming the first problem it finds.
func readKeyFile(path string) (*keySet, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o: it must not be readable or writable by group or others (chmod 600)", path, perm)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer clear(raw) // one copy fewer of the secrets in memory
	var f File
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	set, err := newKeySet(f)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return set, nil
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

// AddKey adds a freshly generated key to the key file at path, creating the file (mode 0600)
// if it does not exist. The new key is the write key when asWriteKey is true (or the file is
// new), otherwise a decrypt-only key at the end of the list. It returns the new key's id.
func AddKey(path, name string, asWriteKey bool) (string, error) {
	var f File
	switch raw, err := os.ReadFile(path); {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return "", fmt.Errorf("key file: %w", err)
	default:
		if _, err := readKeyFile(path); err != nil {
			return "", err
		}
		if err := yaml.Unmarshal(raw, &f); err != nil {
			return "", fmt.Errorf("key file %s: %w", path, err)
		}
	}
	secret := make([]byte, KeySize)
	if _, err := rand.Read(secret); err != nil {
		return "", err
	}
	if name == "" {
		name = fmt.Sprintf("key%d", len(f.Keys)+1)
		for taken(f, name) {
			name += "x"
		}
	}
	nk := FileKey{Name: name, Secret: base64.StdEncoding.EncodeToString(secret)}
	if asWriteKey {
		f.Keys = append([]FileKey{nk}, f.Keys...)
	} else {
		f.Keys = append(f.Keys, nk)
	}
	if _, err := newKeySet(f); err != nil {
		return "", err
	}
	out, err := yaml.Marshal(f)
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(path, out); err != nil {
		return "", err
	}
	return "localaes:" + name + ":" + fingerprint(secret), nil
}

func taken(f File, name string) bool {
	for _, k := range f.Keys {
		if k.Name == name {
			return true
		}
	}
	return false
}

// writeFileAtomic replaces path with data (mode 0600) so a reader sees the old or the new
// file, never half of one.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".keys-*.tmp")
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
	return os.Rename(tmp.Name(), path)
}

package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

// KeyPath is the path of transit key name on mount: "<mount>/keys/<name>".
func KeyPath(mount, name string) string { return mount + "/keys/" + name }

func (k *KEK) keyPath() string { return KeyPath(k.cfg.Mount, k.cfg.Key) }

// ReadKey reads transit key name on mount with client, once. A failed request is vault/api's
// error as it is (the backend retries and classifies it); a key that does not exist, or a
// mount that is not there, is (nil, nil).
func ReadKey(ctx context.Context, client *api.Client, mount, name string) (*api.Secret, error) {
	secret, err := client.Logical().ReadWithContext(ctx, KeyPath(mount, name))
	if err != nil || secret == nil || secret.Data == nil {
		return nil, err
	}
	return secret, nil
}

func (k *KEK) readKey(ctx context.Context) (*api.Secret, error) {
	var secret *api.Secret
	err := k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		secret, err = ReadKey(ctx, k.client, k.cfg.Mount, k.cfg.Key)
		return err
	})
	if err != nil {
		return nil, classify("reading "+k.keyPath(), err)
	}
	if secret == nil {
		return nil, fmt.Errorf("%w: transit key %q not found on mount %q", dek.ErrUnknownKey, k.cfg.Key, k.cfg.Mount)
	}
	return secret, nil
}

// Key is a transit key as a read of it (ReadKey) describes it: what the backend needs, and
// the settings doctor judges.
type Key struct {
	Type                 string // aes256-gcm96, ...
	SupportsEncryption   bool
	Derived              bool // every request would need a context
	ConvergentEncryption bool
	Exportable           bool // its material can be exported
	AllowPlaintextBackup bool
	DeletionAllowed      bool
	LatestVersion        int
	MinDecryptionVersion int
	// Created is the creation time (Unix seconds) of every version listed: those that can
	// still decrypt.
	Created map[int]int64
}

// ParseKey reads a transit key from what ReadKey returned. It fails only on an answer it
// cannot read (a version or creation time that is not one); whether the key can serve is the
// caller's to judge. On error the Key still holds the fields read before the failing one (the
// settings, then latest_version, min_decryption_version and the versions, in that order).
func ParseKey(secret *api.Secret) (Key, error) {
	if secret == nil || secret.Data == nil {
		return Key{}, errors.New("no transit key in the answer")
	}
	d := secret.Data
	key := Key{}
	key.Type, _ = d["type"].(string)
	key.SupportsEncryption, _ = d["supports_encryption"].(bool)
	key.Derived, _ = d["derived"].(bool)
	key.ConvergentEncryption, _ = d["convergent_encryption"].(bool)
	key.Exportable, _ = d["exportable"].(bool)
	key.AllowPlaintextBackup, _ = d["allow_plaintext_backup"].(bool)
	key.DeletionAllowed, _ = d["deletion_allowed"].(bool)
	var err error
	key.LatestVersion, err = intField(d["latest_version"])
	if err != nil || key.LatestVersion < 1 {
		return key, fmt.Errorf("latest_version %v: %v", d["latest_version"], err)
	}
	if key.MinDecryptionVersion, err = intField(d["min_decryption_version"]); err != nil {
		return key, fmt.Errorf("min_decryption_version %v: %v", d["min_decryption_version"], err)
	}
	keys, _ := d["keys"].(map[string]any)
	key.Created = make(map[int]int64, len(keys))
	for v, raw := range keys {
		n, err := strconv.Atoi(v)
		if err != nil {
			return key, fmt.Errorf("version %q: %v", v, err)
		}
		if key.Created[n], err = creationTime(raw); err != nil {
			return key, fmt.Errorf("version %d: creation time: %v", n, err)
		}
	}
	return key, nil
}

// KeyID is the key id (format 2) that names version v of the key: what the backend reports by
// Status once it has adopted v. False when v is not listed (retired below
// min_decryption_version, or never created).
func (k Key) KeyID(v int) (string, bool) {
	created, ok := k.Created[v]
	if !ok {
		return "", false
	}
	return KeyVersion{lineage: lineage(created), version: v}.String(), true
}

// AEADTypes are the transit key types whose ciphertexts authenticate associated data: the
// backend binds the key id into every DEK it wraps with them (see bound).
var AEADTypes = []string{"aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"}

// keyState is what a check learned of the key.
type keyState struct {
	latest     KeyVersion
	aead       bool // the key type takes associated_data (AEADTypes)
	minDecrypt int
	created    map[int]int64 // creation time of every version still able to decrypt
	// legacyOf is the format-1 lineage (keyid.go) of a version created at created, in the
	// cluster, namespace, mount and name the key was read from; nil when unknown.
	legacyOf func(created int64) string
}

// ours reports whether keyVer's lineage is one that its version of this key gives: format 2,
// or format 1 as this cluster, namespace, mount and key name give it.
func (st *keyState) ours(keyVer KeyVersion) bool {
	created, listed := st.created[keyVer.version]
	if !listed {
		return false
	}
	return lineage(created) == keyVer.lineage || (st.legacyOf != nil && st.legacyOf(created) == keyVer.lineage)
}

// bound reports whether a DEK wrapped under keyVer carries its key id as Transit's
// associated_data: Wrap binds every key id of format 2 that way when the key type allows it, so
// a DEK unwraps only under the key id it was wrapped under, wherever the key has been restored
// to. Key ids of format 1 (and lineages that are not format 2 of the version they name, which
// can only be format 1 or another key's) were never bound.
func (st *keyState) bound(keyVer KeyVersion) bool {
	created, listed := st.created[keyVer.version]
	return st.aead && listed && lineage(created) == keyVer.lineage
}

// parseKey reads a key's versions, refusing keys this backend cannot use.
func (k *KEK) parseKey(clusterID string, secret *api.Secret) (*keyState, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("transit key %s: "+format, append([]any{k.keyPath()}, args...)...)
	}
	key, err := ParseKey(secret)
	switch {
	case !key.SupportsEncryption:
		return nil, bad("type %v cannot encrypt", secret.Data["type"])
	case key.Derived:
		return nil, bad("derived keys (which need a context per request) are not supported")
	case err != nil:
		return nil, bad("%w", err)
	}
	st := &keyState{minDecrypt: key.MinDecryptionVersion, created: key.Created, aead: slices.Contains(AEADTypes, key.Type),
		legacyOf: func(created int64) string {
			return legacyLineage(clusterID, k.cfg.Namespace, k.cfg.Mount, k.cfg.Key, created)
		}}
	created, ok := st.created[key.LatestVersion]
	if !ok {
		return nil, bad("latest version %d is not listed", key.LatestVersion)
	}
	st.latest = KeyVersion{lineage: lineage(created), version: key.LatestVersion}
	return st, nil
}

// creationTime reads a version's creation time: Unix seconds for symmetric keys, an object
// with an RFC 3339 creation_time for asymmetric ones.
func creationTime(v any) (int64, error) {
	switch v := v.(type) {
	case json.Number:
		return v.Int64()
	case map[string]any:
		s, _ := v["creation_time"].(string)
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return 0, err
		}
		return t.Unix(), nil
	case nil:
		return 0, errors.New("version 1 not listed")
	}
	return 0, fmt.Errorf("unexpected %T", v)
}

func intField(v any) (int, error) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("not a number: %T", v)
	}
	i, err := strconv.Atoi(n.String())
	return i, err
}

// wrappable parses keyID and checks that it names a version of this transit key that can still
// decrypt, as last seen, in the current format: its lineage must be the one that version's
// creation time gives. Wrap requires it, so that an envelope's key id always names the key
// material that wrapped its DEK. It returns the view of the key it judged by.
func (k *KEK) wrappable(keyID string) (KeyVersion, *keyState, error) {
	keyVer, st, err := k.decryptable(keyID)
	if err != nil {
		return keyVer, nil, err
	}
	if created, listed := st.created[keyVer.version]; !listed || lineage(created) != keyVer.lineage {
		return keyVer, nil, fmt.Errorf("%w: key id %s names another transit key than %s (deleted and recreated, or another key)",
			dek.ErrUnknownKey, keyID, k.keyPath())
	}
	return keyVer, st, nil
}

// decryptable parses keyID and refuses it only for what the last view of the key says for sure
// about its version: retired, or newer than any seen. Its lineage is not judged: Unwrap asks
// Vault to decrypt under the version it names whatever the lineage, because a key restored into
// another cluster, mount or name, and every key id of format 1, carry lineages this key's view
// may not give; the key material decides (Vault authenticates the ciphertext).
func (k *KEK) decryptable(keyID string) (KeyVersion, *keyState, error) {
	keyVer, err := ParseKeyID(keyID)
	if err != nil {
		return keyVer, nil, err
	}
	st, err := k.versionDecryptable(keyID, keyVer.version)
	return keyVer, st, err
}

// versionDecryptable refuses version of the key only for what the last view of the key says
// for sure: retired, or newer than any seen. It returns that view.
func (k *KEK) versionDecryptable(keyID string, version int) (*keyState, error) {
	keyVer := KeyVersion{version: version}
	k.mu.RLock()
	st := k.observed
	k.mu.RUnlock()
	if st == nil {
		return nil, fmt.Errorf("%w: vault transit key %s not read yet", dek.ErrUnavailable, k.keyPath())
	}
	_, listed := st.created[keyVer.version]
	switch {
	case keyVer.version < st.minDecrypt:
		// Public: it names only the request's key id and the fix, which the operator needs.
		return nil, dek.Public(fmt.Errorf("%w: key id %s: version %d is below the transit key's min_decryption_version %d (retired by the operator)",
			dek.ErrUnknownKey, keyID, keyVer.version, st.minDecrypt))
	case !listed && keyVer.version > st.latest.version:
		// Another plugin instance may have adopted a rotation this one has not seen yet.
		return nil, dek.Public(fmt.Errorf("%w: key id %s: version %d is newer than the latest this plugin has seen (%d); retry after its next check",
			dek.ErrUnavailable, keyID, keyVer.version, st.latest.version))
	}
	return st, nil
}

// Usable reports, from memory, whether keyID names a version of this transit key that Vault
// still lets decrypt as last seen: serve's DEK cache drops what it refuses. A key id whose
// lineage this key's view does not give (format 1 of another cluster, mount or name: a key
// restored here) is usable while the version that last unwrapped under it keeps the creation
// time it had then; a deleted and recreated key's versions do not.
func (k *KEK) Usable(keyID string) error {
	if v, ok := dek.VaultKMSVersion(keyID); ok {
		return k.usableForeign(keyID, v)
	}
	keyVer, st, err := k.decryptable(keyID)
	if err != nil || st.ours(keyVer) {
		return err
	}
	created, listed := st.created[keyVer.version]
	k.mu.RLock()
	at, seen := k.foreign[keyID]
	k.mu.RUnlock()
	if listed && seen && at == created {
		return nil
	}
	return fmt.Errorf("%w: key id %s names no version of transit key %s that unwrapped under it", dek.ErrUnknownKey, keyID, k.keyPath())
}

// maxForeign bounds the key ids of other lineages that Usable remembers.
const maxForeign = 1024

// unwrappedForeign records that Vault unwrapped under keyID, which names no version of this
// key, with the version created at created.
func (k *KEK) unwrappedForeign(keyID string, created int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.foreign[keyID]; ok || len(k.foreign) < maxForeign {
		if k.foreign == nil {
			k.foreign = map[string]int64{}
		}
		k.foreign[keyID] = created
	}
}

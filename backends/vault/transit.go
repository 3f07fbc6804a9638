package vault

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

// Wrap encrypts dek with the key version that keyID names, so the envelope's key id is the
// version that really wrapped it even if the key rotates meanwhile. The wrapped DEK is the raw
// transit ciphertext without its "vault:vN:" prefix and base64, which the key id restores.
// With an AEAD key type the key id is the ciphertext's associated data (keyState.bound).
func (k *KEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	keyVer, st, err := k.wrappable(keyID)
	if err != nil {
		return nil, err
	}
	path := k.cfg.Mount + "/encrypt/" + k.cfg.Key
	body := map[string]any{
		"plaintext":   base64.StdEncoding.EncodeToString(plain),
		"key_version": keyVer.version,
	}
	if st.bound(keyVer) {
		body["associated_data"] = base64.StdEncoding.EncodeToString([]byte(keyID))
	}
	var secret *api.Secret
	err = k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		secret, err = k.client.Logical().WriteWithContext(ctx, path, body)
		return err
	})
	if err != nil {
		return nil, k.requestFailed("encrypt with "+path, err)
	}
	if secret == nil {
		return nil, k.notFound("encrypt with " + path)
	}
	ct, _ := secretString(secret, "ciphertext")
	prefix := transitPrefix(keyVer.version)
	b64, ok := strings.CutPrefix(ct, prefix)
	if !ok {
		return nil, fmt.Errorf("encrypt with %s: vault returned no ciphertext of version %d", path, keyVer.version)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) == 0 {
		return nil, fmt.Errorf("encrypt with %s: vault returned an undecodable ciphertext", path)
	}
	return raw, nil
}

// Unwrap decrypts a DEK that Wrap wrapped under keyID: it asks Vault to decrypt under the
// version keyID names, whichever lineage it carries (see decryptable), so that data outlives
// the Vault cluster, mount and key name that wrapped it. Vault's AEAD decides: key material
// other than the one that wrapped the DEK, or (for a bound key id) another key id than the one
// it was wrapped under, fails to authenticate it, which is ErrTampered when keyID names this
// key's version (the data was changed) and ErrUnknownKey when it does not (the DEK was wrapped
// by another key: deleted and recreated, or not restored here).
func (k *KEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	if v, ok := dek.VaultKMSVersion(keyID); ok {
		return k.unwrapForeign(ctx, keyID, v, wrapped)
	}
	keyVer, st, err := k.decryptable(keyID)
	if err != nil {
		return nil, err
	}
	if len(wrapped) == 0 {
		return nil, fmt.Errorf("%w: empty wrapped DEK", dek.ErrMalformed)
	}
	ad := ""
	if st.bound(keyVer) {
		ad = base64.StdEncoding.EncodeToString([]byte(keyID))
	}
	plain, err := k.decrypts.decrypt(ctx, transitPrefix(keyVer.version)+base64.StdEncoding.EncodeToString(wrapped), ad)
	if errors.Is(err, dek.ErrTampered) && !st.ours(keyVer) {
		return nil, fmt.Errorf("%w: key id %s names no version of transit key %s, and vault could not authenticate the wrapped DEK with its version %d: it was wrapped by another key (deleted and recreated, or not restored into this Vault), or tampered with (%v)",
			dek.ErrUnknownKey, keyID, k.keyPath(), keyVer.version, err)
	}
	if err == nil && !st.ours(keyVer) {
		if created, listed := st.created[keyVer.version]; listed {
			k.unwrappedForeign(keyID, created)
		}
	}
	return plain, err
}

// notFound is vault/api's nil answer to a request it got a 404 for: no such mount.
func (k *KEK) notFound(what string) error {
	return fmt.Errorf("%w: %s: vault has no transit mount at %q", dek.ErrUnknownKey, what, k.cfg.Mount)
}

// requestFailed classifies a failed encrypt or decrypt; a denial makes the next check look at
// the token.
func (k *KEK) requestFailed(what string, err error) error {
	err = classify(what, err)
	if errors.Is(err, dek.ErrDenied) {
		k.tokens.denied.Store(true)
	}
	return err
}

func transitPrefix(version int) string { return "vault:v" + strconv.Itoa(version) + ":" }

func secretString(s *api.Secret, field string) (string, bool) {
	if s == nil || s.Data == nil {
		return "", false
	}
	v, ok := s.Data[field].(string)
	return v, ok
}

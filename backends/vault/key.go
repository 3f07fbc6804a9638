package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

func (k *KEK) keyPath() string { return k.cfg.Mount + "/keys/" + k.cfg.Key }

func (k *KEK) readKey(ctx context.Context) (*api.Secret, error) {
	var secret *api.Secret
	err := k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		secret, err = k.client.Logical().ReadWithContext(ctx, k.keyPath())
		return err
	})
	if err != nil {
		return nil, classify("reading "+k.keyPath(), err)
	}
	if secret == nil || secret.Data == nil {
		return nil, fmt.Errorf("%w: transit key %q not found on mount %q", dek.ErrUnknownKey, k.cfg.Key, k.cfg.Mount)
	}
	return secret, nil
}

// keyState is what a check learned of the key.
type keyState struct {
	latest     keyVersion
	minDecrypt int
	created    map[int]int64 // creation time of every version still able to decrypt
	lineageOf  func(created int64) string
}

// parseKey reads a key's versions, refusing keys this backend cannot use.
func (k *KEK) parseKey(clusterID string, secret *api.Secret) (*keyState, error) {
	d := secret.Data
	bad := func(format string, args ...any) error {
		return fmt.Errorf("transit key %s: "+format, append([]any{k.keyPath()}, args...)...)
	}
	if enc, _ := d["supports_encryption"].(bool); !enc {
		return nil, bad("type %v cannot encrypt", d["type"])
	}
	if derived, _ := d["derived"].(bool); derived {
		return nil, bad("derived keys (which need a context per request) are not supported")
	}
	latest, err := intField(d["latest_version"])
	if err != nil || latest < 1 {
		return nil, bad("latest_version %v: %v", d["latest_version"], err)
	}
	minDecrypt, err := intField(d["min_decryption_version"])
	if err != nil {
		return nil, bad("min_decryption_version %v: %v", d["min_decryption_version"], err)
	}
	keys, _ := d["keys"].(map[string]any)
	st := &keyState{minDecrypt: minDecrypt, created: make(map[int]int64, len(keys)),
		lineageOf: func(created int64) string {
			return lineage(clusterID, k.cfg.Namespace, k.cfg.Mount, k.cfg.Key, created)
		}}
	for v, raw := range keys {
		n, err := strconv.Atoi(v)
		if err != nil {
			return nil, bad("version %q: %v", v, err)
		}
		if st.created[n], err = creationTime(raw); err != nil {
			return nil, bad("version %d: creation time: %v", n, err)
		}
	}
	created, ok := st.created[latest]
	if !ok {
		return nil, bad("latest version %d is not listed", latest)
	}
	st.latest = keyVersion{lineage: st.lineageOf(created), version: latest}
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

// usable parses keyID and checks that it names a version of this transit key that can still
// decrypt, as last seen: its lineage must be the one that version's creation time gives.
func (k *KEK) usable(keyID string) (keyVersion, error) {
	kv, err := parseKeyID(keyID)
	if err != nil {
		return kv, err
	}
	k.mu.RLock()
	st := k.observed
	k.mu.RUnlock()
	if st == nil {
		return kv, fmt.Errorf("%w: vault transit key %s not read yet", dek.ErrUnavailable, k.keyPath())
	}
	created, listed := st.created[kv.version]
	switch {
	case kv.version < st.minDecrypt:
		return kv, fmt.Errorf("%w: key id %s: version %d is below the transit key's min_decryption_version %d (retired by the operator)",
			dek.ErrUnknownKey, keyID, kv.version, st.minDecrypt)
	case !listed && kv.version > st.latest.version:
		// Another plugin instance may have adopted a rotation this one has not seen yet.
		return kv, fmt.Errorf("%w: key id %s: version %d is newer than the latest this plugin has seen (%d); retry after its next check",
			dek.ErrUnavailable, keyID, kv.version, st.latest.version)
	case !listed || st.lineageOf(created) != kv.lineage:
		return kv, fmt.Errorf("%w: key id %s names another transit key than %s (deleted and recreated, or in another Vault cluster)",
			dek.ErrUnknownKey, keyID, k.keyPath())
	}
	return kv, nil
}

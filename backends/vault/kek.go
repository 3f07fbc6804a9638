// Package vault is the KEK backend that wraps DEKs with a HashiCorp Vault transit key:
// wrap = transit/encrypt/<key> at the version the key id names, unwrap = transit/decrypt/<key>.
//
// Check, which the plugin's Monitor calls in the background, learns Vault's state (sealed,
// unreachable), keeps the token alive and reads the key's latest version; the key id moves
// to a new version once two consecutive checks have seen it.
package vault

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

// KEK is a transit key in Vault, seen as a dek.KEK.
type KEK struct {
	cfg    Config
	client *api.Client // carries the token and namespace
	health *api.Client // sys/health is unauthenticated and lives in the root namespace
	tokens *tokens

	checkMu sync.Mutex // one Check at a time: it owns tokens and the debounce

	mu       sync.RWMutex
	observed *keyState // the key at the last successful check; nil before
	deb      debounce  // the adopted key id
}

var _ dek.KEK = (*KEK)(nil)

// Open builds the backend from cfg. It does not contact Vault: the first Check does, so a
// plugin whose Vault is down still starts, reports why, and recovers when Vault returns.
func Open(cfg Config) (*KEK, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	hc, err := cfg.newHTTPClient()
	if err != nil {
		return nil, err
	}
	client, err := cfg.newAPIClient(hc, cfg.Namespace, "")
	if err != nil {
		return nil, err
	}
	health, err := cfg.newAPIClient(hc, "", "")
	if err != nil {
		return nil, err
	}
	k := &KEK{cfg: cfg, client: client, health: health}
	k.tokens = &tokens{
		auth: cfg.Auth, clk: cfg.Clock, log: cfg.Log, client: client,
		newClient: func(token string) (*api.Client, error) { return cfg.newAPIClient(hc, cfg.Namespace, token) },
	}
	return k, nil
}

// CurrentID is the adopted key id, "" before the first successful Check.
func (k *KEK) CurrentID() string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.deb.adopted.String()
}

// TokenTTL is the time left on the Vault token in use, for metrics; false while there is none
// or it does not expire. It answers from memory.
func (k *KEK) TokenTTL() (time.Duration, bool) { return k.tokens.ttlLeft() }

// Check refreshes Vault's state, the token and the key's latest version. Its error says
// whether Vault is unreachable, sealed, denying access or missing the key.
func (k *KEK) Check(ctx context.Context) error {
	k.checkMu.Lock()
	defer k.checkMu.Unlock()
	state, err := k.check(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.deb.miss()
		return err
	}
	k.observed = state
	seen, before := state.latest, k.deb.adopted
	if before.lineage != "" && before.version < state.minDecrypt {
		// The operator retired the adopted version: data it wraps could not be read back, so
		// waiting for a second check would only make Encrypt fail meanwhile.
		k.deb.adopt(seen)
		k.cfg.Log.Info("vault transit key: adopted version is below min_decryption_version; adopting the latest at once", "old_key_id", before.String(), "key_id", seen.String())
	} else if k.deb.observe(seen) {
		if before.lineage != "" {
			k.cfg.Log.Info("vault transit key: adopted new key id", "old_key_id", before.String(), "key_id", seen.String())
		}
	} else if seen != k.deb.adopted {
		k.cfg.Log.Info("vault transit key: new key id seen; adopting it if the next check agrees", "key_id", k.deb.adopted.String(), "seen", seen.String())
	}
	return nil
}

func (k *KEK) check(ctx context.Context) (*keyState, error) {
	clusterID, err := k.clusterID(ctx)
	if err != nil {
		return nil, err
	}
	if err := k.tokens.ensure(ctx); err != nil {
		return nil, err
	}
	secret, err := k.readKey(ctx)
	if errors.Is(err, dek.ErrDenied) {
		// Denied: a token revoked since the last check, or a policy without read on the key.
		k.tokens.denied.Store(true)
		if verr := k.tokens.ensure(ctx); verr != nil {
			return nil, verr
		}
		secret, err = k.readKey(ctx)
	}
	if err != nil {
		return nil, err
	}
	return k.parseKey(clusterID, secret)
}

// clusterID asks sys/health, which also tells a sealed Vault from an unreachable one.
func (k *KEK) clusterID(ctx context.Context) (string, error) {
	var h *api.HealthResponse
	err := k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		h, err = k.health.Sys().HealthWithContext(ctx)
		return err
	})
	switch {
	case err != nil:
		return "", classify("vault health check at "+k.cfg.Address, err)
	case !h.Initialized:
		return "", fmt.Errorf("%w: vault at %s is not initialized", dek.ErrUnavailable, k.cfg.Address)
	case h.Sealed:
		return "", fmt.Errorf("%w: vault at %s is sealed", dek.ErrUnavailable, k.cfg.Address)
	case h.ClusterID == "":
		return "", fmt.Errorf("%w: vault at %s reports no cluster id", dek.ErrUnavailable, k.cfg.Address)
	}
	return h.ClusterID, nil
}

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

// Wrap encrypts dek with the key version that keyID names, so the envelope's key id is the
// version that really wrapped it even if the key rotates meanwhile. The wrapped DEK is the raw
// transit ciphertext without its "vault:vN:" prefix and base64, which the key id restores.
func (k *KEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	kv, err := k.usable(keyID)
	if err != nil {
		return nil, err
	}
	path := k.cfg.Mount + "/encrypt/" + k.cfg.Key
	var secret *api.Secret
	err = k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		secret, err = k.client.Logical().WriteWithContext(ctx, path, map[string]any{
			"plaintext":   base64.StdEncoding.EncodeToString(plain),
			"key_version": kv.version,
		})
		return err
	})
	if err != nil {
		return nil, k.requestFailed("encrypt with "+path, err)
	}
	if secret == nil {
		return nil, k.notFound("encrypt with " + path)
	}
	ct, _ := secretString(secret, "ciphertext")
	prefix := transitPrefix(kv.version)
	b64, ok := strings.CutPrefix(ct, prefix)
	if !ok {
		return nil, fmt.Errorf("encrypt with %s: vault returned no ciphertext of version %d", path, kv.version)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) == 0 {
		return nil, fmt.Errorf("encrypt with %s: vault returned an undecodable ciphertext", path)
	}
	return raw, nil
}

// Unwrap decrypts a DEK that Wrap wrapped under keyID.
func (k *KEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	kv, err := k.usable(keyID)
	if err != nil {
		return nil, err
	}
	if len(wrapped) == 0 {
		return nil, fmt.Errorf("%w: empty wrapped DEK", dek.ErrMalformed)
	}
	path := k.cfg.Mount + "/decrypt/" + k.cfg.Key
	ct := transitPrefix(kv.version) + base64.StdEncoding.EncodeToString(wrapped)
	var secret *api.Secret
	err = k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		secret, err = k.client.Logical().WriteWithContext(ctx, path, map[string]any{"ciphertext": ct})
		return err
	})
	if err != nil {
		return nil, k.requestFailed("decrypt with "+path, err)
	}
	if secret == nil {
		return nil, k.notFound("decrypt with " + path)
	}
	pt, ok := secretString(secret, "plaintext")
	if !ok {
		return nil, fmt.Errorf("decrypt with %s: vault returned no plaintext", path)
	}
	plain, err := base64.StdEncoding.DecodeString(pt)
	if err != nil {
		return nil, fmt.Errorf("decrypt with %s: vault returned undecodable plaintext", path)
	}
	return plain, nil
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

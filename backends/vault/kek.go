// Package vault is the KEK backend that wraps DEKs with a HashiCorp Vault transit key:
// wrap = transit/encrypt/<key> at the version the key id names, unwrap = transit/decrypt/<key>.
//
// Check, which the plugin's Monitor calls in the background, learns Vault's state (sealed,
// unreachable), keeps the token alive and reads the key's latest version; the key id moves
// to a new version once two consecutive checks have seen it.
package vault

import (
	"context"
	"errors"
	"fmt"
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

// Package vault is the KEK backend that wraps DEKs with a HashiCorp Vault transit key:
// wrap = transit/encrypt/<key> at the version the key id names, unwrap = transit/decrypt/<key>.
//
// Check, which the plugin's Monitor calls in the background, keeps the token alive and reads
// the key's latest version (and, when that fails, learns why: sealed, unreachable); the key
// id moves to a new version once two consecutive checks have seen it, the first key id too (a
// check before any key id is adopted reads the key twice). Several addresses of one
// Vault cluster can be given; requests fail over between them (failover.go).
package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

// Check and proof intervals that suit this backend (the general defaults suit local keys): at
// an idle apiserver the plugin then sends Vault at most 72 requests an hour (a key read per
// check: 60; a capabilities check every DefaultCapabilitiesInterval: 6; a wrap and an unwrap
// per proof: 4; and a token renewal now and then), and a rotation is adopted after two
// checks, within two minutes.
const (
	DefaultCheckInterval = time.Minute
	DefaultProofInterval = 30 * time.Minute
)

// KEK is a transit key in Vault, seen as a dek.KEK.
type KEK struct {
	cfg    Config
	client *api.Client // carries the token and namespace
	health *api.Client // sys/health is unauthenticated and lives in the root namespace
	tokens *tokens
	addrs  *addresses
	// transport is the shared transport without failover, for probes of one address.
	transport *http.Transport

	checkMu      sync.Mutex // one Check at a time: it owns tokens, the debounce and the cluster id
	cluster      string     // Vault's cluster id, learned from sys/health; "" after a failed check
	clusterMoves uint64     // addrs.moves when cluster was learned
	// capsAsked is when sys/capabilities-self last said yes (or could not be asked); zero
	// until then, so that every check asks until it does (capabilities.go).
	capsAsked      time.Time
	capsUnanswered bool // the token may not ask sys/capabilities-self

	mu       sync.RWMutex
	observed *keyState // the key at the last successful check; nil before
	adoption debounce  // the adopted key id, and the candidate awaiting its second check
	// adoptedView is the last view whose latest version is the adopted one: lagging.go tells
	// older views from it.
	adoptedView *keyState
	// foreign: key ids of other lineages that Vault unwrapped under, with the creation time of
	// the version that did (Usable).
	foreign map[string]int64

	decrypts batcher // concurrent transit decrypts, coalesced (batch.go)
}

var _ dek.KEK = (*KEK)(nil)

// Open builds the backend from cfg. It does not contact Vault: the first Check does, so a
// plugin whose Vault is down still starts, reports why, and recovers when Vault returns.
func Open(cfg Config) (*KEK, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	hc, transport, addrs, err := cfg.httpClient()
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
	k := &KEK{cfg: cfg, client: client, health: health, addrs: addrs, transport: transport}
	k.decrypts.k = k
	k.tokens = &tokens{
		auth: cfg.Auth, clk: cfg.Clock, log: cfg.Log, client: client,
		newClient: func(token string) (*api.Client, error) { return cfg.newAPIClient(hc, cfg.Namespace, token) },
	}
	return k, nil
}

// Address is the Vault address that requests go to first now: Config.Address, or while it
// cannot serve, the failover address in use.
func (k *KEK) Address() string { return k.addrs.inUse() }

// CurrentID is the adopted key id, "" before the first successful Check.
func (k *KEK) CurrentID() string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.adoption.adopted.String()
}

// TokenTTL is the time left on the Vault token in use, for metrics; false while there is none
// or it does not expire. It answers from memory.
func (k *KEK) TokenTTL() (time.Duration, bool) { return k.tokens.ttlLeft() }

// Check refreshes Vault's state, the token and the key's latest version. Its error says
// whether Vault is unreachable, sealed, denying access or missing the key.
//
// A key id is adopted only once two consecutive reads of the key agree, at start as later.
// While none is adopted yet (a fresh start), a check that read the key reads it again at once,
// so a start costs one more key read (one Vault round trip, within the check's --timeout) and
// is not delayed by a check interval; if the two reads disagree (a replica lagging behind a
// rotation answered one of them), Check says so and the next check tries again.
func (k *KEK) Check(ctx context.Context) error {
	k.checkMu.Lock()
	defer k.checkMu.Unlock()
	k.backToPreferred(ctx)
	state, err := k.check(ctx)
	k.apply(state, err)
	if err != nil || k.CurrentID() != "" {
		return err
	}
	first := state.latest
	state, err = k.check(ctx)
	k.apply(state, err)
	switch {
	case err != nil:
		return err
	case k.CurrentID() == "":
		return fmt.Errorf("%w: vault transit key %s: two reads in a row disagree on its latest version (%s, then %s): a replica behind a load balancer lagging behind a rotation? No key id is adopted until two consecutive reads agree",
			dek.ErrUnavailable, k.keyPath(), first, state.latest)
	}
	return nil
}

// apply records one check's outcome: a failed check breaks the debounce's run, a view of the
// key moves the key id as the debounce and lagging.go allow.
func (k *KEK) apply(state *keyState, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.adoption.miss()
		return
	}
	if k.laggingView(state) {
		return // see lagging.go
	}
	k.observed = state
	seen, before := state.latest, k.adoption.adopted
	if before.lineage != "" && before.version < state.minDecrypt {
		// The operator retired the adopted version: data it wraps could not be read back, so
		// waiting for a second check would only make Encrypt fail meanwhile.
		k.adoption.adopt(seen)
		k.cfg.Log.Info("vault transit key: adopted version is below min_decryption_version; adopting the latest at once", "old_key_id", before.String(), "key_id", seen.String())
	} else if before.lineage != "" && !state.ours(before) {
		// The key was deleted and created anew under the same name: the adopted key id names
		// material that no longer exists, and anything still wrapped under it (a local KEK
		// in memory) could never be read back. No debounce: waiting would only write more.
		k.adoption.adopt(seen)
		k.cfg.Log.Warn("vault transit key: the adopted key id names no version of the key as it is now (deleted and recreated?); adopting the latest at once", "old_key_id", before.String(), "key_id", seen.String())
	} else if k.adoption.observe(seen) {
		if before.lineage != "" {
			k.cfg.Log.Info("vault transit key: adopted new key id", "old_key_id", before.String(), "key_id", seen.String())
		}
	} else if seen != k.adoption.adopted {
		k.cfg.Log.Info("vault transit key: new key id seen; adopting it if the next check agrees", "key_id", k.adoption.adopted.String(), "seen", seen.String())
	}
	if seen == k.adoption.adopted {
		k.adoptedView = state
	}
}

// check reads the key: at an idle plugin's check that is the only Vault request. The cluster
// id is learned once from sys/health and again only after a failed check or a failover;
// sys/health is also asked when something fails, to say why (sealed, not initialized).
func (k *KEK) check(ctx context.Context) (*keyState, error) {
	if moves := k.addrs.moves.Load(); k.cluster == "" || k.clusterMoves != moves {
		id, err := k.clusterID(ctx)
		if err != nil {
			k.cluster = ""
			return nil, err
		}
		k.cluster, k.clusterMoves = id, moves
	}
	if err := k.tokens.ensure(ctx); err != nil {
		return nil, k.explain(ctx, err)
	}
	secret, err := k.readKey(ctx)
	if errors.Is(err, dek.ErrDenied) {
		// Denied: a token revoked since the last check, or a policy without read on the key.
		k.tokens.denied.Store(true)
		if verr := k.tokens.ensure(ctx); verr != nil {
			return nil, k.explain(ctx, verr)
		}
		secret, err = k.readKey(ctx)
	}
	if err != nil {
		return nil, k.explain(ctx, err)
	}
	state, err := k.parseKey(k.cluster, secret)
	if err == nil && k.capabilitiesDue() {
		if err = k.authorized(ctx); err != nil {
			k.capsAsked = time.Time{}
			return nil, err
		}
	}
	return state, err
}

// explain follows a failed check: the cluster id is asked again at the next check (Vault may
// have been replaced meanwhile), and an unavailable Vault is asked through sys/health why.
func (k *KEK) explain(ctx context.Context, err error) error {
	k.cluster = ""
	if !errors.Is(err, dek.ErrUnavailable) || ctx.Err() != nil {
		return err // out of time: the original error says more than a health check could
	}
	if _, herr := k.clusterID(ctx); herr != nil {
		return herr
	}
	return err
}

// backToPreferred probes the preferred address while another is in use, within a part of the
// check's deadline so that a black-holed address leaves time for the check itself.
func (k *KEK) backToPreferred(ctx context.Context) {
	budget := 2 * time.Second
	if deadline, ok := ctx.Deadline(); ok {
		budget = min(budget, time.Until(deadline)/2)
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	k.addrs.probePreferred(ctx, k.transport)
}

// clusterID asks sys/health, which also tells a sealed Vault from an unreachable one.
func (k *KEK) clusterID(ctx context.Context) (string, error) {
	var h *api.HealthResponse
	err := k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		h, err = k.health.Sys().HealthWithContext(ctx)
		return err
	})
	if err := judgeHealth(k.addrs.inUse(), h, err); err != nil {
		return "", err
	}
	return h.ClusterID, nil
}

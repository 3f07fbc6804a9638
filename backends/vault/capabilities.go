package vault

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

// DefaultCapabilitiesInterval is how often a check also asks Vault whether the token's policies
// still allow encrypt and decrypt on the key (sys/capabilities-self, one request): a policy cut
// to "read" is noticed within this interval (plus one check), although every check's key read
// still succeeds. It fits the idle budget of 72 Vault requests an hour beside the key reads
// (60), the proofs (4 at DefaultProofInterval) and token renewals: docs/vault.md, "Request
// budget".
const DefaultCapabilitiesInterval = 10 * time.Minute

// CapabilitiesSelf asks sys/capabilities-self for the token's capabilities on several paths
// at once. Vault answers from the token's ACL policies, without trying the paths.
func CapabilitiesSelf(ctx context.Context, c *api.Client, paths []string) (map[string][]string, error) {
	secret, err := c.Logical().WriteWithContext(ctx, "sys/capabilities-self", map[string]any{"paths": paths})
	if err != nil {
		return nil, err
	}
	if secret == nil || secret.Data == nil {
		return nil, errors.New("sys/capabilities-self returned nothing")
	}
	out := map[string][]string{}
	for _, p := range paths {
		raw, _ := secret.Data[p].([]any)
		for _, v := range raw {
			if s, ok := v.(string); ok {
				out[p] = append(out[p], s)
			}
		}
	}
	return out, nil
}

// Grants reports whether capabilities have grant want: "root" grants everything, "deny" nothing.
func Grants(have []string, want string) bool {
	if slices.Contains(have, "deny") {
		return false
	}
	return slices.Contains(have, want) || slices.Contains(have, "root")
}

// capabilitiesDue reports whether this check asks sys/capabilities-self: at the first check,
// then every CapabilitiesInterval; until it has said yes, at every check.
func (k *KEK) capabilitiesDue() bool {
	return k.capsAsked.IsZero() || k.cfg.Clock.Now().Sub(k.capsAsked) >= k.cfg.CapabilitiesInterval
}

// authorized asks Vault whether the token may still encrypt and decrypt with the key. A
// policy that no longer grants "update" on either path is a refusal (dek.ErrDenied). A 403 on
// sys/capabilities-self itself is not: the token may merely lack that path (no default
// policy), and then the proofs alone find a policy cut.
func (k *KEK) authorized(ctx context.Context) error {
	paths := []string{k.cfg.Mount + "/encrypt/" + k.cfg.Key, k.cfg.Mount + "/decrypt/" + k.cfg.Key}
	var caps map[string][]string
	err := k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		caps, err = CapabilitiesSelf(ctx, k.client, paths)
		return err
	})
	if err != nil {
		err = classify("sys/capabilities-self", err)
		if !errors.Is(err, dek.ErrDenied) {
			return err
		}
		if !k.capsUnanswered {
			k.cfg.Log.Warn("vault: the token may not ask sys/capabilities-self; a policy that no longer allows encrypt or decrypt is found by the proofs alone (--proof-interval). Keep Vault's default policy on the token, or use the policy `kmsctl policy` prints", "error", err)
		}
		k.capsUnanswered = true
		k.capsAsked = k.cfg.Clock.Now()
		return nil
	}
	var missing []string
	for _, p := range paths {
		if !Grants(caps[p], "update") {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf(`%w: the token's policies no longer grant "update" on %s (sys/capabilities-self)`, dek.ErrDenied, strings.Join(missing, " and "))
	}
	k.capsUnanswered = false
	k.capsAsked = k.cfg.Clock.Now()
	return nil
}

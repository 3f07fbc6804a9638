package encryptionconfig

import (
	"encoding/base64"
	"fmt"

	"google.golang.org/grpc"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// dialFunc connects to a kms plugin's socket.
type dialFunc func(endpoint string) (*grpc.ClientConn, error)

// build makes the chain and the description of every resource a validated file names. Each
// plugin socket is dialled once, lazily (kmsclient.Dial does not wait for the plugin), and
// its connection kept for Close.
func (c *Config) build(f *fileConfig) error {
	links := map[GroupResource][]providers.Link{}
	infos := map[GroupResource][]Provider{}
	dialled := map[string]*grpc.ClientConn{}
	dial := func(endpoint string) (*grpc.ClientConn, error) {
		if cc, ok := dialled[endpoint]; ok {
			return cc, nil
		}
		cc, err := kmsclient.Dial(endpoint)
		if err != nil {
			return nil, err
		}
		dialled[endpoint] = cc
		c.conns = append(c.conns, cc)
		return cc, nil
	}
	for i, rc := range f.Resources {
		var chain []providers.Link
		rule := Rule{}
		for j := range rc.Providers {
			p := &rc.Providers[j]
			k, _ := kindOf(p)
			if k == nil {
				return fmt.Errorf("resources[%d].providers[%d]: no provider", i, j) // validate rules this out
			}
			var l providers.Link
			var err error
			if c.opts.KMSv2 != nil && p.KMS != nil && kmsVersion(p.KMS) == "v2" {
				l = providers.NewKMSv2Provider(p.KMS.Name, c.opts.KMSv2(p.KMS.Name, p.KMS.Endpoint), kmsTimeout(p.KMS))
			} else {
				l, err = k.build(p, dial)
			}
			if err != nil {
				return fmt.Errorf("resources[%d].providers[%d]: %w", i, j, err)
			}
			chain = append(chain, l)
			rule.Providers = append(rule.Providers, k.describe(p))
		}
		for _, r := range rc.Resources {
			rule.Resources = append(rule.Resources, ParseGroupResource(r))
		}
		c.rules = append(c.rules, rule)
		for _, r := range rc.Resources {
			gr := ParseGroupResource(r)
			// The apiserver refuses a rule that an earlier *.group or *.* rule masks.
			for _, mask := range []GroupResource{{Group: gr.Group, Resource: "*"}, {Group: "*", Resource: "*"}} {
				if _, masked := links[mask]; masked {
					return fmt.Errorf("resource %q is masked by earlier rule %q", gr, mask)
				}
			}
			links[gr] = append(links[gr], chain...)
			infos[gr] = append(infos[gr], rule.Providers...)
		}
	}
	for gr, l := range links {
		c.chains[gr] = providers.NewChain("provider", l...)
		c.infos[gr] = infos[gr]
	}
	return nil
}

// decodeKeys decodes secrets that validate has already checked.
func decodeKeys(k *keysConfig) []providers.Key {
	keys := make([]providers.Key, len(k.Keys))
	for i, key := range k.Keys {
		secret, _ := base64.StdEncoding.DecodeString(key.Secret)
		keys[i] = providers.Key{Name: key.Name, Secret: secret}
	}
	return keys
}

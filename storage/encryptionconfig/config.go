// Package encryptionconfig reads a kube-apiserver EncryptionConfiguration file
// (apiserver.config.k8s.io/v1) into the provider chain the apiserver builds for each resource:
// the first provider writes, every provider is tried on read, and resources the file does not
// name are read and written by identity.
package encryptionconfig

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	kmsv1 "k8s.io/kms/apis/v1beta1"
	kmsv2 "k8s.io/kms/apis/v2"
	"sigs.k8s.io/yaml"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// GroupResource is a resource and its API group ("" for the core group); either may be "*".
type GroupResource struct {
	Group, Resource string
}

// ParseGroupResource splits "resource.group" at the first dot, as schema.ParseGroupResource
// does: "secrets", "deployments.apps", "*.apps", "*.*", "*." (every core resource).
func ParseGroupResource(s string) GroupResource {
	if r, g, ok := strings.Cut(s, "."); ok {
		return GroupResource{Group: g, Resource: r}
	}
	return GroupResource{Resource: s}
}

func (gr GroupResource) String() string {
	if gr.Group == "" {
		if gr.Resource == "*" {
			return "*."
		}
		return gr.Resource
	}
	return gr.Resource + "." + gr.Group
}

// Config is a loaded EncryptionConfiguration.
type Config struct {
	chains map[GroupResource]*providers.Chain
	infos  map[GroupResource][]Provider // the same chains, described
	rules  []Rule
	conns  []io.Closer
}

// Provider describes one provider as the file gives it, without its secrets: for tools that
// report how values are stored (scan) rather than transform them.
type Provider struct {
	// Prefix starts the values it writes, up to the key or provider name
	// (providers.AESCBCPrefix ... providers.KMSv2Prefix); "" for identity.
	Prefix   string
	Name     string        // kms provider name
	Keys     []string      // key names of a local provider, in order
	Endpoint string        // kms plugin socket
	Timeout  time.Duration // kms call timeout
}

// Rule is one `resources:` entry of the file.
type Rule struct {
	Resources []GroupResource
	Providers []Provider
}

// Load reads and validates the file at path. KMS plugin sockets are dialled lazily: a file
// naming a plugin that is not running loads, and fails only when a value needs the plugin.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("encryption config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("encryption config %s: %w", path, err)
	}
	return c, nil
}

// Parse reads a file's contents; see Load.
func Parse(data []byte) (*Config, error) {
	if len(data) == 0 {
		return nil, errors.New("the file is empty")
	}
	var f fileConfig
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, err
	}
	if f.Kind != kind || f.APIVersion != apiVersion {
		return nil, fmt.Errorf("kind %q, apiVersion %q: want %s %s", f.Kind, f.APIVersion, kind, apiVersion)
	}
	if err := validate(&f); err != nil {
		return nil, err
	}
	c := &Config{chains: map[GroupResource]*providers.Chain{}, infos: map[GroupResource][]Provider{}}
	if err := c.build(&f); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// TransformerFor returns the chain for a resource: its own entry, else its group's "*.group",
// else "*.*", else identity (which refuses encrypted values), as the apiserver resolves it.
func (c *Config) TransformerFor(gr GroupResource) *providers.Chain {
	if k, ok := c.resolve(gr); ok {
		return c.chains[k]
	}
	return providers.NewChain("provider", providers.Link{Transformer: providers.Identity{}})
}

// ProvidersFor describes the chain TransformerFor returns: the first provider writes.
func (c *Config) ProvidersFor(gr GroupResource) []Provider {
	if k, ok := c.resolve(gr); ok {
		return c.infos[k]
	}
	return []Provider{{}} // identity
}

// Rules describes the file's entries, in order. The result must not be modified.
func (c *Config) Rules() []Rule { return c.rules }

func (c *Config) resolve(gr GroupResource) (GroupResource, bool) {
	for _, k := range []GroupResource{gr, {Group: gr.Group, Resource: "*"}, {Group: "*", Resource: "*"}} {
		if _, ok := c.chains[k]; ok {
			return k, true
		}
	}
	return GroupResource{}, false
}

// Close closes the connections to KMS plugins.
func (c *Config) Close() error {
	var errs []error
	for _, cl := range c.conns {
		errs = append(errs, cl.Close())
	}
	c.conns = nil
	return errors.Join(errs...)
}

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
		for j, p := range rc.Providers {
			l, err := providerLink(p, dial)
			if err != nil {
				return fmt.Errorf("resources[%d].providers[%d]: %w", i, j, err)
			}
			chain = append(chain, l)
			rule.Providers = append(rule.Providers, describe(p))
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

// describe is providerLink's result in words: the same cases, in the same order.
func describe(p providerConfig) Provider {
	keyNames := func(k *keysConfig) []string {
		var names []string
		for _, key := range k.Keys {
			names = append(names, key.Name)
		}
		return names
	}
	switch {
	case p.AESGCM != nil:
		return Provider{Prefix: providers.AESGCMPrefix, Keys: keyNames(p.AESGCM)}
	case p.AESCBC != nil:
		return Provider{Prefix: providers.AESCBCPrefix, Keys: keyNames(p.AESCBC)}
	case p.Secretbox != nil:
		return Provider{Prefix: providers.SecretboxPrefix, Keys: keyNames(p.Secretbox)}
	case p.KMS != nil:
		d := Provider{Prefix: providers.KMSv1Prefix, Name: p.KMS.Name, Endpoint: p.KMS.Endpoint, Timeout: kmsTimeout(p.KMS)}
		if p.KMS.APIVersion == "v2" {
			d.Prefix = providers.KMSv2Prefix
		}
		return d
	}
	return Provider{} // identity
}

// kmsTimeout is a kms provider's call timeout: its own, or the apiserver's default of 3 s.
func kmsTimeout(k *kmsConfig) time.Duration {
	if k.Timeout != nil {
		return k.Timeout.Duration
	}
	return kmsclient.APIServerTimeout
}

func providerLink(p providerConfig, dial func(string) (*grpc.ClientConn, error)) (providers.Link, error) {
	switch {
	case p.AESGCM != nil:
		return providers.NewAESGCMProvider(decodeKeys(p.AESGCM))
	case p.AESCBC != nil:
		return providers.NewAESCBCProvider(decodeKeys(p.AESCBC))
	case p.Secretbox != nil:
		return providers.NewSecretboxProvider(decodeKeys(p.Secretbox))
	case p.Identity != nil:
		return providers.Link{Transformer: providers.Identity{}}, nil
	case p.KMS != nil:
		cc, err := dial(p.KMS.Endpoint)
		if err != nil {
			return providers.Link{}, err
		}
		timeout := kmsTimeout(p.KMS)
		if p.KMS.APIVersion == "v2" {
			return providers.NewKMSv2Provider(p.KMS.Name, kmsv2.NewKeyManagementServiceClient(cc), timeout), nil
		}
		return providers.NewKMSv1Provider(p.KMS.Name, kmsv1.NewKeyManagementServiceClient(cc), timeout), nil
	}
	return providers.Link{}, errors.New("no provider") // validate rules this out
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

// validate applies the apiserver's validation (ValidateEncryptionConfiguration), so that a
// file the apiserver would refuse is refused here too. Secrets never appear in its errors.
func validate(f *fileConfig) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(f.Resources) == 0 {
		return errors.New("resources: at least one entry is required")
	}
	kmsNames := map[string]bool{}
	for i, rc := range f.Resources {
		at := fmt.Sprintf("resources[%d]", i)
		if len(rc.Resources) == 0 {
			bad("%s.resources: at least one resource is required", at)
		}
		errs = append(errs, validateResources(at, rc.Resources)...)
		if len(rc.Providers) == 0 {
			bad("%s.providers: at least one provider is required", at)
		}
		for j, p := range rc.Providers {
			pat := fmt.Sprintf("%s.providers[%d]", at, j)
			n := 0
			for _, set := range []bool{p.AESGCM != nil, p.AESCBC != nil, p.Secretbox != nil, p.Identity != nil, p.KMS != nil} {
				if set {
					n++
				}
			}
			if n != 1 {
				bad("%s: want exactly one of aesgcm, aescbc, secretbox, identity, kms; found %d", pat, n)
				continue
			}
			switch {
			case p.AESGCM != nil:
				errs = append(errs, validateKeys(pat+".aesgcm", p.AESGCM, 16, 24, 32)...)
			case p.AESCBC != nil:
				errs = append(errs, validateKeys(pat+".aescbc", p.AESCBC, 16, 24, 32)...)
			case p.Secretbox != nil:
				errs = append(errs, validateKeys(pat+".secretbox", p.Secretbox, 32)...)
			case p.KMS != nil:
				errs = append(errs, validateKMS(pat+".kms", p.KMS, kmsNames)...)
				kmsNames[p.KMS.Name] = true
			}
		}
	}
	return errors.Join(errs...)
}

func validateResources(at string, resources []string) []error {
	var errs []error
	for j, r := range resources {
		gr := ParseGroupResource(r)
		switch {
		case strings.ToLower(r) != r:
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: resource names have no capital letters", at, j, r))
		case r == "*":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: use '*.' for every core resource or '*.*' for every resource", at, j, r))
		case r == "apiserveripinfo" || r == "serviceipallocations" || r == "servicenodeportallocations":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: resources without a REST API cannot be encrypted", at, j, r))
		case gr.Group == "events.k8s.io":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: events.k8s.io objects are stored in the 'events' group; write 'events'", at, j, r))
		case gr.Group == "extensions":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: the extensions group has been removed", at, j, r))
		case gr.Group == "*" && gr.Resource != "*":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: encrypting one resource across groups is not supported", at, j, r))
		}
	}
	// Duplicates and overlaps within one list (validateResourceOverlap).
	var dup, overlap bool
	for i, a := range resources {
		for j, b := range resources {
			if i == j {
				continue
			}
			r1, r2 := ParseGroupResource(a), ParseGroupResource(b)
			switch {
			case r1 == r2:
				dup = true
			case r1 == GroupResource{Group: "*", Resource: "*"}:
				overlap = true
			case r1.Group == r2.Group && (r1.Resource == "*" || r2.Resource == "*"):
				overlap = true
			}
		}
	}
	if dup {
		errs = append(errs, fmt.Errorf("%s.resources: the same resource is listed twice", at))
	}
	if overlap {
		errs = append(errs, fmt.Errorf("%s.resources: overlapping resources (such as 'secrets' and '*.') in one list would mask each other", at))
	}
	return errs
}

func validateKeys(at string, k *keysConfig, sizes ...int) []error {
	if len(k.Keys) == 0 {
		return []error{fmt.Errorf("%s.keys: at least one key is required", at)}
	}
	var errs []error
	for i, key := range k.Keys {
		kat := fmt.Sprintf("%s.keys[%d]", at, i)
		if key.Name == "" {
			errs = append(errs, fmt.Errorf("%s.name is required", kat))
		}
		if key.Secret == "" {
			errs = append(errs, fmt.Errorf("%s.secret is required", kat))
			continue
		}
		secret, err := base64.StdEncoding.DecodeString(key.Secret)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.secret (%q): not valid base64", kat, key.Name))
			continue
		}
		ok := false
		for _, s := range sizes {
			ok = ok || len(secret) == s
		}
		if !ok {
			errs = append(errs, fmt.Errorf("%s.secret (%q): %d bytes, want one of %v", kat, key.Name, len(secret), sizes))
		}
	}
	return errs
}

func validateKMS(at string, k *kmsConfig, seen map[string]bool) []error {
	var errs []error
	if k.APIVersion == "" {
		k.APIVersion = "v1" // the apiserver's default
	}
	if k.Name == "" {
		errs = append(errs, fmt.Errorf("%s.name is required", at))
	}
	if k.APIVersion != "v1" && strings.Contains(k.Name, ":") {
		errs = append(errs, fmt.Errorf("%s.name %q: must not contain ':'", at, k.Name))
	}
	if k.APIVersion != "v1" && seen[k.Name] {
		errs = append(errs, fmt.Errorf("%s.name %q: kms provider names must be unique", at, k.Name))
	}
	if k.Timeout != nil && k.Timeout.Duration <= 0 {
		errs = append(errs, fmt.Errorf("%s.timeout must be positive", at))
	}
	if k.Endpoint == "" {
		errs = append(errs, fmt.Errorf("%s.endpoint is required", at))
	} else if u, err := url.Parse(k.Endpoint); err != nil || u.Scheme != "unix" {
		errs = append(errs, fmt.Errorf("%s.endpoint %q: want unix:///path", at, k.Endpoint))
	}
	if k.APIVersion != "v1" && k.CacheSize != nil {
		errs = append(errs, fmt.Errorf("%s.cachesize is not supported in v2", at))
	}
	if k.APIVersion == "v1" && k.CacheSize != nil && *k.CacheSize == 0 {
		errs = append(errs, fmt.Errorf("%s.cachesize should be positive, or negative to disable", at))
	}
	if k.APIVersion != "v1" && k.APIVersion != "v2" {
		errs = append(errs, fmt.Errorf("%s.apiVersion %q: want v1 or v2", at, k.APIVersion))
	}
	return errs
}

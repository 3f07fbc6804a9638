// Package encryptionconfig reads a kube-apiserver EncryptionConfiguration file
// (apiserver.config.k8s.io/v1) into the provider chain the apiserver builds for each resource:
// the first provider writes, every provider is tried on read, and resources the file does not
// name are read and written by identity. A file the apiserver would refuse is refused here.
// Each chain is also described without its secrets, for tools that report how values are
// stored; and ResourceOf and PrefixOf map etcd keys to the resources whose rules apply.
//
// types.go is the file's schema, validate.go the apiserver's rules on it, kinds.go the one
// table of provider kinds (identity, aesgcm, aescbc, secretbox, kms v1 and v2), and build.go
// the chains made from a valid file.
package encryptionconfig

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	kmsv2 "k8s.io/kms/apis/v2"
	"sigs.k8s.io/yaml"

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
	opts   Options
}

// Options change how a loaded file reaches its KMS plugins.
type Options struct {
	// KMSv2, if set, answers for every kms v2 provider instead of the plugin at its endpoint:
	// kmsctl reading with the recovery private key, with no plugin and no backend.
	KMSv2 func(name, endpoint string) kmsv2.KeyManagementServiceClient
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
func Load(path string) (*Config, error) { return LoadWith(path, Options{}) }

// LoadWith is Load with options.
func LoadWith(path string, o Options) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("encryption config: %w", err)
	}
	c, err := ParseWith(data, o)
	if err != nil {
		return nil, fmt.Errorf("encryption config %s: %w", path, err)
	}
	return c, nil
}

// Parse reads a file's contents; see Load.
func Parse(data []byte) (*Config, error) { return ParseWith(data, Options{}) }

// ParseWith is Parse with options.
func ParseWith(data []byte, o Options) (*Config, error) {
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
	c := &Config{chains: map[GroupResource]*providers.Chain{}, infos: map[GroupResource][]Provider{}, opts: o}
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

package scan

import (
	"fmt"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// The encryptionconfig package (issue 4) will load EncryptionConfiguration files in full. Until
// then scan reads only what it needs: which provider writes each resource, with the names of
// keys and providers. It keeps no key secrets.

// Config is the part of an EncryptionConfiguration that scan uses.
type Config struct {
	Rules []Rule
}

// Rule is one `resources:` entry: the resources it covers and its providers in order.
type Rule struct {
	Resources []string
	Providers []Provider
}

// Provider is one provider of a rule. Class is Plaintext for identity.
type Provider struct {
	Class    string
	Name     string        // KMS provider name
	Keys     []string      // local provider key names, in order
	Endpoint string        // KMS socket
	Timeout  time.Duration // KMS call timeout
}

// WriteKey is the storage that new writes of a provider get: for local providers their first
// key, for KMS v2 the key id its Status reports (filled in by Scan).
func (p Provider) WriteKey() Storage {
	switch p.Class {
	case AESCBC, AESGCM, Secretbox:
		return Storage{Class: p.Class, Key: p.Keys[0]}
	case KMSv1, KMSv2:
		return Storage{Class: p.Class, Provider: p.Name}
	}
	return Storage{Class: Plaintext}
}

type fileConfig struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
	Resources  []struct {
		Resources []string       `json:"resources"`
		Providers []fileProvider `json:"providers"`
	} `json:"resources"`
}

type fileKeys struct {
	Keys []struct {
		Name string `json:"name"`
	} `json:"keys"`
}

type fileProvider struct {
	Identity  *struct{} `json:"identity"`
	AESCBC    *fileKeys `json:"aescbc"`
	AESGCM    *fileKeys `json:"aesgcm"`
	Secretbox *fileKeys `json:"secretbox"`
	KMS       *struct {
		APIVersion string `json:"apiVersion"`
		Name       string `json:"name"`
		Endpoint   string `json:"endpoint"`
		Timeout    string `json:"timeout"`
	} `json:"kms"`
}

// defaultKMSTimeout is the apiserver's default for a kms provider's timeout.
const defaultKMSTimeout = 3 * time.Second

// LoadConfig reads an EncryptionConfiguration file (apiserver.config.k8s.io/v1).
func LoadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("encryption config: %w", err)
	}
	var f fileConfig
	if err := yaml.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("encryption config %s: %w", path, err)
	}
	if f.Kind != "EncryptionConfiguration" || f.APIVersion != "apiserver.config.k8s.io/v1" {
		return nil, fmt.Errorf("encryption config %s: want kind EncryptionConfiguration, apiVersion apiserver.config.k8s.io/v1; got %q, %q", path, f.Kind, f.APIVersion)
	}
	cfg := &Config{}
	for i, r := range f.Resources {
		if len(r.Resources) == 0 || len(r.Providers) == 0 {
			return nil, fmt.Errorf("encryption config %s: resources[%d] needs resources and providers", path, i)
		}
		rule := Rule{Resources: r.Resources}
		for j, fp := range r.Providers {
			p, err := fp.provider()
			if err != nil {
				return nil, fmt.Errorf("encryption config %s: resources[%d].providers[%d]: %w", path, i, j, err)
			}
			rule.Providers = append(rule.Providers, p)
		}
		cfg.Rules = append(cfg.Rules, rule)
	}
	return cfg, nil
}

func (fp fileProvider) provider() (Provider, error) {
	var out []Provider
	local := func(class string, k *fileKeys) {
		p := Provider{Class: class}
		for _, key := range k.Keys {
			p.Keys = append(p.Keys, key.Name)
		}
		out = append(out, p)
	}
	if fp.Identity != nil {
		out = append(out, Provider{Class: Plaintext})
	}
	if fp.AESCBC != nil {
		local(AESCBC, fp.AESCBC)
	}
	if fp.AESGCM != nil {
		local(AESGCM, fp.AESGCM)
	}
	if fp.Secretbox != nil {
		local(Secretbox, fp.Secretbox)
	}
	if k := fp.KMS; k != nil {
		p := Provider{Class: KMSv1, Name: k.Name, Endpoint: k.Endpoint, Timeout: defaultKMSTimeout}
		if k.APIVersion == "v2" {
			p.Class = KMSv2
		}
		if k.Timeout != "" {
			d, err := time.ParseDuration(k.Timeout)
			if err != nil {
				return Provider{}, fmt.Errorf("kms timeout: %w", err)
			}
			p.Timeout = d
		}
		if p.Name == "" {
			return Provider{}, fmt.Errorf("kms provider without a name")
		}
		out = append(out, p)
	}
	if len(out) != 1 {
		return Provider{}, fmt.Errorf("want exactly one of identity, aescbc, aesgcm, secretbox, kms; got %d", len(out))
	}
	if c := out[0].Class; (c == AESCBC || c == AESGCM || c == Secretbox) && len(out[0].Keys) == 0 {
		return Provider{}, fmt.Errorf("%s provider without keys", c)
	}
	return out[0], nil
}

// RuleFor returns the rule that covers r the way kube-apiserver picks it: an exact
// resource[.group] entry first, then "*.<group>" ("*." for the core group), then "*.*"; among
// entries of one kind, the first in the file. It returns nil for a resource no rule covers:
// the apiserver stores it as identity.
func (c *Config) RuleFor(r Resource) *Rule {
	wildcard := "*." + r.Group
	for _, want := range []string{r.Name(), wildcard, "*.*"} {
		for i := range c.Rules {
			for _, name := range c.Rules[i].Resources {
				if strings.EqualFold(name, want) {
					return &c.Rules[i]
				}
			}
		}
	}
	return nil
}

// Names returns every local key name and KMS provider name, for Classify.
func (c *Config) Names() []string {
	var names []string
	for _, r := range c.Rules {
		for _, p := range r.Providers {
			names = append(names, p.Keys...)
			if p.Name != "" {
				names = append(names, p.Name)
			}
		}
	}
	return names
}

package encryptionconfig

import (
	"slices"
	"time"

	"google.golang.org/grpc"
	kmsv1 "k8s.io/kms/apis/v1beta1"
	kmsv2 "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// A providerKind is one kind of provider a file can name, and all that validate, describe and build
// need to know of it. Adding a kind is adding its entry to kinds (and, for a new key of a
// providers entry, its field to providerConfig).
type providerKind struct {
	field string // its key in a providers entry of the file
	// in reports whether a providers entry is of this kind: it sets field (and, for kms,
	// selects the kind's apiVersion).
	in func(p *providerConfig) bool
	// check applies the apiserver's rules to the entry's settings; at is where they are in the
	// file, kmsNames the kms provider names of the entries before. nil: nothing to check.
	check func(at string, p *providerConfig, kmsNames map[string]bool) []error
	// describe gives a checked entry without its secrets.
	describe func(p *providerConfig) Provider
	// build makes a checked entry's provider; dial connects to a kms plugin.
	build func(p *providerConfig, dial dialFunc) (providers.Link, error)
}

// kinds holds every kind of provider, in the order validate's errors name their fields.
var kinds = []providerKind{
	localKind("aesgcm", providers.AESGCMPrefix, func(p *providerConfig) *keysConfig { return p.AESGCM }, providers.NewAESGCMProvider, 16, 24, 32),
	localKind("aescbc", providers.AESCBCPrefix, func(p *providerConfig) *keysConfig { return p.AESCBC }, providers.NewAESCBCProvider, 16, 24, 32),
	localKind("secretbox", providers.SecretboxPrefix, func(p *providerConfig) *keysConfig { return p.Secretbox }, providers.NewSecretboxProvider, 32),
	{
		field:    "identity",
		in:       func(p *providerConfig) bool { return p.Identity != nil },
		describe: func(*providerConfig) Provider { return Provider{} },
		build: func(*providerConfig, dialFunc) (providers.Link, error) {
			return providers.Link{Transformer: providers.Identity{}}, nil
		},
	},
	kmsKind("v1", providers.KMSv1Prefix, func(name string, cc *grpc.ClientConn, timeout time.Duration) providers.Link {
		return providers.NewKMSv1Provider(name, kmsv1.NewKeyManagementServiceClient(cc), timeout)
	}),
	kmsKind("v2", providers.KMSv2Prefix, func(name string, cc *grpc.ClientConn, timeout time.Duration) providers.Link {
		return providers.NewKMSv2Provider(name, kmsv2.NewKeyManagementServiceClient(cc), timeout)
	}),
}

// kindOf is the kind of a providers entry, and how many kinds it names: a valid entry names
// exactly one.
func kindOf(p *providerConfig) (*providerKind, int) {
	var of *providerKind
	n := 0
	for i := range kinds {
		if kinds[i].in(p) {
			if n++; n == 1 {
				of = &kinds[i]
			}
		}
	}
	return of, n
}

// fields are the keys a providers entry may set, in the order of kinds.
func fields() []string {
	var names []string
	for _, k := range kinds {
		if !slices.Contains(names, k.field) {
			names = append(names, k.field)
		}
	}
	return names
}

// localKind is a provider whose keys the file holds, each secret one of sizes bytes long.
func localKind(field, prefix string, keys func(*providerConfig) *keysConfig, newProvider func([]providers.Key) (providers.Link, error), sizes ...int) providerKind {
	return providerKind{
		field: field,
		in:    func(p *providerConfig) bool { return keys(p) != nil },
		check: func(at string, p *providerConfig, _ map[string]bool) []error {
			return validateKeys(at, keys(p), sizes...)
		},
		describe: func(p *providerConfig) Provider {
			var names []string
			for _, key := range keys(p).Keys {
				names = append(names, key.Name)
			}
			return Provider{Prefix: prefix, Keys: names}
		},
		build: func(p *providerConfig, _ dialFunc) (providers.Link, error) {
			return newProvider(decodeKeys(keys(p)))
		},
	}
}

// kmsKind is a kms provider of one apiVersion, made by newProvider on a connection to its
// plugin.
func kmsKind(version, prefix string, newProvider func(name string, cc *grpc.ClientConn, timeout time.Duration) providers.Link) providerKind {
	return providerKind{
		field: "kms",
		in:    func(p *providerConfig) bool { return p.KMS != nil && kmsVersion(p.KMS) == version },
		check: func(at string, p *providerConfig, kmsNames map[string]bool) []error {
			errs := validateKMS(at, p.KMS, kmsNames)
			kmsNames[p.KMS.Name] = true
			return errs
		},
		describe: func(p *providerConfig) Provider {
			return Provider{Prefix: prefix, Name: p.KMS.Name, Endpoint: p.KMS.Endpoint, Timeout: kmsTimeout(p.KMS)}
		},
		build: func(p *providerConfig, dial dialFunc) (providers.Link, error) {
			cc, err := dial(p.KMS.Endpoint)
			if err != nil {
				return providers.Link{}, err
			}
			return newProvider(p.KMS.Name, cc, kmsTimeout(p.KMS)), nil
		},
	}
}

// kmsVersion is the apiVersion by which a kms entry selects its kind: "v2", or "v1" for any
// other value (validate refuses all but "v1" and "", the apiserver's default for v1).
func kmsVersion(k *kmsConfig) string {
	if k.APIVersion == "v2" {
		return "v2"
	}
	return "v1"
}

// kmsTimeout is a kms provider's call timeout: its own, or the apiserver's default of 3 s.
func kmsTimeout(k *kmsConfig) time.Duration {
	if k.Timeout != nil {
		return k.Timeout.Duration
	}
	return kmsclient.APIServerTimeout
}

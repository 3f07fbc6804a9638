package scan

import (
	"bytes"
	"strings"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// Storage classes: how a value sits in etcd.
const (
	Plaintext    = "plaintext" // no k8s:enc: prefix: identity, or written before encryption
	AESCBC       = "aescbc"
	AESGCM       = "aesgcm"
	Secretbox    = "secretbox"
	KMSv1        = "kms-v1"
	KMSv2        = "kms-v2"
	Unrecognized = "unrecognized" // k8s:enc: prefix that no known provider writes, or a broken kms v2 value
)

// VaultKubernetesKMS is the Format of KMS v2 values whose DEK seed vault-kubernetes-kms
// encrypted (Transit's "vault:vN:" text): the Vault plugin reads them with
// --vault-read-vault-kubernetes-kms, and their Key is the transit key version, "vault:vN".
const VaultKubernetesKMS = "vault-kubernetes-kms"

// Storage is how one value is stored. Provider is the KMS provider's name (kms classes only);
// Key is the local provider's key name, or the KMS v2 key id the value was written under;
// Format is set for KMS v2 values in another plugin's envelope format that this one reads.
type Storage struct {
	Class    string `json:"class"`
	Provider string `json:"provider,omitempty"`
	Key      string `json:"key,omitempty"`
	Format   string `json:"format,omitempty"`
	// Recovery is the id of the recovery key whose seal the KMS v2 value's plugin ciphertext
	// carries (kms-plugin's envelope format v3), "" for none.
	Recovery string `json:"recoveryKey,omitempty"`
}

func (s Storage) String() string {
	out := s.Class
	if s.Format != "" {
		out += " format=" + s.Format
	}
	if s.Provider != "" {
		out += " provider=" + s.Provider
	}
	if s.Key != "" {
		out += " key=" + s.Key
	}
	if s.Recovery != "" {
		out += " recovery=" + s.Recovery
	}
	return out
}

// classes gives the storage class of each provider prefix.
var classes = []struct{ prefix, class string }{
	{providers.AESCBCPrefix, AESCBC}, {providers.AESGCMPrefix, AESGCM}, {providers.SecretboxPrefix, Secretbox},
	{providers.KMSv1Prefix, KMSv1}, {providers.KMSv2Prefix, KMSv2},
}

// Classify reads a value's storage from its prefix, and for KMS v2 the key id inside its
// EncryptedObject. names holds the local key names and KMS provider names of the
// EncryptionConfiguration, if one is known: they are matched first, so a name that contains
// ':' is still read whole. Classify never decrypts anything.
func Classify(value []byte, names []string) Storage {
	if !bytes.HasPrefix(value, []byte(providers.EncryptedPrefix)) {
		return Storage{Class: Plaintext}
	}
	for _, c := range classes {
		if !bytes.HasPrefix(value, []byte(c.prefix)) {
			continue
		}
		name, body, ok := splitName(value[len(c.prefix):], names)
		if !ok {
			return Storage{Class: Unrecognized}
		}
		switch c.class {
		case KMSv1:
			return Storage{Class: KMSv1, Provider: name}
		case KMSv2:
			keyID, source, err := providers.EncryptedObjectSource(body)
			// A key id that would break a line of the report is not printed.
			if err != nil || strings.ContainsAny(keyID, "\x00\n") {
				return Storage{Class: Unrecognized, Provider: name}
			}
			if env, err := dek.ParseVaultKMS(source); err == nil {
				// Its own key id says nothing of the transit version; the prefix does.
				return Storage{Class: KMSv2, Provider: name, Key: dek.VaultKMSKeyID(env.Version), Format: VaultKubernetesKMS}
			}
			st := Storage{Class: KMSv2, Provider: name, Key: keyID}
			if seal, ok, err := dek.RecoverySealOf(source); err == nil && ok {
				st.Recovery = seal.KeyID.String()
			}
			return st
		}
		return Storage{Class: c.class, Key: name}
	}
	return Storage{Class: Unrecognized}
}

// writeKey is the storage that new writes of p get: for local providers their first key, for
// KMS the provider (Scan fills in the KMS v2 key id its Status reports).
func writeKey(p encryptionconfig.Provider) Storage {
	for _, c := range classes {
		if p.Prefix != c.prefix {
			continue
		}
		if c.class == KMSv1 || c.class == KMSv2 {
			return Storage{Class: c.class, Provider: p.Name}
		}
		return Storage{Class: c.class, Key: p.Keys[0]}
	}
	return Storage{Class: Plaintext}
}

// names returns every local key name and KMS provider name of cfg, for Classify.
func names(cfg *encryptionconfig.Config) []string {
	var out []string
	for _, r := range cfg.Rules() {
		for _, p := range r.Providers {
			out = append(out, p.Keys...)
			if p.Name != "" {
				out = append(out, p.Name)
			}
		}
	}
	return out
}

// splitName cuts "<name>:<body>", preferring a known name.
func splitName(b []byte, names []string) (name string, body []byte, ok bool) {
	best := ""
	for _, n := range names {
		if len(n) > len(best) && bytes.HasPrefix(b, []byte(n+":")) {
			best = n
		}
	}
	if best != "" {
		return best, b[len(best)+1:], true
	}
	i := bytes.IndexByte(b, ':')
	if i <= 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

package vault

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/kmsplugin/kms-plugin/dek"
)

// vault-kubernetes-kms's envelopes (dek/foreign.go) are Transit ciphertexts of this very key,
// made without associated data or context: with Config.ReadVaultKubernetesKMS, Unwrap decrypts
// them under key ids dek.VaultKMSKeyID(version), at that version of the configured key and no
// other. Vault authenticates the ciphertext: another key's, or a changed byte, fails as
// dek.ErrTampered; the Sealer then accepts only a DEK seed's size.

var _ dek.ForeignReader = (*KEK)(nil)

// ReadsVaultKubernetesKMS reports whether Unwrap reads vault-kubernetes-kms's envelopes.
func (k *KEK) ReadsVaultKubernetesKMS() bool { return k.cfg.ReadVaultKubernetesKMS }

func (k *KEK) unwrapForeign(ctx context.Context, keyID string, version int, wrapped []byte) ([]byte, error) {
	if err := k.usableForeign(keyID, version); err != nil {
		return nil, err
	}
	if len(wrapped) == 0 {
		return nil, fmt.Errorf("%w: empty transit ciphertext", dek.ErrMalformed)
	}
	return k.decrypts.decrypt(ctx, transitPrefix(version)+base64.StdEncoding.EncodeToString(wrapped), "")
}

// usableForeign judges a vault-kubernetes-kms key id as decryptable judges ours: refused when
// reading them is off, when the version is retired, or newer than any seen. Refused too when
// the key type takes no associated data: then none of our own wraps is bound to its key id
// (keyState.bound), and a socket client could send one (a wrapped local KEK) relabelled as
// "vault:v<N>:" and get it back as a seed. With an AEAD type our format-2 wraps fail without
// their associated data; format-1 wraps stay readable so (docs/security.md).
func (k *KEK) usableForeign(keyID string, version int) error {
	if !k.cfg.ReadVaultKubernetesKMS {
		return fmt.Errorf("%w: key id %s: reading vault-kubernetes-kms envelopes is off", dek.ErrUnknownKey, keyID)
	}
	st, err := k.versionDecryptable(keyID, version)
	if err == nil && !st.aead {
		err = dek.Public(fmt.Errorf("%w: key id %s: --vault-read-vault-kubernetes-kms needs a transit key of an AEAD type (%s): under %s this plugin's own wrapped keys carry no associated data, and one of them could be sent relabelled as vault-kubernetes-kms's",
			dek.ErrUnknownKey, keyID, strings.Join(AEADTypes, ", "), k.keyPath()))
	}
	return err
}

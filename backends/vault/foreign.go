package vault

import (
	"context"
	"encoding/base64"
	"fmt"

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
// reading them is off, when the version is retired, or newer than any seen.
func (k *KEK) usableForeign(keyID string, version int) error {
	if !k.cfg.ReadVaultKubernetesKMS {
		return fmt.Errorf("%w: key id %s: reading vault-kubernetes-kms envelopes is off", dek.ErrUnknownKey, keyID)
	}
	_, err := k.versionDecryptable(keyID, version)
	return err
}

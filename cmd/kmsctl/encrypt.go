package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/storage/storedobject"
)

func newEncryptCommand() *cobra.Command {
	var o valueOptions
	var input string
	cmd := &cobra.Command{
		Use:   "encrypt",
		Short: "Encrypt an object into the value the apiserver would store in etcd for it",
		Long: `Reads an object in the form the apiserver stores it (Kubernetes protobuf or, for custom
resources, JSON), or as YAML or JSON with --input, and writes the value the apiserver would
write to etcd at --etcd-key with the resource's first provider in the EncryptionConfiguration:
its prefix, then the ciphertext. A kms v2 provider asks its plugin, over the socket the config
names, to encrypt one fresh DEK seed, as the apiserver does.

The value belongs at exactly that etcd key: aesgcm and kms authenticate it.`,
		Example: `  kmsctl encrypt --encryption-config enc.yaml --etcd-key /registry/secrets/default/db --input yaml --in secret.yaml |
    ETCDCTL_API=3 etcdctl put /registry/secrets/default/db`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if input != "raw" && input != "yaml" && input != "json" {
				return fmt.Errorf("--input %q: want raw, yaml or json", input)
			}
			plain, err := o.read(cmd.InOrStdin())
			if err != nil {
				return err
			}
			if input != "raw" {
				if plain, err = storedobject.Encode(plain); err != nil {
					return err
				}
			} else if !storedobject.LooksStored(plain) {
				return fmt.Errorf("the input is not a stored Kubernetes object (protobuf starting k8s\\x00, or JSON); use --input yaml or json for manifests")
			}
			chain, cfg, err := o.chain(nil)
			if err != nil {
				return err
			}
			defer cfg.Close()
			out, err := chain.Encrypt(cmd.Context(), nil, plain, []byte(o.etcdKey))
			if err != nil {
				return fmt.Errorf("encrypting for %s: %w", o.etcdKey, err)
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	o.addFlags(cmd.Flags())
	cmd.Flags().StringVar(&input, "input", "raw", "raw (as the apiserver stores objects), yaml or json")
	return cmd
}

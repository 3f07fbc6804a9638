package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/backends/vault/policy"
)

func newPolicyCommand() *cobra.Command {
	var o serveOptions
	var name string
	all := backends()
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Print the least-privilege Vault policy (HCL) for --vault-transit-mount and --vault-transit-key",
		Long: `Prints the Vault policy that the vault backend needs and nothing more: update on
<mount>/encrypt/<key> and <mount>/decrypt/<key>, read on <mount>/keys/<key>, renewal and
lookup of its own token, and sys/capabilities-self for 'kms-plugin doctor'. It takes the same
flags (and --config file) as serve and uses only --vault-transit-mount, --vault-transit-key and
--vault-namespace. Write it with: kms-plugin policy ... > policy.hcl; vault policy write kms-plugin policy.hcl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfigFile(cmd.Flags()); err != nil {
				return err
			}
			b := vaultOf(all)
			if b.key == "" {
				return errors.New("--vault-transit-key is required")
			}
			namespace := b.namespace
			if namespace == "" {
				namespace = os.Getenv(envVaultNamespace)
			}
			hcl, err := policy.HCL(policy.Options{Mount: b.mount, Key: b.key, Namespace: namespace, Name: name})
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), hcl)
			return err
		},
	}
	addServeFlags(cmd.Flags(), &o, all)
	cmd.Flags().StringVar(&name, "policy-name", "kms-plugin", "policy name in the printed 'vault policy write' line")
	return cmd
}

// vaultOf returns the vault backend among all.
func vaultOf(all []backend) *vaultBackend {
	for _, b := range all {
		if v, ok := b.(*vaultBackend); ok {
			return v
		}
	}
	panic("no vault backend") // backends() always has one
}

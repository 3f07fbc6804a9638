package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/backends/vault/policy"
	"github.com/kmsplugin/kms-plugin/cmd/internal/serveconfig"
)

func newPolicyCommand() *cobra.Command {
	var o serveconfig.Options
	var name string
	all, vaultFlags := serveconfig.Backends()
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Print the least-privilege Vault policy (HCL) for --vault-transit-mount and --vault-transit-key",
		Long: `Prints the Vault policy that the vault backend needs and nothing more: update on
<mount>/encrypt/<key> and <mount>/decrypt/<key>, read on <mount>/keys/<key>, renewal and
lookup of its own token, and sys/capabilities-self (the plugin's policy-cut check, and
'kmsctl doctor'). It takes the same
flags (and --config file) as serve and uses only --vault-transit-mount, --vault-transit-key and
--vault-namespace. Write it with: kmsctl policy ... > policy.hcl; vault policy write kms-plugin policy.hcl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := serveconfig.ApplyConfigFile(cmd.Flags()); err != nil {
				return err
			}
			namespace, mount, key := vaultFlags.TransitKey(os.Getenv)
			if key == "" {
				return errors.New("--vault-transit-key is required")
			}
			hcl, err := policy.HCL(policy.Options{Mount: mount, Key: key, Namespace: namespace, Name: name})
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), hcl)
			return err
		},
	}
	serveconfig.AddFlags(cmd.Flags(), &o, all)
	cmd.Flags().StringVar(&name, "policy-name", "kms-plugin", "policy name in the printed 'vault policy write' line")
	return cmd
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/rollout"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

func newRolloutStatusCommand() *cobra.Command {
	var kube kubeFlags
	var configFile string
	var timeout, interval time.Duration
	var vaultKey rolloutVault
	cmd := &cobra.Command{
		Use:   "rollout-status",
		Short: "Wait until every apiserver runs an EncryptionConfiguration file and writes under the same key ids",
		Long: `Says, per apiserver (the endpoints of the kubernetes Service, or --apiservers), which
EncryptionConfiguration it has loaded (the apiserver_encryption_config_controller_last_config_info
hash, compared with the hash of --encryption-config's bytes), whether an automatic reload was
rejected, and per KMS v2 provider which key id it writes with (compared across apiservers and,
where the plugin's socket is reachable, with the key id the plugin reports). It waits, printing
the table each round, until all agree or --timeout passes.

With serve's --vault-* flags (those of the Vault plugin: address, TLS, transit key, auth;
or --plugin-config, the plugin's serve --config file, for those not given) it
also reads the transit key's latest version and waits until the plugin of that provider
(--kms-provider, default the file's only KMS v2 write provider) reports it and every apiserver
writes under it: after a rotation the plugins keep the version before it until two consecutive
checks have seen the new one, so agreeing apiservers may all still write under the old version.
Key ids known here (the plugins', and with --vault-* every version of the transit key) are shown
beside the hashes the apiservers publish. A provider that an apiserver no longer runs (removed
by a reload, or not in the file the apiserver runs) is left out.

This is the check to run after changing the EncryptionConfiguration or rotating a key, and
before kmsctl rewrite: /readyz/kms-providers says ok even for a configuration without a KMS
provider, and after a rejected reload the apiserver keeps its old configuration silently.

Exit status: 0 when all agree; 3 when they did not within --timeout; 1 when it could not run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile == "" {
				return fmt.Errorf("--encryption-config is required: the file every apiserver should run")
			}
			data, err := os.ReadFile(configFile)
			if err != nil {
				return err
			}
			cfg, err := encryptionconfig.Parse(data)
			if err != nil {
				return fmt.Errorf("%s: %w", configFile, err)
			}
			defer cfg.Close()
			kcfg, err := kube.config()
			if err != nil {
				return err
			}
			var key *transitKey
			withVault, err := vaultKey.given()
			if err != nil {
				return err
			}
			if withVault {
				if key, err = vaultKey.open(cmd.Context(), cfg, cmd.ErrOrStderr()); err != nil {
					return err
				}
				defer key.close()
			}
			out := cmd.OutOrStdout()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			for round := 1; ; round++ {
				want := rollout.Want{ConfigHash: rollout.HashConfig(data), Providers: kmsV2Providers(cfg)}
				want.KeyIDs = scan.PluginKeyIDs(ctx, cfg, io.Discard)
				var bad []string
				if key != nil {
					k, err := key.expect(ctx, &want)
					if err != nil {
						bad = append(bad, err.Error())
					} else {
						latest := want.Latest[key.provider]
						fmt.Fprintf(out, "transit key %s: latest version v%d, key id %s; min_decryption_version %d\n",
							key.path(), k.LatestVersion, want.Name(rollout.HashKeyID(latest)), k.MinDecryptionVersion)
					}
				}
				states, err := kube.states(ctx, kcfg)
				if err != nil {
					return err
				}
				rollout.Prune(states, want)
				bad = append(bad, rollout.Disagreements(states, want)...)
				writeRollout(out, states, want)
				if len(bad) == 0 {
					agree := "the same key ids"
					if key != nil {
						agree += ", " + key.provider + " under the latest version of " + key.path()
					}
					fmt.Fprintf(out, "all %d apiservers run %s (%s) and write under %s\n", len(states), configFile, rollout.Short(want.ConfigHash), agree)
					return nil
				}
				fmt.Fprintf(out, "waiting (round %d, %s left):\n  %s\n", round, time.Until(deadline(ctx)).Round(time.Second), strings.Join(bad, "\n  "))
				select {
				case <-ctx.Done():
					return checkFailure{fmt.Sprintf("the apiservers did not agree within %s", timeout)}
				case <-time.After(interval):
				}
			}
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	kube.add(fs)
	fs.StringVar(&configFile, "encryption-config", "", "the EncryptionConfiguration file every apiserver should have loaded")
	fs.DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for all apiservers to agree")
	fs.DurationVar(&interval, "interval", 5*time.Second, "time between rounds")
	vaultKey.addFlags(fs)
	return cmd
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// writeRollout prints one line per apiserver and KMS provider: key ids where they are known
// here, always with the hash the apiserver publishes.
func writeRollout(w io.Writer, states []rollout.State, want rollout.Want) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := "APISERVER\tCONFIG\tRELOAD FAILURES\tPROVIDER\tWRITES WITH\tPLUGIN KEY"
	if want.Latest != nil {
		header += "\tLATEST KEY"
	}
	fmt.Fprintln(tw, header)
	for _, s := range states {
		if s.Err != "" {
			fmt.Fprintf(tw, "%s\terror: %s\t\t\t\t\n", s.Endpoint, s.Err)
			continue
		}
		config := rollout.Short(s.ConfigHash)
		if want.ConfigHash != "" {
			if s.ConfigHash == want.ConfigHash {
				config += " (the file)"
			} else {
				config += " (NOT the file)"
			}
		}
		names := make([]string, 0, len(s.Providers))
		for n := range s.Providers {
			names = append(names, n)
		}
		sort.Strings(names)
		if len(names) == 0 {
			names = []string{"-"}
		}
		for _, n := range names {
			pk := s.Providers[n]
			line := fmt.Sprintf("%s\t%s\t%g\t%s\t%s\t%s", s.Endpoint, config, s.ReloadFailures, n, want.Name(pk.WritesWith()), keyOf(want, want.KeyIDs, n))
			if want.Latest != nil {
				line += "\t" + keyOf(want, want.Latest, n)
			}
			fmt.Fprintln(tw, line)
		}
	}
	tw.Flush()
}

// keyOf shows provider n's key id of ids, with its hash; "-" if there is none.
func keyOf(want rollout.Want, ids map[string]string, n string) string {
	id, ok := ids[n]
	if !ok {
		return "-"
	}
	return want.Name(rollout.HashKeyID(id))
}

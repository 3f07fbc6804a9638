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
)

func newRolloutStatusCommand() *cobra.Command {
	var kube kubeFlags
	var configFile string
	var timeout, interval time.Duration
	cmd := &cobra.Command{
		Use:   "rollout-status",
		Short: "Wait until every apiserver runs an EncryptionConfiguration file and writes under the same key ids",
		Long: `Says, per apiserver (the endpoints of the kubernetes Service, or --apiservers), which
EncryptionConfiguration it has loaded (the apiserver_encryption_config_controller_last_config_info
hash, compared with the hash of --encryption-config's bytes), whether an automatic reload was
rejected, and per KMS v2 provider which key id it writes with (compared across apiservers and,
where the plugin's socket is reachable, with the key id the plugin reports). It waits, printing
the table each round, until all agree or --timeout passes.

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
			out := cmd.OutOrStdout()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			want := rollout.Want{ConfigHash: rollout.HashConfig(data)}
			for round := 1; ; round++ {
				want.KeyIDs = pluginKeyIDs(ctx, cfg, io.Discard)
				states, err := kube.states(ctx, kcfg)
				if err != nil {
					return err
				}
				bad := rollout.Disagreements(states, want)
				writeRollout(out, states, want)
				if len(bad) == 0 {
					fmt.Fprintf(out, "all %d apiservers run %s (%s) and write under the same key ids\n", len(states), configFile, rollout.Short(want.ConfigHash))
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
	return cmd
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// writeRollout prints one line per apiserver and KMS provider.
func writeRollout(w io.Writer, states []rollout.State, want rollout.Want) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APISERVER\tCONFIG\tRELOAD FAILURES\tPROVIDER\tWRITES WITH\tPLUGIN KEY")
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
			plugin := "-"
			if id, ok := want.KeyIDs[n]; ok {
				plugin = rollout.Short(rollout.HashKeyID(id))
			}
			fmt.Fprintf(tw, "%s\t%s\t%g\t%s\t%s\t%s\n", s.Endpoint, config, s.ReloadFailures, n, rollout.Short(pk.WritesWith()), plugin)
		}
	}
	tw.Flush()
}

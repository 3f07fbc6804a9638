package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

type scanOptions struct {
	etcd            etcdFlags
	configFile      string
	output, root    string
	pageSize        int64
	timeout         time.Duration
	failOnStale     bool
	failOnPlaintext []string
	failOnVaultKMS  bool
	recovery        recoveryFlag
	failUnrecover   bool
}

func newScanCommand() *cobra.Command {
	var o scanOptions
	cmd := &cobra.Command{
		Use:   "scan",
		Short: "Report how the objects in etcd are stored: plaintext, which provider and key, stale or current",
		Long: `Walks every key under /registry/ in etcd (read-only, a page at a time, at one revision) and
counts, per resource, the objects stored in plaintext, with each local provider and key name, and
with each KMS provider and key id. Nothing is decrypted.

With --encryption-config it also flags objects that are not on their resource's write key: for
a KMS v2 provider the key id its plugin reports by Status over the socket named in the config
(so run scan where that socket is reachable), for aescbc/aesgcm/secretbox the first key of the
provider, for identity plaintext. A rotation's storage migration is complete when nothing is
stale. Objects whose DEK seed vault-kubernetes-kms encrypted are counted apart, by transit key
version (docs/migration.md). See docs/guide.md.

Objects whose plugin ciphertext carries a recovery seal (kms-plugin's envelope format v3) are
listed under the id of their recovery key (RECOVERY KEY). With --recovery-private-key scan also
decrypts, with that key alone (no plugin, no Vault), every kms v2 value whole (its DEK seed,
then its data, bound to its etcd key, as kmsctl decrypt does) and reports how many open: a
recovery drill's proof that every object can be read without Vault (--fail-on-unrecoverable
exits 3 otherwise). The plaintext is cleared, never printed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runScan(cmd, o) },
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	o.etcd.add(fs, []string{"https://127.0.0.1:2379"})
	fs.StringVar(&o.configFile, "encryption-config", "", "the apiserver's EncryptionConfiguration file: flags objects not on the write key")
	fs.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	fs.StringVar(&o.root, "prefix", scan.DefaultRoot, "etcd key prefix to walk (the apiserver's --etcd-prefix plus /)")
	fs.Int64Var(&o.pageSize, "page-size", scan.DefaultPageSize, "keys per etcd request (bounds memory)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "deadline for the whole scan")
	fs.BoolVar(&o.failOnStale, "fail-on-stale", false, "exit 3 if any object is not on its write key (needs --encryption-config)")
	fs.BoolVar(&o.failOnVaultKMS, "fail-on-vault-kubernetes-kms", false, "exit 3 if any object is still in vault-kubernetes-kms's envelope format (the check before turning the Vault plugin's --vault-read-vault-kubernetes-kms off)")
	fs.StringSliceVar(&o.failOnPlaintext, "fail-on-plaintext", nil, "exit 3 if any object of these resources (e.g. secrets,configmaps) is stored in plaintext")
	o.recovery.add(fs)
	fs.BoolVar(&o.failUnrecover, "fail-on-unrecoverable", false, "exit 3 if some kms v2 object does not open with --recovery-private-key")
	return cmd
}

func runScan(cmd *cobra.Command, o scanOptions) error {
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("--output %q: want table or json", o.output)
	}
	if o.failOnStale && o.configFile == "" {
		return fmt.Errorf("--fail-on-stale needs --encryption-config")
	}
	if o.failUnrecover && o.recovery.path == "" {
		return fmt.Errorf("--fail-on-unrecoverable needs --recovery-private-key")
	}
	key, err := o.recovery.load(cmd.InOrStdin())
	if err != nil {
		return err
	}
	var cfg *encryptionconfig.Config
	if o.configFile != "" {
		var err error
		if cfg, err = encryptionconfig.Load(o.configFile); err != nil {
			return err
		}
		defer cfg.Close()
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	client, err := o.etcd.client(ctx)
	if err != nil {
		return err
	}
	defer client.Close()

	opts := scan.Options{Root: o.root, PageSize: o.pageSize, Config: cfg}
	if key != nil {
		opts.Recovery, opts.RecoveryKey = recoveryClient{s: recoverySealer(key)}, key.ID().String()
	}
	rep, err := scan.Scan(ctx, client, opts)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: no answer from etcd at %s within --timeout; check the endpoints and --etcd-cacert/--etcd-cert/--etcd-key", err, strings.Join(o.etcd.endpoints, ","))
	}
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if o.output == "json" {
		err = rep.WriteJSON(out)
	} else {
		err = rep.WriteTable(out)
	}
	if err != nil {
		return err
	}
	if c := rep.Recovery; o.failUnrecover && c.Opened < c.KMSv2 {
		return checkFailure{fmt.Sprintf("%d of %d kms v2 objects do not open with recovery key %s", c.KMSv2-c.Opened, c.KMSv2, c.Key)}
	}
	if o.failOnStale && rep.Stale > 0 {
		return checkFailure{fmt.Sprintf("%d objects are not on their write key", rep.Stale)}
	}
	if n := len(rep.VaultKubernetesKMS); o.failOnVaultKMS && n > 0 {
		return checkFailure{fmt.Sprintf("objects in vault-kubernetes-kms's format remain under %d transit key versions", n)}
	}
	for _, want := range o.failOnPlaintext {
		for _, r := range rep.Resources {
			if r.Plaintext > 0 && strings.EqualFold(r.Resource, want) {
				return checkFailure{fmt.Sprintf("%d %s are stored in plaintext", r.Plaintext, r.Resource)}
			}
		}
	}
	return nil
}

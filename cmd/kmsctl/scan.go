package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kmsplugin/kms-plugin/internal/tlsfiles"
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
stale. See docs/guide.md.`,
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
	fs.StringSliceVar(&o.failOnPlaintext, "fail-on-plaintext", nil, "exit 3 if any object of these resources (e.g. secrets,configmaps) is stored in plaintext")
	return cmd
}

func runScan(cmd *cobra.Command, o scanOptions) error {
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("--output %q: want table or json", o.output)
	}
	if o.failOnStale && o.configFile == "" {
		return fmt.Errorf("--fail-on-stale needs --encryption-config")
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

	rep, err := scan.Scan(ctx, client, scan.Options{Root: o.root, PageSize: o.pageSize, Config: cfg})
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
	if o.failOnStale && rep.Stale > 0 {
		return checkFailure{fmt.Sprintf("%d objects are not on their write key", rep.Stale)}
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

// etcdFlags are the flags that reach etcd, shared by every command that reads it.
type etcdFlags struct {
	endpoints                 []string
	caFile, certFile, keyFile string
}

// add registers the flags; defaultEndpoints is nil where etcd access is optional.
func (e *etcdFlags) add(fs *pflag.FlagSet, defaultEndpoints []string) {
	fs.StringSliceVar(&e.endpoints, "etcd-endpoints", defaultEndpoints, "etcd client URLs (comma-separated)")
	fs.StringVar(&e.caFile, "etcd-cacert", "", "CA bundle that signed etcd's server certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)")
	fs.StringVar(&e.certFile, "etcd-cert", "", "client certificate for etcd (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.crt)")
	fs.StringVar(&e.keyFile, "etcd-key", "", "client key for etcd (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.key)")
}

// client connects to etcd; ctx bounds the dial and every request.
func (e *etcdFlags) client(ctx context.Context) (*clientv3.Client, error) {
	tlsConfig, err := etcdTLS(e.caFile, e.certFile, e.keyFile)
	if err != nil {
		return nil, err
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints: e.endpoints, TLS: tlsConfig, DialTimeout: 10 * time.Second,
		Logger: zap.NewNop(), Context: ctx,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return client, nil
}

// etcdTLS builds the client TLS config; none of the files means plain http endpoints.
func etcdTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("--etcd-cert and --etcd-key go together")
	}
	cfg, err := tlsfiles.Files{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}.Client()
	if err != nil {
		return nil, fmt.Errorf("--etcd-cacert, --etcd-cert, --etcd-key: %w", err)
	}
	return cfg, nil
}

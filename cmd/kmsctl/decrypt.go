package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/providers"
	"github.com/kmsplugin/kms-plugin/storage/storedobject"
)

// maxValueSize bounds what decrypt and encrypt read; etcd's own request limit is 1.5 MiB.
const maxValueSize = 64 << 20

// valueOptions are the flags decrypt and encrypt share: which config, which etcd key.
type valueOptions struct {
	configFile, etcdKey, resource, in string
}

func (o *valueOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.configFile, "encryption-config", "", "the apiserver's EncryptionConfiguration file (its --encryption-provider-config)")
	fs.StringVar(&o.etcdKey, "etcd-key", "", "the object's etcd key, e.g. /registry/secrets/default/db (aesgcm and kms authenticate it)")
	fs.StringVar(&o.resource, "resource", "", "resource[.group] whose providers apply, as the config spells it (default: from --etcd-key)")
	fs.StringVar(&o.in, "in", "-", "file to read, or - for stdin")
}

// chain loads the config and picks the resource's provider chain, as the apiserver would.
// With a recovery key (non-nil) every kms v2 provider reads with it alone (recovery.go).
func (o *valueOptions) chain(k *recovery.PrivateKey) (*providers.Chain, *encryptionconfig.Config, error) {
	if o.configFile == "" || o.etcdKey == "" {
		return nil, nil, errors.New("--encryption-config and --etcd-key are required")
	}
	gr, err := o.groupResource()
	if err != nil {
		return nil, nil, err
	}
	cfg, err := recoveryConfig(o.configFile, k)
	if err != nil {
		return nil, nil, err
	}
	return cfg.TransformerFor(gr), cfg, nil
}

func (o *valueOptions) groupResource() (encryptionconfig.GroupResource, error) {
	if o.resource != "" {
		return encryptionconfig.ParseGroupResource(o.resource), nil
	}
	const root = "/registry/"
	if !strings.HasPrefix(o.etcdKey, root) {
		return encryptionconfig.GroupResource{}, fmt.Errorf("--etcd-key %q is not under %s: pass --resource", o.etcdKey, root)
	}
	r := encryptionconfig.ResourceOf(root, o.etcdKey)
	if !r.Known {
		return encryptionconfig.GroupResource{}, fmt.Errorf("cannot tell the resource of %q: pass --resource", o.etcdKey)
	}
	return r.GroupResource, nil
}

func (o *valueOptions) read(stdin io.Reader) ([]byte, error) {
	r := stdin
	if o.in != "-" {
		f, err := os.Open(o.in)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxValueSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxValueSize {
		return nil, fmt.Errorf("input larger than %d bytes", maxValueSize)
	}
	return b, nil
}

func newDecryptCommand() *cobra.Command {
	var o valueOptions
	var rf recoveryFlag
	var output string
	cmd := &cobra.Command{
		Use:   "decrypt",
		Short: "Decrypt a value read from etcd with the apiserver's EncryptionConfiguration, offline",
		Long: `Reads a value as stored in etcd (for example from 'etcdctl get --print-value-only KEY') and
writes the object exactly as the apiserver stored it before encryption: Kubernetes protobuf
(starting "k8s\x00") for built-in types, JSON for custom resources. --output yaml or json
decodes it with client-go's scheme instead.

The providers are those the config gives the resource, tried in order as the apiserver does:
aescbc, aesgcm, secretbox and identity locally, kms v2 (and v1) through the plugin socket the
config names. The etcd key must be the object's own: aesgcm and kms authenticate it.

With --recovery-private-key the kms v2 providers need neither their plugin nor Vault: values
whose plugin ciphertext carries a seal of that recovery key (envelope format v3) are read with
it alone; others fail and say so. Read the key from a file (mode 0600) or from stdin (-, then
give the value with --in).`,
		Example: `  ETCDCTL_API=3 etcdctl get --print-value-only /registry/secrets/default/db |
    kmsctl decrypt --encryption-config /etc/kubernetes/enc.yaml --etcd-key /registry/secrets/default/db -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "raw" && output != "yaml" && output != "json" {
				return fmt.Errorf("--output %q: want raw, yaml or json", output)
			}
			if rf.path == "-" && o.in == "-" {
				return errors.New("--recovery-private-key - reads the key from stdin: give the value with --in FILE")
			}
			key, err := rf.load(cmd.InOrStdin())
			if err != nil {
				return err
			}
			data, err := o.read(cmd.InOrStdin())
			if err != nil {
				return err
			}
			chain, cfg, err := o.chain(key)
			if err != nil {
				return err
			}
			defer cfg.Close()
			plain, err := chain.Decrypt(cmd.Context(), data, []byte(o.etcdKey))
			if trimmed, ok := bytes.CutSuffix(data, []byte("\n")); err != nil && ok {
				// 'etcdctl get --print-value-only' adds a newline that is not part of the value.
				// Only tried after the exact bytes failed: a value may end in 0x0a itself.
				if p, err2 := chain.Decrypt(cmd.Context(), trimmed, []byte(o.etcdKey)); err2 == nil {
					plain, err = p, nil
				}
			}
			if err != nil {
				return fmt.Errorf("decrypting %s: %w", o.etcdKey, err)
			}
			// aescbc is not authenticated: a wrong key passes its padding check once in ~256
			// tries and yields garbage, which must not be printed as the object.
			if !storedobject.LooksStored(plain) {
				return fmt.Errorf("decrypting %s: the result is not a stored Kubernetes object (protobuf or JSON): a wrong aescbc key or a corrupted value", o.etcdKey)
			}
			if output != "raw" {
				if plain, err = storedobject.Decode(plain, storedobject.Format(output)); err != nil {
					return err
				}
			}
			_, err = cmd.OutOrStdout().Write(plain)
			return err
		},
	}
	o.addFlags(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "raw", "raw (as the apiserver stored it), yaml or json")
	rf.add(cmd.Flags())
	return cmd
}

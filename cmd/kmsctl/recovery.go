package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/internal/privatefile"
	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
)

// File names of recovery-key --out DIR.
const (
	recoveryPrivateName = "recovery-private.pem"
	recoveryPublicName  = "recovery-public.pem"
)

func newRecoveryKeyCommand() *cobra.Command {
	var out, privPath, pubPath, kemName string
	cmd := &cobra.Command{
		Use:   "recovery-key",
		Short: "Make an offline recovery key pair: serve seals each local KEK to the public half; the private half reads etcd without Vault",
		Long: `Makes an HPKE key pair (RFC 9180: DHKEM(X25519, HKDF-SHA256) by default, or --kem p256 for
DHKEM(P-256, HKDF-SHA256); HKDF-SHA256 and AES-256-GCM) and writes the private key (mode 0600) and
the public key, refusing to overwrite either file.

Give the public key to serve (--recovery-public-key, vault backend in local KEK mode): every
envelope it writes then carries its local KEK sealed to this key (envelope format v3). The
private key never needs to touch a node: keep it offline (an escrow, an HSM, a safe). With it
alone, kmsctl decrypt, scan and rewrite read what the plugin wrote without Vault, and serve's
break-glass mode (--break-glass-recovery-key) serves those reads to an apiserver.

A recovery key deliberately bypasses Vault: deleting the transit key no longer destroys the
data it protected, and reads with it are not in Vault's audit log. See docs/security.md and
docs/disaster-recovery.md before turning it on.`,
		Example: `  kmsctl recovery-key --out /media/escrow
  kmsctl recovery-key --private /media/escrow/recovery-private.pem --public ./recovery-public.pem --kem p256`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out != "" {
				if privPath != "" || pubPath != "" {
					return errors.New("--out, or --private and --public, not both")
				}
				privPath, pubPath = filepath.Join(out, recoveryPrivateName), filepath.Join(out, recoveryPublicName)
			}
			if privPath == "" || pubPath == "" {
				return errors.New("name where the keys go: --out DIR, or --private FILE and --public FILE")
			}
			kem, err := recovery.KEMByName(kemName)
			if err != nil {
				return err
			}
			for _, p := range []string{privPath, pubPath} {
				if _, err := os.Lstat(p); err == nil {
					return fmt.Errorf("%s exists: not overwriting a recovery key (move it away first)", p)
				}
			}
			key, err := recovery.Generate(kem)
			if err != nil {
				return err
			}
			priv, err := key.MarshalPrivate()
			if err != nil {
				return err
			}
			defer clear(priv)
			if err := privatefile.Write(privPath, priv, false); err != nil {
				return fmt.Errorf("writing the private key: %w", err)
			}
			if err := writeNew(pubPath, key.Public().MarshalPublic()); err != nil {
				return fmt.Errorf("writing the public key: %w (the private key is in %s)", err, privPath)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "recovery key %s (%s)\n  private key: %s (keep it offline; it reads every envelope sealed to this key)\n  public key:  %s (serve --recovery-public-key)\n",
				key.ID(), recovery.KEMName(kem), privPath, pubPath)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&out, "out", "", "directory to write "+recoveryPrivateName+" and "+recoveryPublicName+" into")
	fs.StringVar(&privPath, "private", "", "file to write the private key to (mode 0600; instead of --out)")
	fs.StringVar(&pubPath, "public", "", "file to write the public key to (instead of --out)")
	fs.StringVar(&kemName, "kem", "x25519", "HPKE KEM: x25519 (DHKEM(X25519)) or p256 (DHKEM(P-256), for FIPS-minded operators)")
	return cmd
}

// writeNew writes a public file (0644), refusing to overwrite one.
func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// recoveryFlag is --recovery-private-key, shared by decrypt and scan (rewrite reads through the
// apiserver, whose plugin holds the key in break-glass mode).
type recoveryFlag struct{ path string }

func (r *recoveryFlag) add(fs *pflag.FlagSet) {
	fs.StringVar(&r.path, "recovery-private-key", "", "recovery private key file (or - for stdin): read kms v2 values whose plugin ciphertext carries its seal with it alone, no plugin and no Vault")
}

// load reads the private key, or returns nil without the flag. The bytes read are cleared
// once parsed; crypto/hpke's key object itself cannot be cleared.
func (r *recoveryFlag) load(stdin io.Reader) (*recovery.PrivateKey, error) {
	if r.path == "" {
		return nil, nil
	}
	text, err := privatefile.ReadOrStdin(r.path, stdin)
	defer clear(text)
	if err != nil {
		return nil, fmt.Errorf("--recovery-private-key: %w", err)
	}
	k, err := recovery.ParsePrivate(text)
	if err != nil {
		return nil, fmt.Errorf("--recovery-private-key: %w", err)
	}
	return k, nil
}

// recoveryConfig loads the EncryptionConfiguration with every kms v2 provider answered by
// the recovery key (k non-nil), or as usual.
func recoveryConfig(path string, k *recovery.PrivateKey) (*encryptionconfig.Config, error) {
	if k == nil {
		return encryptionconfig.Load(path)
	}
	client := recoveryClient{s: recoverySealer(k)}
	return encryptionconfig.LoadWith(path, encryptionconfig.Options{
		KMSv2: func(string, string) kmsapi.KeyManagementServiceClient { return client },
	})
}

// recoverySealer reads envelopes with the recovery key alone.
func recoverySealer(k *recovery.PrivateKey) *dek.Sealer {
	return dek.NewSealer(noBackend{}).OpenWith(dek.NewRecovery(k))
}

// noBackend is the backend of a read with the recovery key alone: there is none.
type noBackend struct{}

var errNoBackend = fmt.Errorf("%w: kmsctl was given only the recovery private key, and this envelope carries no seal of it (written before the recovery key was configured, or sealed to another recovery key)", dek.ErrUnknownKey)

func (noBackend) CurrentID() string           { return "" }
func (noBackend) Check(context.Context) error { return errNoBackend }
func (noBackend) Wrap(context.Context, string, []byte) ([]byte, error) {
	return nil, errNoBackend
}
func (noBackend) Unwrap(context.Context, string, []byte) ([]byte, error) {
	return nil, errNoBackend
}

// recoveryClient answers the kms v2 provider's Decrypt in process, with the recovery key; it
// never encrypts.
type recoveryClient struct{ s *dek.Sealer }

func (c recoveryClient) Decrypt(ctx context.Context, in *kmsapi.DecryptRequest, _ ...grpc.CallOption) (*kmsapi.DecryptResponse, error) {
	plain, _, err := c.s.Decrypt(ctx, in.Ciphertext)
	if err != nil {
		return nil, status.Error(dek.Classify(ctx, err).Code, err.Error())
	}
	return &kmsapi.DecryptResponse{Plaintext: plain}, nil
}

func (recoveryClient) Encrypt(context.Context, *kmsapi.EncryptRequest, ...grpc.CallOption) (*kmsapi.EncryptResponse, error) {
	return nil, status.Error(codes.FailedPrecondition, "the recovery private key only reads: write through the apiserver with a working plugin")
}

func (recoveryClient) Status(context.Context, *kmsapi.StatusRequest, ...grpc.CallOption) (*kmsapi.StatusResponse, error) {
	return nil, status.Error(codes.FailedPrecondition, "the recovery private key has no current key id")
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/cmd/internal/serveconfig"
	"github.com/kmsplugin/kms-plugin/doctor"
	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

type doctorOptions struct {
	running     bool
	etcd        etcdFlags
	etcdRoot    string
	kmsProvider string
	etcdTimeout time.Duration
}

func newDoctorCommand() *cobra.Command {
	var o serveconfig.Options
	var d doctorOptions
	all, _ := serveconfig.Backends()
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what serve needs (socket, file permissions, Vault, key, policy); one line per check",
		Long: `Runs the checks that tell, before the plugin serves (or beside a running one), whether it
can, each check that serve also makes being serve's own: the socket path is usable (with
--running: a plugin answers Status there), --health-addr can be bound (with --running: the
plugin's /healthz answers there), credential files are private, and for --backend vault: the
backend opens with these settings, Vault is reachable and unsealed, the login works, the
token's capabilities are exactly what 'kmsctl policy' prints (missing ones fail, extra ones
warn), the transit key is safely configured (authenticated cipher, not exportable, not
deletable, min_decryption_version not above a version still used in etcd, with
--etcd-endpoints, which also counts the objects under each version; with --running, the
plugin's key id names the key's latest version), whether vault-kubernetes-kms's envelopes
will read (with --vault-read-vault-kubernetes-kms: the token may decrypt with the key, and how
many there are per version; without it, a failure if etcd still holds any), and an
encrypt/decrypt round trip works; for
--backend localaes: the key file loads. It takes the same flags (and --config file) as serve.

Each line starts with ok, warn or FAIL, then what was checked, what was found and how to fix
it. Exit status 3 if any check failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := serveconfig.ApplyConfigFile(cmd.Flags()); err != nil {
				return err
			}
			return runDoctor(cmd, o, d, all)
		},
	}
	serveconfig.AddFlags(cmd.Flags(), &o, all)
	fs := cmd.Flags()
	fs.BoolVar(&d.running, "running", false, "a plugin should already serve on --listen: check its Status instead of the path being free")
	d.etcd.add(fs, nil)
	// Optional for doctor: say what reading etcd is for here.
	fs.Lookup("etcd-endpoints").Usage = "etcd client URLs: check min_decryption_version against the key ids stored there (as scan reads them)"
	fs.StringVar(&d.etcdRoot, "etcd-prefix", scan.DefaultRoot, "etcd key prefix of the apiserver's objects")
	fs.StringVar(&d.kmsProvider, "kms-provider", "", "count only values of this KMS provider name of the EncryptionConfiguration (default: every vault key id)")
	fs.DurationVar(&d.etcdTimeout, "etcd-timeout", 2*time.Minute, "deadline for reading etcd")
	return cmd
}

func runDoctor(cmd *cobra.Command, o serveconfig.Options, d doctorOptions, all []serveconfig.Backend) error {
	path, err := kmsclient.SocketPath(o.Listen)
	if err != nil {
		return err
	}
	if _, err := serveconfig.SocketOptions(o.SocketMode, o.SocketGroup); err != nil {
		return err // as serve refuses them
	}
	chosen, err := serveconfig.Choose(cmd.Flags(), o, all)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	rep := doctor.Report(doctor.Socket(ctx, path, d.running))
	rep = append(rep, doctor.HealthAddr(ctx, o.Ops.HealthAddr, d.running))
	switch b := chosen.(type) {
	case *serveconfig.LocalAES:
		if b.CreatesKeyFile(cmd.Flags()) {
			rep = append(rep, doctor.Result{Status: doctor.Warn, Check: "localaes key file",
				Detail: b.KeyFile + " does not exist: serve will create a new key there",
				Fix:    "create keys with 'kmsctl keygen', back them up, and pass --localaes-key-file"})
			break
		}
		rep = append(rep, doctor.Files([]doctor.File{doctor.KeyFile(b.KeyFile)})...)
		rep = append(rep, doctor.LocalAES(b.KeyFile))
	case *serveconfig.Vault:
		cfg, err := b.Config(os.Getenv, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		rep = append(rep, doctor.Files(doctor.VaultFiles(cfg))...)
		// What serve keeps across restarts: the checks serve's start makes, bar the TPM's own
		// commands (doctor changes nothing in the TPM).
		switch store, err := b.KeepPreflight(cmd.Flags()); {
		case err != nil:
			rep = append(rep, doctor.Result{Status: doctor.Fail, Check: "kept state", Detail: err.Error(),
				Fix: "fix the directory or the TPM device, or --vault-keep-memory off (docs/vault.md, Restart during an outage)"})
		case store != "":
			rep = append(rep, doctor.Result{Status: doctor.OK, Check: "kept state", Detail: store})
		}
		vo := doctor.VaultOptions{Config: cfg, Timeout: o.Timeout}
		if len(d.etcd.endpoints) > 0 {
			vo.KeyIDsInUse = d.keyIDsInUse
		}
		if d.running {
			vo.PluginKeyID = doctor.PluginKeyID(ctx, path)
		}
		rep = append(rep, doctor.Vault(ctx, vo)...)
	}
	rep = append(rep, recoveryCheck(cmd, o)...)
	if err := rep.Write(cmd.OutOrStdout()); err != nil {
		return err
	}
	if n := rep.Failed(); n > 0 {
		return checkFailure{fmt.Sprintf("doctor: %d of %d checks failed", n, len(rep))}
	}
	return nil
}

// keyIDsInUse reads the key ids stored in etcd, as scan does.
func (d doctorOptions) keyIDsInUse(ctx context.Context) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(ctx, d.etcdTimeout)
	defer cancel()
	client, err := d.etcd.client(ctx)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	return doctor.KeyIDsInEtcd(ctx, client, d.etcdRoot, d.kmsProvider)
}

// recoveryCheck judges the recovery flags as serve does (serveconfig.RecoveryOptions): the
// key files, the backend they need, the break-glass expiry. Nothing when they are not given.
func recoveryCheck(cmd *cobra.Command, o serveconfig.Options) []doctor.Result {
	const check = "recovery key"
	localKEK, _ := cmd.Flags().GetBool("vault-local-kek")
	rc, err := o.Recovery.Recovery(o.Backend, localKEK, cmd.InOrStdin(), time.Now())
	switch {
	case err != nil:
		return []doctor.Result{{Status: doctor.Fail, Check: check, Detail: err.Error(), Fix: "see docs/disaster-recovery.md"}}
	case rc == nil:
		return nil
	}
	var parts []string
	if rc.Seal != nil {
		parts = append(parts, "each local KEK is sealed to recovery key "+rc.Seal.ID().String())
	}
	if rc.BreakGlass != nil {
		parts = append(parts, fmt.Sprintf("BREAK-GLASS with recovery key %s until %s", rc.BreakGlass.ID(), rc.Until.UTC().Format(time.RFC3339)))
		return []doctor.Result{{Status: doctor.Warn, Check: check, Detail: strings.Join(parts, "; "),
			Fix: "leave break-glass mode once everything is rewritten to the new key (docs/disaster-recovery.md)"}}
	}
	return []doctor.Result{{Status: doctor.OK, Check: check, Detail: strings.Join(parts, "; ")}}
}

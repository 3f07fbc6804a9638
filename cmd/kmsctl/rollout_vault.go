package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/cmd/internal/serveconfig"
	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/providers"
	"github.com/kmsplugin/kms-plugin/storage/rollout"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

// rolloutVault is rollout-status's look at the Vault transit key behind a KMS provider. After
// `vault write -f transit/keys/<key>/rotate` the plugins keep reporting the version before it
// until two consecutive checks have seen the new one, and the apiservers follow them, so
// apiservers and plugins that agree may all still be on the old version. Given serve's
// --vault-* flags (the same flags, read the same way as serve and doctor read them),
// rollout-status reads the key's latest version and waits until the plugin and every apiserver
// use it.
type rolloutVault struct {
	backend      *serveconfig.Vault
	provider     string
	pluginConfig string
	fs           *pflag.FlagSet
}

// memoryFlags are serve's settings of what it keeps in memory: accepted, so that the plugin's
// command line can be copied, but of no use here.
var memoryFlags = []string{"vault-dek-cache-size", "vault-local-kek", "vault-local-kek-max-age", "vault-memory-grace"}

func (v *rolloutVault) addFlags(fs *pflag.FlagSet) {
	v.fs = fs
	v.backend = &serveconfig.Vault{}
	v.backend.AddFlags(fs)
	for _, name := range memoryFlags {
		_ = fs.MarkHidden(name)
	}
	fs.StringVar(&v.pluginConfig, "plugin-config", "", "the Vault plugin's serve --config file: its --vault-* settings, for those not given here")
	fs.StringVar(&v.provider, "kms-provider", "", "with the --vault-* flags: the KMS v2 provider of --encryption-config that the Vault plugin serves (default: the file's only KMS v2 write provider)")
}

// given reports whether any --vault-* flag is set, on the command line or by --plugin-config.
func (v *rolloutVault) given() (bool, error) {
	if v.pluginConfig != "" {
		if err := serveconfig.ApplyVaultSettings(v.fs, v.pluginConfig, "--plugin-config"); err != nil {
			return false, err
		}
	}
	set := false
	v.fs.Visit(func(f *pflag.Flag) { set = set || strings.HasPrefix(f.Name, "vault-") })
	return set, nil
}

// transitKey is a logged-in view of the transit key, for one rollout-status run.
type transitKey struct {
	cfg      vault.Config
	session  *vault.Session
	provider string // the KMS provider whose plugin wraps with it
}

// open logs in to Vault as serve would, and picks the KMS provider the key is behind.
func (v *rolloutVault) open(ctx context.Context, cfg *encryptionconfig.Config, log io.Writer) (*transitKey, error) {
	vcfg, err := v.backend.Config(os.Getenv, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	for _, risk := range vcfg.Risks() { // what serve warns of
		fmt.Fprintln(log, "warning: "+risk)
	}
	vcfg = vcfg.WithDefaults()
	provider, err := v.providerOf(cfg)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	session, err := vault.Login(lctx, vcfg)
	if err != nil {
		return nil, fmt.Errorf("vault login (%s): %w", vcfg.Auth.Method(), err)
	}
	return &transitKey{cfg: vcfg, session: session, provider: provider}, nil
}

// providerOf is --kms-provider, checked against the file, or the file's only KMS v2 write provider.
func (v *rolloutVault) providerOf(cfg *encryptionconfig.Config) (string, error) {
	if v.provider != "" {
		if !slices.Contains(kmsV2Providers(cfg), v.provider) {
			return "", fmt.Errorf("--kms-provider %q: the EncryptionConfiguration has no KMS v2 provider of that name", v.provider)
		}
		return v.provider, nil
	}
	writers := scan.WriteKMSv2Providers(cfg)
	switch len(writers) {
	case 1:
		return writers[0].Name, nil
	case 0:
		return "", errors.New("the --vault-* flags: the EncryptionConfiguration writes with no KMS v2 provider; name the Vault plugin's provider with --kms-provider")
	}
	var names []string
	for _, p := range writers {
		names = append(names, p.Name)
	}
	return "", fmt.Errorf("the --vault-* flags: the EncryptionConfiguration writes with several KMS v2 providers (%s); name the Vault plugin's with --kms-provider", strings.Join(names, ", "))
}

// close revokes the token if the login created one.
func (k *transitKey) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k.session.Logout(ctx)
}

// path is the key's path, for messages.
func (k *transitKey) path() string { return vault.KeyPath(k.cfg.Mount, k.cfg.Key) }

// expect reads the key and sets, in want, the key id of its latest version as the one the
// provider's plugin must report, and the key ids of every version that can still decrypt, so
// that the table shows key ids for the apiservers' key id hashes.
func (k *transitKey) expect(ctx context.Context, want *rollout.Want) (vault.Key, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	secret, err := vault.ReadKey(rctx, k.session.Client, k.cfg.Mount, k.cfg.Key)
	if err != nil {
		return vault.Key{}, fmt.Errorf("reading %s: %w", k.path(), err)
	}
	if secret == nil {
		return vault.Key{}, fmt.Errorf("transit key %s does not exist", k.path())
	}
	key, err := vault.ParseKey(secret)
	if err != nil {
		return vault.Key{}, fmt.Errorf("reading %s: %w", k.path(), err)
	}
	latest, ok := key.KeyID(key.LatestVersion)
	if !ok {
		return vault.Key{}, fmt.Errorf("reading %s: latest version %d is not listed", k.path(), key.LatestVersion)
	}
	want.Latest = map[string]string{k.provider: latest}
	versions := make([]int, 0, len(key.Created))
	for v := range key.Created {
		versions = append(versions, v)
	}
	sort.Ints(versions)
	for _, v := range versions {
		id, _ := key.KeyID(v)
		want.Learn(id)
	}
	return key, nil
}

// kmsV2Providers names every KMS v2 provider of cfg, once each.
func kmsV2Providers(cfg *encryptionconfig.Config) []string {
	out := []string{}
	for _, r := range cfg.Rules() {
		for _, p := range r.Providers {
			if p.Prefix == providers.KMSv2Prefix && !slices.Contains(out, p.Name) {
				out = append(out, p.Name)
			}
		}
	}
	return out
}

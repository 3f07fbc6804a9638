package serveconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/cache"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// The only environment variables the vault backend honours, read here and nowhere else
// (vault/api's own reading of VAULT_* is overridden in backends/vault).
const (
	envVaultAddr      = "VAULT_ADDR"
	envVaultToken     = "VAULT_TOKEN"
	envVaultNamespace = "VAULT_NAMESPACE"
)

type Vault struct {
	addr, caFile, clientCert, clientKey, serverName string
	skipVerify                                      bool
	namespace, mount, key                           string
	auth, tokenFile                                 string
	approleMount, roleID, roleIDFile, secretIDFile  string
	k8sMount, k8sRole, k8sTokenFile                 string
	certMount, certRole, certPEM, certFile, keyFile string
	jwtMount, jwtRole, jwtFile                      string
	capabilitiesInterval                            time.Duration
	readVaultKubernetesKMS                          bool
	memory                                          plugin.MemoryConfig
	keep                                            keepFlags
}

// DefaultGrace covers an outage of a working day's first hours, so an on-call engineer can
// restore Vault before the cluster notices; it is also how long memory serves after a Vault
// that cannot be reached anymore was, for example, meant to revoke the plugin (a Vault that
// answers with a refusal ends it at once).
const DefaultGrace = 4 * time.Hour

// addrList is --vault-addr: repeated, or a comma-separated list, kept comma-joined.
type addrList struct{ s *string }

func (a addrList) String() string { return *a.s }
func (a addrList) Type() string   { return "addresses" }
func (a addrList) Set(v string) error {
	if *a.s != "" {
		v = *a.s + "," + v
	}
	*a.s = v
	return nil
}

// splitAddrs splits a comma-separated address list, dropping empty items.
func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func (*Vault) Name() string { return "vault" }

func (b *Vault) AddFlags(fs *pflag.FlagSet) {
	fs.Var(addrList{&b.addr}, "vault-addr", "vault: address, https://host:8200; repeat it or list several, comma-separated, for failover between nodes of one cluster, preferred first (default $"+envVaultAddr+")")
	fs.StringVar(&b.caFile, "vault-ca-file", "", "vault: PEM CA bundle that verifies Vault's certificate (default: system roots)")
	fs.StringVar(&b.clientCert, "vault-client-cert", "", "vault: PEM client certificate for TLS client authentication")
	fs.StringVar(&b.clientKey, "vault-client-key", "", "vault: PEM key of --vault-client-cert")
	fs.StringVar(&b.serverName, "vault-tls-server-name", "", "vault: name to verify in Vault's certificate, if not the address's host")
	fs.BoolVar(&b.skipVerify, "vault-skip-verify", false, "vault: do NOT verify Vault's certificate (tests only; logs a warning)")
	fs.StringVar(&b.namespace, "vault-namespace", "", "vault: Enterprise namespace of the transit mount and auth method (default $"+envVaultNamespace+")")
	fs.StringVar(&b.mount, "vault-transit-mount", "transit", "vault: path of the transit secrets engine")
	fs.StringVar(&b.key, "vault-transit-key", "", "vault: name of the transit key that wraps DEKs (required)")
	fs.StringVar(&b.auth, "vault-auth", "token", "vault: auth method: token, approle, kubernetes, cert or jwt")
	fs.StringVar(&b.tokenFile, "vault-token-file", "", "vault: token auth: file holding the token, re-read when it changes (default $"+envVaultToken+")")
	fs.StringVar(&b.approleMount, "vault-approle-mount", "approle", "vault: approle auth: mount path of the AppRole method")
	fs.StringVar(&b.roleID, "vault-approle-role-id", "", "vault: approle auth: role id")
	fs.StringVar(&b.roleIDFile, "vault-approle-role-id-file", "", "vault: approle auth: file holding the role id (instead of --vault-approle-role-id)")
	fs.StringVar(&b.secretIDFile, "vault-approle-secret-id-file", "", "vault: approle auth: file holding the secret id, re-read at every login")
	fs.StringVar(&b.k8sMount, "vault-kubernetes-mount", "kubernetes", "vault: kubernetes auth: mount path of the Kubernetes method")
	fs.StringVar(&b.k8sRole, "vault-kubernetes-role", "", "vault: kubernetes auth: Vault role to log in as")
	fs.StringVar(&b.k8sTokenFile, "vault-kubernetes-token-file", vault.DefaultServiceAccountTokenFile, "vault: kubernetes auth: service-account JWT file, re-read at every login")
	fs.StringVar(&b.certMount, "vault-cert-auth-mount", "cert", "vault: cert auth: mount path of the TLS certificate method")
	fs.StringVar(&b.certRole, "vault-cert-auth-role", "", "vault: cert auth: certificate role to log in as (default: any role that matches)")
	fs.StringVar(&b.certPEM, "vault-cert-auth-pem", "", "vault: cert auth: PEM file with the client certificate and its key, such as "+vault.DefaultKubeletClientPEM+"; re-read when it changes")
	fs.StringVar(&b.certFile, "vault-cert-auth-cert", "", "vault: cert auth: PEM client certificate (with --vault-cert-auth-key, instead of --vault-cert-auth-pem)")
	fs.StringVar(&b.keyFile, "vault-cert-auth-key", "", "vault: cert auth: PEM key of --vault-cert-auth-cert")
	fs.StringVar(&b.jwtMount, "vault-jwt-mount", "jwt", "vault: jwt auth: mount path of the JWT/OIDC method")
	fs.StringVar(&b.jwtRole, "vault-jwt-role", "", "vault: jwt auth: role to log in as (default: the method's default_role)")
	fs.StringVar(&b.jwtFile, "vault-jwt-token-file", "", "vault: jwt auth: file holding the JWT, re-read when it changes")
	fs.DurationVar(&b.capabilitiesInterval, "vault-capabilities-interval", vault.DefaultCapabilitiesInterval, "vault: how often a check also asks Vault (sys/capabilities-self) whether the token may still encrypt and decrypt: a policy cut is noticed within this plus one --check-interval")
	fs.BoolVar(&b.readVaultKubernetesKMS, "vault-read-vault-kubernetes-kms", false, "vault: also decrypt envelopes that vault-kubernetes-kms wrote with this transit key (Transit's vault:vN: text, 32-byte DEK seeds only), for an in-place switch from it; off once kmsctl scan finds none left (docs/migration.md)")
	fs.IntVar(&b.memory.CacheEntries, "vault-dek-cache-size", cache.DefaultEntries, "vault: unwrapped DEKs and local KEKs held in memory, so repeated and restarted-apiserver Decrypts need no Vault call (never on disk, but for what --vault-keep-memory keeps)")
	fs.BoolVar(&b.memory.LocalKEK, "vault-local-kek", true, "vault: wrap DEKs with a local AES-256 KEK that Vault wraps once and that travels in each envelope, so Encrypt needs no Vault call (envelope format v2; docs/vault.md for downgrades)")
	fs.DurationVar(&b.memory.LocalKEKMaxAge, "vault-local-kek-max-age", dek.DefaultLocalKEKMaxAge, "vault: how long one local KEK wraps new DEKs before a new one is made")
	fs.DurationVar(&b.memory.Grace, "vault-memory-grace", DefaultGrace, "vault: how long after Vault last answered the DEK cache and local KEK keep serving while Vault is unreachable (0: never)")
	b.keep.addFlags(fs)
}

// Open builds the backend (it does not contact Vault: the first check does). Its calls are
// remote and bounded; what it serves from memory and its intervals are its flags'.
func (b *Vault) Open(_ context.Context, fs *pflag.FlagSet, log *slog.Logger) (Opened, error) {
	cfg, err := b.Config(os.Getenv, log)
	if err != nil {
		return Opened{}, err
	}
	if err := b.keep.problems(fs, b.memory); err != nil {
		return Opened{}, err
	}
	for _, risk := range cfg.Risks() {
		log.Warn("##### "+risk+" #####", "vault_addr", cfg.Address)
	}
	kek, err := vault.Open(cfg)
	if err != nil {
		return Opened{}, err
	}
	if cfg.ReadVaultKubernetesKMS {
		log.Warn("reading vault-kubernetes-kms envelopes (--vault-read-vault-kubernetes-kms): turn it off once 'kmsctl scan' finds none left", "transit_key", cfg.Key)
	}
	log.Info("vault backend", "vault_addr", cfg.Address, "failover_addrs", cfg.FailoverAddresses, "namespace", cfg.Namespace, "transit_mount", cfg.Mount, "transit_key", cfg.Key, "auth", cfg.Auth.Method())
	mem := b.memory
	store, err := b.keep.open()
	if err != nil {
		return Opened{}, err
	}
	if store != nil {
		// The kept state belongs to this transit key: restored under another, it would
		// report the old key's id.
		mem.Keep = &plugin.KeepConfig{Store: store, Binding: fmt.Sprintf("vault %s/%s/%s", cfg.Namespace, cfg.Mount, cfg.Key)}
		log.Info("keeping memory across restarts", "store", store.String())
	}
	return Opened{KEK: kek, Remote: true, Memory: &mem, CheckInterval: vault.DefaultCheckInterval, ProofInterval: vault.DefaultProofInterval}, nil
}

// config turns flags and the documented environment variables into the backend's Config.
func (b *Vault) Config(getenv func(string) string, log *slog.Logger) (vault.Config, error) {
	cfg := vault.Config{
		Address: b.addr, CAFile: b.caFile, ClientCert: b.clientCert, ClientKey: b.clientKey,
		TLSServerName: b.serverName, SkipVerify: b.skipVerify, Namespace: b.namespace,
		Mount: b.mount, Key: b.key, CapabilitiesInterval: b.capabilitiesInterval, Log: log,
		ReadVaultKubernetesKMS: b.readVaultKubernetesKMS,
	}
	if cfg.Address == "" {
		cfg.Address = getenv(envVaultAddr)
	}
	if addrs := splitAddrs(cfg.Address); len(addrs) > 0 {
		cfg.Address, cfg.FailoverAddresses = addrs[0], addrs[1:]
	} else {
		return cfg, fmt.Errorf("--vault-addr (or $%s) is required", envVaultAddr)
	}
	if cfg.Namespace == "" {
		cfg.Namespace = getenv(envVaultNamespace)
	}
	if cfg.Key == "" {
		return cfg, errors.New("--vault-transit-key is required")
	}
	switch b.auth {
	case "token":
		switch {
		case b.tokenFile != "":
			cfg.Auth = &vault.TokenFile{Path: b.tokenFile}
		case getenv(envVaultToken) != "":
			cfg.Auth = vault.StaticToken{Token: getenv(envVaultToken)}
		default:
			return cfg, fmt.Errorf("--vault-auth token needs --vault-token-file or $%s", envVaultToken)
		}
	case "approle":
		if (b.roleID == "") == (b.roleIDFile == "") {
			return cfg, errors.New("--vault-auth approle needs one of --vault-approle-role-id and --vault-approle-role-id-file")
		}
		cfg.Auth = vault.AppRole{Mount: b.approleMount, RoleID: b.roleID, RoleIDFile: b.roleIDFile, SecretIDFile: b.secretIDFile}
	case "kubernetes":
		if b.k8sRole == "" {
			return cfg, errors.New("--vault-auth kubernetes needs --vault-kubernetes-role")
		}
		cfg.Auth = vault.Kubernetes{Mount: b.k8sMount, Role: b.k8sRole, JWTFile: b.k8sTokenFile}
	case "cert":
		if (b.certPEM == "") == (b.certFile == "" && b.keyFile == "") || (b.certFile == "") != (b.keyFile == "") {
			return cfg, errors.New("--vault-auth cert needs --vault-cert-auth-pem, or both --vault-cert-auth-cert and --vault-cert-auth-key")
		}
		cfg.Auth = &vault.Cert{Mount: b.certMount, Role: b.certRole, PEMFile: b.certPEM, CertFile: b.certFile, KeyFile: b.keyFile}
	case "jwt":
		if b.jwtFile == "" {
			return cfg, errors.New("--vault-auth jwt needs --vault-jwt-token-file")
		}
		cfg.Auth = &vault.JWT{Mount: b.jwtMount, Role: b.jwtRole, TokenFile: b.jwtFile}
	default:
		return cfg, fmt.Errorf("--vault-auth %q: want token, approle, kubernetes, cert or jwt", b.auth)
	}
	switch {
	case b.memory.CacheEntries < 1:
		return cfg, fmt.Errorf("--vault-dek-cache-size %d: want at least 1", b.memory.CacheEntries)
	case b.memory.LocalKEKMaxAge < time.Minute:
		return cfg, fmt.Errorf("--vault-local-kek-max-age %s: want at least 1m", b.memory.LocalKEKMaxAge)
	case b.capabilitiesInterval < time.Second:
		return cfg, fmt.Errorf("--vault-capabilities-interval %s: want at least 1s", b.capabilitiesInterval)
	case b.memory.Grace < 0:
		return cfg, fmt.Errorf("--vault-memory-grace %s: want 0 or more", b.memory.Grace)
	}
	return cfg, b.keep.problems(nil, b.memory)
}

// TransitKey is the transit key the flags name: its namespace (--vault-namespace, else
// $VAULT_NAMESPACE), mount and name. It needs neither an address nor credentials.
func (b *Vault) TransitKey(getenv func(string) string) (namespace, mount, key string) {
	namespace = b.namespace
	if namespace == "" {
		namespace = getenv(envVaultNamespace)
	}
	return namespace, b.mount, b.key
}

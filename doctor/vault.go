package doctor

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/backends/vault/policy"
	"github.com/kmsplugin/kms-plugin/dek"
)

// VaultOptions configure the Vault checks.
type VaultOptions struct {
	// Config is the backend's configuration, as serve would build it from the same flags.
	Config vault.Config
	// Timeout bounds each Vault request (serve's --timeout).
	Timeout time.Duration
	// KeyIDsInUse, if set, returns the KMS v2 key ids of the objects stored in etcd, with how
	// many objects use each; the check of min_decryption_version needs them.
	KeyIDsInUse func(ctx context.Context) (map[string]int, error)
	// PluginKeyID, if set, is the key id a running plugin reports by Status (--running): it
	// is compared with the transit key's latest version.
	PluginKeyID string
}

// Vault runs the Vault checks in order. A failure that leaves nothing to check further (Vault
// unreachable, no token) ends them.
func Vault(ctx context.Context, o VaultOptions) []Result {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	d := &vaultDoctor{o: o, cfg: o.Config.WithDefaults()}
	out := d.run(ctx)
	if d.revoke != nil {
		d.revoke()
	}
	return out
}

type vaultDoctor struct {
	o      VaultOptions
	cfg    vault.Config
	client *api.Client // with the token, once logged in
	revoke func()      // revokes a token that doctor's own login created

	inUse    map[string]int // KeyIDsInUse's answer, read once
	inUseErr error
	inUseRan bool
}

// keyIDsInUse asks KeyIDsInUse once (it reads all of etcd); nil, nil without it.
func (d *vaultDoctor) keyIDsInUse(ctx context.Context) (map[string]int, error) {
	if d.o.KeyIDsInUse == nil {
		return nil, nil
	}
	if !d.inUseRan {
		d.inUse, d.inUseErr = d.o.KeyIDsInUse(ctx)
		d.inUseRan = true
	}
	return d.inUse, d.inUseErr
}

func (d *vaultDoctor) run(ctx context.Context) []Result {
	// The backend as serve opens it: its settings and TLS files, without contacting Vault.
	if _, err := vault.Open(d.o.Config); err != nil {
		return []Result{fail("vault client", "fix the --vault-* flags or files it names", "%v: serve would refuse to start", err)}
	}
	var out []Result
	for _, risk := range d.cfg.Risks() { // serve warns of them too
		out = append(out, warn("vault client", "use https and --vault-ca-file", "%s", risk))
	}
	anon, err := d.clientAt(d.cfg.Address)
	if err != nil {
		return append(out, fail("vault client", "fix the --vault-* TLS flags", "%v", err))
	}
	health := d.health(ctx, anon, d.cfg.Address)
	out = append(out, health)
	if health.Status == Fail {
		return out
	}
	// Failover addresses serve only while the first cannot: one that fails is a warning.
	for _, addr := range d.cfg.FailoverAddresses {
		c, err := d.clientAt(addr)
		if err != nil {
			out = append(out, warn("vault reachable", "fix the --vault-addr list", "failover address %s: %v", addr, err))
			continue
		}
		r := d.health(ctx, c, addr)
		if r.Status == Fail {
			r.Status, r.Detail = Warn, "failover address: "+r.Detail
		}
		out = append(out, r)
	}
	login, ok := d.login(ctx)
	out = append(out, login...)
	if !ok {
		return out
	}
	out = append(out, d.capabilities(ctx)...)
	out = append(out, d.key(ctx)...)
	out = append(out, d.vaultKubernetesKMS(ctx)...)
	out = append(out, d.roundTrip(ctx))
	return out
}

// clientAt is a client built as serve builds its own (vault.NewClient), without a token, in
// the root namespace where sys/health lives, and talking to addr alone: each address is
// checked on its own rather than failed over from.
func (d *vaultDoctor) clientAt(addr string) (*api.Client, error) {
	one := d.cfg
	one.Address, one.FailoverAddresses = addr, nil
	return vault.NewClient(one, "", "")
}

func (d *vaultDoctor) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.o.Timeout)
}

// health reads sys/health as the backend's check does (vault.ReadHealth).
func (d *vaultDoctor) health(ctx context.Context, anon *api.Client, addr string) Result {
	const check = "vault reachable"
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	h, err := vault.ReadHealth(ctx, anon, addr)
	switch {
	case err != nil && h == nil:
		return fail(check, "check --vault-addr, the network path, and --vault-ca-file/--vault-tls-server-name for TLS errors", "%v", err)
	case err != nil && !h.Initialized:
		return fail(check, "initialise Vault (vault operator init)", "%v", err)
	case err != nil && h.Sealed:
		return fail(check, "unseal it (vault operator unseal), or check its auto-unseal",
			"%v: every request fails until it is unsealed", err)
	case err != nil:
		return fail(check, "check that --vault-addr is a Vault server", "%v", err)
	}
	role := "active"
	if h.Standby {
		role = "standby (forwards to the active node)"
	}
	return ok(check, "Vault %s at %s: initialized, unsealed, %s", h.Version, addr, role)
}

// login logs in the way the backend does, and looks the token up.
func (d *vaultDoctor) login(ctx context.Context) ([]Result, bool) {
	const check = "vault login"
	if d.cfg.Auth == nil {
		return []Result{fail(check, "choose --vault-auth and its credentials", "no auth method configured")}, false
	}
	method := d.cfg.Auth.Method()
	lctx, cancel := d.ctx(ctx)
	session, err := vault.Login(lctx, d.cfg)
	cancel()
	if err != nil {
		return []Result{fail(check, loginFix(method), "%v", vault.Classify(method+" login", err))}, false
	}
	d.client = session.Client
	lease := session.Lease
	d.revoke = func() { // doctor's own login made a token: do not leave it behind
		rctx, cancel := context.WithTimeout(context.Background(), d.o.Timeout)
		defer cancel()
		session.Logout(rctx)
	}
	lctx, cancel = d.ctx(ctx)
	self, err := d.client.Auth().Token().LookupSelfWithContext(lctx)
	cancel()
	if err != nil {
		if strings.Contains(err.Error(), "invalid token") {
			return []Result{fail(check, loginFix(method), "%s: Vault does not accept the token (revoked, expired or mistyped): %v", method, vault.Classify("token lookup", err))}, false
		}
		if lease == nil {
			return []Result{fail(check, "grant read on auth/token/lookup-self (kmsctl policy prints it), or check the token",
				"%s: looking the token up failed, and the plugin looks a supplied token up at every login: %v", method, vault.Classify("token lookup", err))}, false
		}
		return []Result{ok(check, "%s login works (the token cannot look itself up: see the capabilities check)", method)}, true
	}
	ttl, _ := self.TokenTTL()
	renewable, _ := self.TokenIsRenewable()
	policies, _ := self.TokenPolicies()
	life := "never expires"
	if ttl > 0 {
		life = fmt.Sprintf("ttl %s, renewable %v", ttl.Round(time.Second), renewable)
	}
	out := []Result{ok(check, "%s login works: token %s, policies %v", method, life, policies)}
	switch {
	case slices.Contains(policies, "root"):
		out = append(out, warn(check, "give the plugin a token with only the policy `kmsctl policy` prints",
			"the token has the root policy: it can do anything in Vault"))
	case lease == nil && ttl > 0 && !renewable:
		out = append(out, warn(check, "use a renewable or periodic token (vault token create -period=24h), or AppRole",
			"the supplied token expires in %s and cannot be renewed: the plugin stops working then unless its file is replaced", ttl.Round(time.Second)))
	}
	return out, true
}

func loginFix(method string) string {
	switch method {
	case "token":
		return "put a valid token in --vault-token-file (or $VAULT_TOKEN)"
	case "approle":
		return "check the role id, the secret id file and --vault-approle-mount; issue a new secret id if it expired"
	case "kubernetes":
		return "check --vault-kubernetes-role, the service-account token and the auth method's config in Vault"
	}
	return "check the --vault-auth settings and the auth method's config in Vault"
}

// capabilities compares the token's capabilities with what the plugin needs: a missing one
// fails, anything beyond it warns.
func (d *vaultDoctor) capabilities(ctx context.Context) []Result {
	const check = "vault capabilities"
	rules := policy.Required(d.cfg.Mount, d.cfg.Key)
	extras := broaderProbes(d.cfg.Mount, d.cfg.Key)
	var paths []string
	for _, r := range rules {
		paths = append(paths, r.Path)
	}
	for _, p := range extras {
		paths = append(paths, p.path)
	}
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	caps, err := vault.CapabilitiesSelf(ctx, d.client, paths)
	if err != nil {
		return []Result{fail(check, `grant "update" on sys/capabilities-self (kmsctl policy includes it; so does Vault's default policy)`,
			"cannot read the token's capabilities: %v", vault.Classify("sys/capabilities-self", err))}
	}
	var missing, broader []string
	if root := slices.Contains(caps[rules[0].Path], "root"); root {
		broader = append(broader, `"root" on every path (a root token, or a policy granting sudo-like rights on everything)`)
	}
	for _, r := range rules {
		have := caps[r.Path]
		for _, c := range r.Capabilities {
			if !vault.Grants(have, c) {
				missing = append(missing, fmt.Sprintf("%q on %s (%s)", c, r.Path, r.Why))
			}
		}
		if extra := beyond(have, r.Capabilities); len(extra) > 0 && !slices.Contains(have, "root") {
			broader = append(broader, fmt.Sprintf("%v on %s, which needs only %v", extra, r.Path, r.Capabilities))
		}
	}
	for _, p := range extras {
		if have := beyond(caps[p.path], nil); len(have) > 0 && !slices.Contains(have, "root") {
			broader = append(broader, fmt.Sprintf("%v on %s (%s)", have, p.path, p.why))
		}
	}
	var out []Result
	if len(missing) > 0 {
		out = append(out, fail(check, "add them to the token's policy; `kmsctl policy` prints the whole policy",
			"the token lacks %s", strings.Join(missing, "; ")))
	} else {
		out = append(out, ok(check, "the token has every capability the plugin needs on %s/{encrypt,decrypt,keys}/%s and its own token", d.cfg.Mount, d.cfg.Key))
	}
	if len(broader) > 0 {
		out = append(out, warn(check, "narrow the policy to what `kmsctl policy` prints (no wildcards, no extra capabilities)",
			"the token can do more than the plugin needs: %s", strings.Join(broader, "; ")))
	}
	return out
}

type probe struct{ path, why string }

// broaderProbes are paths the plugin never needs: any capability there means a policy broader
// than least privilege (a wildcard path, or rights to manage the key).
func broaderProbes(mount, key string) []probe {
	const other = "kms-plugin-doctor-another-key"
	return []probe{
		{mount + "/keys/" + key + "/config", "change the key's settings: exportable, deletion_allowed, min_decryption_version"},
		{mount + "/keys/" + key + "/rotate", "rotate the key"},
		{mount + "/export/encryption-key/" + key, "export the key's material"},
		{mount + "/backup/" + key, "back up the key with its material"},
		{mount + "/decrypt/" + other, "decrypt with other transit keys: a wildcard path?"},
		{mount + "/keys/" + other, "other transit keys: a wildcard path?"},
		{"sys/policies/acl/kms-plugin", "change policies"},
		{"auth/token/create", "create tokens"},
	}
}

// beyond lists capabilities in have other than need ("deny" is no capability).
func beyond(have, need []string) []string {
	var out []string
	for _, c := range have {
		if c != "deny" && !slices.Contains(need, c) {
			out = append(out, c)
		}
	}
	return out
}

// key reads the transit key and checks its configuration.
func (d *vaultDoctor) key(ctx context.Context) []Result {
	const check = "vault key"
	path := vault.KeyPath(d.cfg.Mount, d.cfg.Key)
	rctx, cancel := d.ctx(ctx)
	secret, err := vault.ReadKey(rctx, d.client, d.cfg.Mount, d.cfg.Key)
	cancel()
	if err != nil {
		return []Result{fail(check, "see the capabilities check", "%v", vault.Classify("reading "+path, err))}
	}
	if secret == nil {
		return []Result{fail(check, fmt.Sprintf("create it: vault write -f %s (and check --vault-transit-mount, --vault-transit-key)", path),
			"transit key %s does not exist", path)}
	}
	k, err := vault.ParseKey(secret)
	if err != nil {
		return []Result{fail(check, "", "reading %s: %v", path, err)}
	}
	typ, latest, minDecrypt := k.Type, k.LatestVersion, k.MinDecryptionVersion
	var out []Result
	switch {
	case k.Derived || k.ConvergentEncryption:
		out = append(out, fail(check, "create a non-derived key of type aes256-gcm96 and migrate to it",
			"%s is a derived key (type %s): the plugin cannot use it", path, typ))
	case !slices.Contains(vault.AEADTypes, typ):
		out = append(out, fail(check, "create a key of type aes256-gcm96 and migrate to it",
			"%s has type %q, not an authenticated cipher (%s)", path, typ, strings.Join(vault.AEADTypes, ", ")))
	default:
		out = append(out, ok(check, "%s: type %s, latest version %d, min_decryption_version %d", path, typ, latest, minDecrypt))
	}
	if k.Exportable || k.AllowPlaintextBackup {
		out = append(out, fail("vault key export", "Vault cannot undo this: create a new key (exportable=false, allow_plaintext_backup=false) and migrate to it",
			"%s can leave Vault (exportable %v, allow_plaintext_backup %v): whoever may export it can read every DEK", path, k.Exportable, k.AllowPlaintextBackup))
	} else {
		out = append(out, ok("vault key export", "%s is not exportable and has no plaintext backup", path))
	}
	if k.DeletionAllowed {
		out = append(out, fail("vault key deletion", fmt.Sprintf("vault write %s/config deletion_allowed=false", path),
			"%s may be deleted: one request would make every object encrypted with it unreadable", path))
	} else {
		out = append(out, ok("vault key deletion", "%s cannot be deleted (deletion_allowed false)", path))
	}
	out = append(out, d.versionsInUse(ctx, path, k))
	if d.o.PluginKeyID != "" {
		out = append(out, d.pluginKey(path, k))
	}
	return out
}

// versionsInUse checks min_decryption_version against the key versions that objects in etcd
// are stored under, and counts the objects under each version.
func (d *vaultDoctor) versionsInUse(ctx context.Context, path string, k vault.Key) Result {
	const check = "vault key versions"
	latest, minDecrypt := k.LatestVersion, k.MinDecryptionVersion
	if d.o.KeyIDsInUse == nil {
		if minDecrypt > 1 {
			return warn(check, "pass --etcd-endpoints (and --etcd-cacert/--etcd-cert/--etcd-key) to check them against etcd",
				"versions below %d of %s are retired; not checked against the objects in etcd", minDecrypt, path)
		}
		return ok(check, "%s: every version decrypts (min_decryption_version %d); objects in etcd not counted (no --etcd-endpoints)", path, minDecrypt)
	}
	inUse, err := d.keyIDsInUse(ctx)
	if err != nil {
		return fail(check, "check --etcd-endpoints and --etcd-cacert/--etcd-cert/--etcd-key", "reading key ids from etcd: %v", err)
	}
	byVersion := map[int]int{}
	for id, n := range inUse {
		if keyVer, err := vault.ParseKeyID(id); err == nil {
			byVersion[keyVer.Version()] += n
		} else if v, ok := dek.VaultKMSVersion(id); ok && d.cfg.ReadVaultKubernetesKMS {
			byVersion[v] += n // vault-kubernetes-kms's, read with the same key
		}
	}
	versions := make([]int, 0, len(byVersion))
	for v := range byVersion {
		versions = append(versions, v)
	}
	sort.Ints(versions)
	var retired, unknown, counts []string
	older := 0 // objects under versions below the latest
	for _, v := range versions {
		counts = append(counts, fmt.Sprintf("v%d: %d objects", v, byVersion[v]))
		if v < latest {
			older += byVersion[v]
		}
		switch {
		case v < minDecrypt:
			retired = append(retired, fmt.Sprintf("v%d (%d objects)", v, byVersion[v]))
		case v > latest:
			unknown = append(unknown, fmt.Sprintf("v%d (%d objects)", v, byVersion[v]))
		}
	}
	switch {
	case len(retired) > 0:
		return fail(check, fmt.Sprintf("vault write %s/config min_decryption_version=%d, then migrate the objects (kmsctl rewrite, docs/rotation.md) before raising it again", path, versions[0]),
			"min_decryption_version of %s is %d, but objects in etcd are still stored under %s: they cannot be decrypted", path, minDecrypt, strings.Join(retired, ", "))
	case len(unknown) > 0:
		return warn(check, "check that etcd's Vault key ids belong to this key (another key, or a deleted and recreated one?)",
			"objects in etcd name versions above the latest of %s (%d): %s", path, latest, strings.Join(unknown, ", "))
	case len(versions) == 0:
		return ok(check, "%s: no object in etcd is stored under a Vault key id", path)
	}
	detail := fmt.Sprintf("%s: objects in etcd per key version: %s; all at or above min_decryption_version %d", path, strings.Join(counts, ", "), minDecrypt)
	if older > 0 {
		detail += fmt.Sprintf("; %d under versions below the latest (v%d): min_decryption_version may not be raised above v%d until they are rewritten (kmsctl rewrite)", older, latest, versions[0])
	} else {
		detail += fmt.Sprintf("; all under the latest version v%d: min_decryption_version may be raised up to v%d", latest, latest)
	}
	return ok(check, "%s", detail)
}

// pluginKey compares the key id a running plugin reports with the transit key's latest
// version. After a rotation the plugin adopts the new version only once two consecutive checks
// have seen it, and each apiserver follows at its next Status poll: until then new objects are
// still written under the older version, which must not be retired.
func (d *vaultDoctor) pluginKey(path string, k vault.Key) Result {
	const check = "plugin key id"
	id := d.o.PluginKeyID
	latestID, _ := k.KeyID(k.LatestVersion)
	keyVer, err := vault.ParseKeyID(id)
	if err != nil {
		return warn(check, "give doctor the --listen of the Vault plugin", "the running plugin's key id %q is not a Vault key id", id)
	}
	if own, listed := k.KeyID(keyVer.Version()); !listed || own != id {
		return warn(check, "check --vault-transit-key and --vault-transit-mount against the plugin's flags",
			"the running plugin's key id %s names no version of %s that can still decrypt", id, path)
	}
	if keyVer.Version() < k.LatestVersion {
		return warn(check, fmt.Sprintf("wait: the plugin adopts a new version once two consecutive checks (--check-interval) have seen it; kmsctl rollout-status with the --vault-* flags returns 0 once every apiserver writes under %s", latestID),
			"the running plugin's key id %s names v%d, but the latest version of %s is v%d (%s): new objects are still stored under v%d; do not raise min_decryption_version", id, keyVer.Version(), path, k.LatestVersion, latestID, keyVer.Version())
	}
	return ok(check, "the running plugin's key id %s names the latest version v%d of %s", id, k.LatestVersion, path)
}

// roundTrip wraps and unwraps a random DEK through the plugin's own Vault backend.
func (d *vaultDoctor) roundTrip(ctx context.Context) Result {
	const check = "vault round trip"
	cfg := d.o.Config
	if d.client != nil {
		// The token doctor logged in with: a login of the backend's own would leave one
		// more live token behind on every doctor run.
		cfg.Auth = vault.StaticToken{Token: d.client.Token()}
	}
	kek, err := vault.Open(cfg)
	if err != nil {
		return fail(check, "", "opening the backend: %v", err)
	}
	cctx, cancel := d.ctx(ctx)
	err = kek.Check(cctx)
	cancel()
	if err != nil {
		return fail(check, "see the checks above", "the backend's key check: %v", err)
	}
	keyID := kek.CurrentID()
	plain := make([]byte, 32)
	_, _ = rand.Read(plain)
	defer clear(plain)
	wctx, cancel := d.ctx(ctx)
	wrapped, err := kek.Wrap(wctx, keyID, plain)
	cancel()
	if err != nil {
		return fail(check, "see the capabilities check", "encrypt under %s: %v", keyID, err)
	}
	uctx, cancel := d.ctx(ctx)
	got, err := kek.Unwrap(uctx, keyID, wrapped)
	cancel()
	if err != nil {
		return fail(check, "see the capabilities check", "decrypt under %s: %v", keyID, err)
	}
	defer clear(got)
	if !bytes.Equal(got, plain) {
		return fail(check, "", "decrypt under %s returned other bytes than were encrypted", keyID)
	}
	return ok(check, "encrypted and decrypted a random DEK under key id %s", keyID)
}

// vaultKubernetesKMS says whether the plugin will read what vault-kubernetes-kms wrote: with
// --vault-read-vault-kubernetes-kms the token must be allowed to decrypt with the transit key
// (the path that plugin decrypted with), and with --etcd-endpoints the objects in that format
// are counted by transit key version; without the flag, such objects in etcd fail the check,
// since serve would refuse them.
func (d *vaultDoctor) vaultKubernetesKMS(ctx context.Context) []Result {
	const check = "vault-kubernetes-kms envelopes"
	inUse, err := d.keyIDsInUse(ctx)
	if err != nil {
		if !d.cfg.ReadVaultKubernetesKMS {
			return nil // the key versions check reports the etcd failure
		}
		inUse = nil
	}
	byVersion := map[int]int{}
	total := 0
	for id, n := range inUse {
		if v, ok := dek.VaultKMSVersion(id); ok {
			byVersion[v] += n
			total += n
		}
	}
	versions := make([]int, 0, len(byVersion))
	for v := range byVersion {
		versions = append(versions, v)
	}
	sort.Ints(versions)
	var counts []string
	for _, v := range versions {
		counts = append(counts, fmt.Sprintf("v%d: %d objects", v, byVersion[v]))
	}
	if !d.cfg.ReadVaultKubernetesKMS {
		if total == 0 {
			return nil
		}
		return []Result{fail(check, "serve with --vault-read-vault-kubernetes-kms until 'kmsctl rewrite' has moved them (docs/migration.md)",
			"%d objects in etcd are in vault-kubernetes-kms's format (%s): without --vault-read-vault-kubernetes-kms serve refuses them", total, strings.Join(counts, ", "))}
	}
	path := d.cfg.Mount + "/decrypt/" + d.cfg.Key
	cctx, cancel := d.ctx(ctx)
	defer cancel()
	caps, err := vault.CapabilitiesSelf(cctx, d.client, []string{path})
	if err != nil {
		return []Result{fail(check, `grant "update" on sys/capabilities-self`, "cannot read the token's capabilities: %v", vault.Classify("sys/capabilities-self", err))}
	}
	if !vault.Grants(caps[path], "update") {
		return []Result{fail(check, fmt.Sprintf(`grant "update" on %s (kmsctl policy includes it)`, path),
			"the token may not decrypt with %s, so vault-kubernetes-kms's envelopes cannot be read", path)}
	}
	detail := fmt.Sprintf("the token may decrypt with %s (it must be the transit key vault-kubernetes-kms wrote with: other keys' envelopes fail to authenticate)", path)
	switch {
	case d.o.KeyIDsInUse == nil:
		detail += "; objects in etcd not counted (no --etcd-endpoints)"
	case total == 0:
		return []Result{warn(check, "turn --vault-read-vault-kubernetes-kms off: its sunset has come (docs/migration.md)",
			"%s; no object in etcd is in vault-kubernetes-kms's format any more", detail)}
	default:
		detail += fmt.Sprintf("; %d objects in etcd in that format (%s): move them with kmsctl rewrite, then turn the flag off", total, strings.Join(counts, ", "))
	}
	return []Result{ok(check, "%s", detail)}
}

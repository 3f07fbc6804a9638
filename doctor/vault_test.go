package doctor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/backends/vault/policy"
	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// vaultSetup is one real Vault with transit, shared by the subtests (each has its own key).
type vaultSetup struct {
	t *testing.T
	v *harness.Vault
}

// key creates a transit key with params (nil: the defaults, which are safe).
func (s vaultSetup) key(name string, params map[string]any) string {
	s.v.Write(s.t, "transit/keys/"+name, params)
	return name
}

// tokenFile writes policy hcl as its own policy, creates a token with only that policy (not
// even "default") and writes it to a 0600 file.
func (s vaultSetup) tokenFile(t *testing.T, hcl string) string {
	t.Helper()
	name := "p-" + strings.ReplaceAll(strings.ToLower(filepath.Base(t.Name())), "_", "-")
	return s.v.PolicyTokenFile(t, name, hcl)
}

func writeToken(t *testing.T, token string) string {
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (s vaultSetup) config(key, tokenFile string) vault.Config {
	return vault.Config{Address: s.v.Addr, Key: key, Auth: &vault.TokenFile{Path: tokenFile}}
}

func leastPrivilege(t *testing.T, key string) string {
	hcl, err := policy.HCL(policy.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return hcl
}

func runVault(t *testing.T, o VaultOptions) Report {
	t.Helper()
	rep := Report(Vault(context.Background(), o))
	var b strings.Builder
	_ = rep.Write(&b)
	t.Logf("doctor:\n%s", b.String())
	return rep
}

// want asserts that check has a result with status st that mentions every substr.
func want(t *testing.T, rep Report, check string, st Status, substrs ...string) {
	t.Helper()
	for _, r := range rep.Find(check) {
		if r.Status != st {
			continue
		}
		all := true
		for _, s := range substrs {
			all = all && strings.Contains(r.String(), s)
		}
		if all {
			return
		}
	}
	t.Errorf("no %s result %q mentioning %q in:\n%v", st, check, substrs, rep)
}

func clean(t *testing.T, rep Report) {
	t.Helper()
	for _, r := range rep {
		if r.Status != OK {
			t.Errorf("want every check ok, got %s", r)
		}
	}
}

func TestVault(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultFile(t) // file storage: the last subtest seals it
	v.EnableTransit(t, "transit")
	s := vaultSetup{t: t, v: v}

	t.Run("healthy setup passes every check", func(t *testing.T) {
		key := s.key("healthy", nil)
		rep := runVault(t, VaultOptions{Config: s.config(key, s.tokenFile(t, leastPrivilege(t, key)))})
		clean(t, rep)
		for _, check := range []string{"vault reachable", "vault login", "vault capabilities", "vault key",
			"vault key export", "vault key deletion", "vault key versions", "vault round trip"} {
			if len(rep.Find(check)) == 0 {
				t.Errorf("no %q check ran", check)
			}
		}
		want(t, rep, "vault round trip", OK, "vault:", ":v1")
	})

	// doctor logs in like the backend does; every token its checks create is revoked again.
	t.Run("leaves no login token behind", func(t *testing.T) {
		key := s.key("approle", nil)
		v.WritePolicy(t, "doctor-approle", leastPrivilege(t, key))
		v.EnableAuth(t, "approle", "approle")
		roleID, secretID := v.AppRole(t, "approle", "doctor", map[string]any{"token_policies": "doctor-approle", "token_ttl": "1h"})
		secretFile := writeToken(t, secretID)
		accessors := func() int {
			list, err := v.Root.Logical().List("auth/token/accessors")
			if err != nil || list == nil {
				t.Fatalf("listing token accessors: %v", err)
			}
			keys, _ := list.Data["keys"].([]any)
			return len(keys)
		}
		before := accessors()
		rep := runVault(t, VaultOptions{Config: vault.Config{Address: v.Addr, Key: key,
			Auth: vault.AppRole{RoleID: roleID, SecretIDFile: secretFile}}})
		want(t, rep, "vault round trip", OK, "vault:")
		if after := accessors(); after != before {
			t.Fatalf("%d live tokens before doctor, %d after: doctor left tokens behind", before, after)
		}
	})

	// The acceptance check: a policy missing decrypt is caught, naming what is missing.
	t.Run("policy missing decrypt", func(t *testing.T) {
		key := s.key("nodecrypt", nil)
		hcl := harness.WithoutPolicyPath(t, leastPrivilege(t, key), "transit/decrypt/"+key)
		rep := runVault(t, VaultOptions{Config: s.config(key, s.tokenFile(t, hcl))})
		want(t, rep, "vault capabilities", Fail, `lacks "update" on transit/decrypt/nodecrypt`, "kmsctl policy")
		want(t, rep, "vault round trip", Fail, "decrypt")
		if rep.Failed() != 2 {
			t.Errorf("want exactly the capabilities and round-trip checks to fail, got %d failures", rep.Failed())
		}
	})

	t.Run("every missing capability of the policy is named", func(t *testing.T) {
		key := s.key("each", nil)
		for _, r := range policy.Required("transit", key) {
			if r.Path == "sys/capabilities-self" {
				continue // without it nothing can be listed: the next subtest
			}
			t.Run(r.Path, func(t *testing.T) {
				rep := runVault(t, VaultOptions{Config: s.config(key, s.tokenFile(t, harness.WithoutPolicyPath(t, leastPrivilege(t, key), r.Path)))})
				if r.Path == "auth/token/lookup-self" {
					want(t, rep, "vault login", Fail, "lookup-self")
					return
				}
				want(t, rep, "vault capabilities", Fail, fmt.Sprintf("%q on %s", r.Capabilities[0], r.Path))
			})
		}
	})

	t.Run("policy without capabilities-self", func(t *testing.T) {
		key := s.key("nocaps", nil)
		rep := runVault(t, VaultOptions{Config: s.config(key, s.tokenFile(t, harness.WithoutPolicyPath(t, leastPrivilege(t, key), "sys/capabilities-self")))})
		want(t, rep, "vault capabilities", Fail, "cannot read the token's capabilities", "sys/capabilities-self")
		want(t, rep, "vault round trip", OK) // the plugin itself works
	})

	t.Run("broader policy warns", func(t *testing.T) {
		key := s.key("broad", nil)
		hcl := leastPrivilege(t, key) + `
path "transit/*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }
`
		rep := runVault(t, VaultOptions{Config: s.config(key, s.tokenFile(t, hcl))})
		want(t, rep, "vault capabilities", OK)
		want(t, rep, "vault capabilities", Warn, "delete", "transit/keys/broad", "export the key", "wildcard")
		if rep.Failed() != 0 {
			t.Errorf("extra capabilities must warn, not fail")
		}
	})

	t.Run("root token warns", func(t *testing.T) {
		key := s.key("rooted", nil)
		rep := runVault(t, VaultOptions{Config: s.config(key, writeToken(t, v.RootToken))})
		want(t, rep, "vault login", Warn, "root policy")
		want(t, rep, "vault capabilities", Warn, `"root" on every path`)
		if rep.Failed() != 0 {
			t.Errorf("a root token works: warn, not fail")
		}
	})

	t.Run("invalid token", func(t *testing.T) {
		rep := runVault(t, VaultOptions{Config: s.config("healthy", writeToken(t, "hvs.not-a-token"))})
		want(t, rep, "vault login", Fail, "invalid token", "--vault-token-file")
		if len(rep) != 2 {
			t.Errorf("checks after a failed login ran: %v", rep)
		}
	})

	t.Run("exportable key", func(t *testing.T) {
		key := s.key("exportable", map[string]any{"exportable": true})
		rep := runVault(t, VaultOptions{Config: s.config(key, s.tokenFile(t, leastPrivilege(t, key)))})
		want(t, rep, "vault key export", Fail, "exportable true", "create a new key")
	})

	t.Run("plaintext backup allowed", func(t *testing.T) {
		key := s.key("backup", map[string]any{"exportable": true, "allow_plaintext_backup": true})
		rep := runVault(t, VaultOptions{Config: s.config(key, s.tokenFile(t, leastPrivilege(t, key)))})
		want(t, rep, "vault key export", Fail, "allow_plaintext_backup true")
	})

	t.Run("deletion allowed", func(t *testing.T) {
		key := s.key("deletable", nil)
		v.Write(t, "transit/keys/"+key+"/config", map[string]any{"deletion_allowed": true})
		rep := runVault(t, VaultOptions{Config: s.config(key, s.tokenFile(t, leastPrivilege(t, key)))})
		want(t, rep, "vault key deletion", Fail, "may be deleted", "deletion_allowed=false")
		want(t, rep, "vault round trip", OK)
	})

	t.Run("not an AEAD key type", func(t *testing.T) {
		key := s.key("rsa", map[string]any{"type": "rsa-2048"})
		rep := runVault(t, VaultOptions{Config: s.config(key, s.tokenFile(t, leastPrivilege(t, key)))})
		want(t, rep, "vault key", Fail, `type "rsa-2048"`, "aes256-gcm96")
	})

	t.Run("missing key", func(t *testing.T) {
		rep := runVault(t, VaultOptions{Config: s.config("absent", s.tokenFile(t, leastPrivilege(t, "absent")))})
		want(t, rep, "vault key", Fail, "does not exist", "vault write -f transit/keys/absent")
	})

	t.Run("min_decryption_version against etcd", func(t *testing.T) {
		e := harness.StartEtcd(t)
		key := s.key("retired", nil)
		cfg := s.config(key, s.tokenFile(t, leastPrivilege(t, key)))
		v1 := currentKeyID(t, cfg)
		v.RotateKey(t, "transit", key)
		v.RotateKey(t, "transit", key)
		v3 := currentKeyID(t, cfg)
		putKMSv2(t, e, "/registry/secrets/default/old", "kms-plugin", v1)
		putKMSv2(t, e, "/registry/secrets/default/new", "kms-plugin", v3)
		putKMSv2(t, e, "/registry/configmaps/default/new", "kms-plugin", v3)
		putKMSv2(t, e, "/registry/secrets/default/other", "other-provider", v1)
		inUse := func(provider string) func(context.Context) (map[string]int, error) {
			return func(ctx context.Context) (map[string]int, error) {
				return KeyIDsInEtcd(ctx, e.Client, "/registry/", provider)
			}
		}

		// The line counts the objects under each version, and says which raise is unsafe.
		rep := runVault(t, VaultOptions{Config: cfg, KeyIDsInUse: inUse("")})
		want(t, rep, "vault key versions", OK, "v1: 2 objects, v3: 2 objects", "min_decryption_version 1",
			"2 under versions below the latest (v3)", "may not be raised above v1")

		v.SetMinDecryptionVersion(t, "transit", key, 2)
		rep = runVault(t, VaultOptions{Config: cfg, KeyIDsInUse: inUse("kms-plugin")})
		want(t, rep, "vault key versions", Fail, "min_decryption_version of transit/keys/retired is 2", "v1 (1 objects)",
			"min_decryption_version=1", "kmsctl rewrite")
		for _, r := range rep.Find("vault key versions") {
			if strings.Contains(r.Fix, "kubectl") {
				t.Errorf("the fix points at the kubectl pipeline, not kmsctl rewrite: %s", r)
			}
		}
		rep = runVault(t, VaultOptions{Config: cfg})
		want(t, rep, "vault key versions", Warn, "--etcd-endpoints")

		// Once the old object is rewritten under v3, raising it is safe.
		putKMSv2(t, e, "/registry/secrets/default/old", "kms-plugin", v3)
		rep = runVault(t, VaultOptions{Config: cfg, KeyIDsInUse: inUse("kms-plugin")})
		want(t, rep, "vault key versions", OK, "v3: 3 objects", "all under the latest version v3")

		rep = runVault(t, VaultOptions{Config: cfg, KeyIDsInUse: func(context.Context) (map[string]int, error) {
			return nil, fmt.Errorf("etcd down")
		}})
		want(t, rep, "vault key versions", Fail, "etcd down", "--etcd-endpoints")
	})

	// Right after a rotation the running plugin still reports the version before it (it adopts
	// a new one after two consecutive checks): doctor says so, so that nobody retires that
	// version while new objects are still written under it.
	t.Run("plugin behind the latest version", func(t *testing.T) {
		key := s.key("behind", nil)
		cfg := s.config(key, s.tokenFile(t, leastPrivilege(t, key)))
		v1 := currentKeyID(t, cfg)
		v.RotateKey(t, "transit", key)
		v2 := currentKeyID(t, cfg)
		rep := runVault(t, VaultOptions{Config: cfg, PluginKeyID: v1})
		want(t, rep, "plugin key id", Warn, v1, "names v1", "latest version of transit/keys/behind is v2", v2,
			"do not raise min_decryption_version", "kmsctl rollout-status")
		rep = runVault(t, VaultOptions{Config: cfg, PluginKeyID: v2})
		want(t, rep, "plugin key id", OK, v2, "latest version v2")
		rep = runVault(t, VaultOptions{Config: cfg, PluginKeyID: "localaes:k1:abc"})
		want(t, rep, "plugin key id", Warn, "not a Vault key id")
		rep = runVault(t, VaultOptions{Config: cfg})
		if got := rep.Find("plugin key id"); len(got) != 0 {
			t.Errorf("no running plugin, yet: %v", got)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		cfg := s.config("healthy", writeToken(t, v.RootToken))
		cfg.Address = fmt.Sprintf("http://127.0.0.1:%d", harness.FreePort(t))
		rep := runVault(t, VaultOptions{Config: cfg, Timeout: 2 * time.Second})
		want(t, rep, "vault reachable", Fail, "connection refused", "--vault-addr")
		if len(rep) != 1 {
			t.Errorf("checks after an unreachable Vault ran: %v", rep)
		}
	})

	t.Run("failover address down warns", func(t *testing.T) {
		cfg := s.config("healthy", writeToken(t, v.RootToken))
		down := fmt.Sprintf("http://127.0.0.1:%d", harness.FreePort(t))
		cfg.FailoverAddresses = []string{down}
		rep := runVault(t, VaultOptions{Config: cfg, Timeout: 2 * time.Second})
		want(t, rep, "vault reachable", OK, v.Addr)
		want(t, rep, "vault reachable", Warn, "failover address", down)
		if rep.Failed() != 0 {
			t.Errorf("a failover address down is a warning")
		}
	})

	// Last: it seals the shared Vault.
	t.Run("sealed", func(t *testing.T) {
		key := "healthy"
		tokenFile := s.tokenFile(t, leastPrivilege(t, key))
		v.Seal(t)
		defer v.Unseal(t)
		rep := runVault(t, VaultOptions{Config: s.config(key, tokenFile)})
		want(t, rep, "vault reachable", Fail, "is sealed", "vault operator unseal")
		if len(rep) != 1 {
			t.Errorf("checks after a sealed Vault ran: %v", rep)
		}
	})
}

// currentKeyID is the key id the plugin's backend reports for cfg now.
func currentKeyID(t *testing.T, cfg vault.Config) string {
	t.Helper()
	kek, err := vault.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := kek.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	return kek.CurrentID()
}

// putKMSv2 stores a KMS v2 value (an EncryptedObject with keyID) at key, as an apiserver would.
func putKMSv2(t *testing.T, e *harness.Etcd, key, provider, keyID string) {
	t.Helper()
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("encrypted data"))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, keyID)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("encrypted DEK source"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.Client.Put(ctx, key, "k8s:enc:kms:v2:"+provider+":"+string(b)); err != nil {
		t.Fatal(err)
	}
}

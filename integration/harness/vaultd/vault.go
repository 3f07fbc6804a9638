package vaultd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// Vault is a real Vault server on loopback with a root client. A dev-mode Vault keeps
// everything in memory; a file-storage Vault survives Restart and can be sealed and unsealed.
type Vault struct {
	Addr      string      // http://127.0.0.1:PORT
	RootToken string      // never logged
	Root      *api.Client // authenticated as root
	Process   *run.Process
	CAFile    string // the CA that verifies Vault's certificate, when it serves TLS
	// ClientCert and ClientKey: a client certificate Vault requires (StartVaultFileMTLS).
	ClientCert, ClientKey string

	bin, configPath, unsealKey string
}

// StartVaultDev starts `vault server -dev` with a random root token. Restarting it would
// lose every key: tests that restart Vault use StartVaultFile.
func StartVaultDev(t testing.TB) *Vault {
	t.Helper()
	v := &Vault{bin: run.Binary(t, "vault"), RootToken: randomToken(t)}
	home := t.TempDir()
	v.startOnFreePort(t, func(port int) []string {
		return []string{"server", "-dev", "-dev-root-token-id=" + v.RootToken,
			fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", port), "-dev-no-store-token", "-log-level=warn"}
	}, home)
	v.waitHealth(t, func(h *api.HealthResponse) bool { return h.Initialized && !h.Sealed })
	v.Root = v.Client(t, v.RootToken)
	return v
}

// StartVaultDevTLS is StartVaultDev serving HTTPS with a certificate that Vault generates for
// localhost and 127.0.0.1, signed by the CA in CAFile.
func StartVaultDevTLS(t testing.TB) *Vault {
	t.Helper()
	v := &Vault{bin: run.Binary(t, "vault"), RootToken: randomToken(t)}
	home, certDir := t.TempDir(), t.TempDir()
	v.CAFile = filepath.Join(certDir, "vault-ca.pem")
	v.startOnFreePort(t, func(port int) []string {
		v.Addr = fmt.Sprintf("https://127.0.0.1:%d", port)
		return []string{"server", "-dev", "-dev-tls", "-dev-tls-cert-dir=" + certDir, "-dev-root-token-id=" + v.RootToken,
			fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", port), "-dev-no-store-token", "-log-level=warn"}
	}, home)
	v.waitHealth(t, func(h *api.HealthResponse) bool { return h.Initialized && !h.Sealed })
	v.Root = v.Client(t, v.RootToken)
	return v
}

// StartVaultFile starts Vault with file storage in a temp dir, initialises it with one key
// share and unseals it.
func StartVaultFile(t testing.TB) *Vault {
	t.Helper()
	return StartVaultFileWith(t, FileOptions{})
}

// StartVaultFileMTLS is StartVaultFile serving HTTPS that requires a client certificate:
// CAFile verifies Vault, ClientCert and ClientKey are a certificate it accepts.
func StartVaultFileMTLS(t testing.TB) *Vault {
	t.Helper()
	return StartVaultFileWith(t, FileOptions{TLS: true, MTLS: true})
}

// FileOptions shape a file-storage Vault.
type FileOptions struct {
	// Port is the loopback port to listen on: a fixed address that a shipped manifest names
	// (0: a free port).
	Port int
	// TLS serves HTTPS with a certificate of the test's own CA (CAFile) for localhost,
	// 127.0.0.1 and DNSNames.
	TLS      bool
	DNSNames []string
	// MTLS also requires a client certificate (ClientCert, ClientKey); it implies TLS.
	MTLS bool
}

// StartVaultFileWith is StartVaultFile shaped by o.
func StartVaultFileWith(t testing.TB, o FileOptions) *Vault {
	t.Helper()
	v := &Vault{bin: run.Binary(t, "vault")}
	dir := t.TempDir()
	listener := "tls_disable = true"
	scheme := "http"
	if o.TLS || o.MTLS {
		pki := run.NewTestPKI(t, dir, o.DNSNames...)
		v.CAFile, scheme = pki.CAFile, "https"
		listener = fmt.Sprintf(`tls_cert_file = %q
  tls_key_file = %q`, pki.ServerCert, pki.ServerKey)
		if o.MTLS {
			v.ClientCert, v.ClientKey = pki.ClientCert, pki.ClientKey
			listener += fmt.Sprintf(`
  tls_client_ca_file = %q
  tls_require_and_verify_client_cert = true`, pki.CAFile)
		}
	}
	start := v.startOnFreePort
	if o.Port != 0 {
		start = v.startOnPort(o.Port)
	}
	start(t, func(port int) []string {
		v.Addr = fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
		v.configPath = filepath.Join(dir, fmt.Sprintf("vault-%d.hcl", port))
		config := fmt.Sprintf(`storage "file" { path = %q }
listener "tcp" {
  address = "127.0.0.1:%d"
  %s
}
api_addr      = "%s"
disable_mlock = true
log_level     = "warn"
`, filepath.Join(dir, "data"), port, listener, v.Addr)
		run.Must(t, os.WriteFile(v.configPath, []byte(config), 0o600), "vault config")
		return []string{"server", "-config=" + v.configPath}
	}, dir)
	v.waitHealth(t, func(*api.HealthResponse) bool { return true })
	init, err := v.Client(t, "").Sys().Init(&api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	run.Must(t, err, "vault init")
	v.RootToken, v.unsealKey = init.RootToken, init.KeysB64[0]
	v.Root = v.Client(t, v.RootToken)
	v.Unseal(t)
	return v
}

// startOnFreePort starts Vault on a free port, trying another one if the port was taken by
// another test's server between FreePort and Vault's bind.
func (v *Vault) startOnFreePort(t testing.TB, args func(port int) []string, home string) {
	t.Helper()
	var lastLog string
	for attempt := 0; attempt < 3; attempt++ {
		port := run.FreePort(t)
		v.Addr = fmt.Sprintf("http://127.0.0.1:%d", port)
		v.Process = run.Start(t, fmt.Sprintf("vault-%d", port), v.bin, args(port), vaultEnv(home)...) // args may set an https Addr
		// A minute: on a loaded 2-core machine the 360 MB binary alone can take 10 s to start;
		// a Vault that fails exits, and waitListening stops at once.
		if v.waitListening(time.Minute) {
			return
		}
		lastLog = v.Process.Log()
		v.Process.Kill()
		if !strings.Contains(lastLog, "address already in use") {
			break
		}
	}
	t.Fatalf("vault did not start:\n%s", lastLog)
}

// startOnPort starts Vault on port, failing the test if it is taken.
func (v *Vault) startOnPort(port int) func(testing.TB, func(int) []string, string) {
	return func(t testing.TB, args func(int) []string, home string) {
		t.Helper()
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
			t.Fatalf("Vault's fixed port 127.0.0.1:%d is taken on this machine: %v", port, err)
		} else {
			l.Close()
		}
		v.Process = run.Start(t, fmt.Sprintf("vault-%d", port), v.bin, args(port), vaultEnv(home)...)
		if !v.waitListening(time.Minute) {
			t.Fatalf("vault did not start on 127.0.0.1:%d:\n%s", port, v.Process.Log())
		}
	}
}

// vaultEnv keeps the developer's own Vault settings and token helper out of the server.
func vaultEnv(home string) []string {
	return []string{"HOME=" + home, "VAULT_ADDR=", "VAULT_TOKEN=", "VAULT_NAMESPACE=", "VAULT_CACERT=", "VAULT_SKIP_VERIFY="}
}

// waitListening waits until something accepts connections on Vault's port (with dev TLS the
// CA file appears only then, so no TLS handshake here).
func (v *Vault) waitListening(timeout time.Duration) bool {
	host := strings.TrimPrefix(strings.TrimPrefix(v.Addr, "http://"), "https://")
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && !v.Process.Exited() {
		if conn, err := net.DialTimeout("tcp", host, time.Second); err == nil {
			conn.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func (v *Vault) waitHealth(t testing.TB, ok func(*api.HealthResponse) bool) {
	t.Helper()
	c := v.Client(t, "")
	run.Eventually(t, 60*time.Second, "vault health", func(ctx context.Context) error {
		h, err := c.Sys().HealthWithContext(ctx)
		if err != nil {
			return err
		}
		if !ok(h) {
			return fmt.Errorf("vault not ready: %+v", *h)
		}
		return nil
	})
}

// Client returns a client of this Vault with the given token ("" for none), configured
// explicitly so that the test's environment does not leak in.
func (v *Vault) Client(t testing.TB, token string) *api.Client {
	t.Helper()
	cfg := &api.Config{Address: v.Addr, HttpClient: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{}}}, MaxRetries: 0}
	if v.CAFile != "" {
		run.Eventually(t, 30*time.Second, "vault dev CA file", func(context.Context) error { _, err := os.Stat(v.CAFile); return err })
		run.Must(t, cfg.ConfigureTLS(&api.TLSConfig{CACert: v.CAFile, ClientCert: v.ClientCert, ClientKey: v.ClientKey}), "vault client TLS")
	}
	c, err := api.NewClient(cfg)
	run.Must(t, err, "vault client")
	c.SetToken(token)
	c.ClearNamespace()
	return c
}

// Stop stops Vault (SIGTERM). A file-storage Vault comes back sealed from Start.
func (v *Vault) Stop(t testing.TB) {
	t.Helper()
	v.Process.Stop(20 * time.Second)
}

// Start starts a stopped file-storage Vault again on the same address; it comes up sealed.
func (v *Vault) Start(t testing.TB) {
	t.Helper()
	if v.configPath == "" {
		t.Fatal("Start: a dev-mode Vault cannot be restarted; use StartVaultFile")
	}
	v.Process.StartAgain(t, v.bin, []string{"server", "-config=" + v.configPath}, vaultEnv(filepath.Dir(v.configPath))...)
	v.waitHealth(t, func(*api.HealthResponse) bool { return true })
}

// Restart stops, starts and unseals a file-storage Vault.
func (v *Vault) Restart(t testing.TB) {
	t.Helper()
	v.Stop(t)
	v.Start(t)
	v.Unseal(t)
}

// Seal seals Vault; it keeps running and answers every request with 503.
func (v *Vault) Seal(t testing.TB) {
	t.Helper()
	run.Must(t, v.Root.Sys().Seal(), "vault seal")
}

// Unseal unseals a file-storage Vault with its one key share and waits until it serves.
func (v *Vault) Unseal(t testing.TB) {
	t.Helper()
	if v.unsealKey == "" {
		t.Fatal("Unseal: a dev-mode Vault has no unseal key; use StartVaultFile")
	}
	_, err := v.Client(t, "").Sys().Unseal(v.unsealKey)
	run.Must(t, err, "vault unseal")
	v.waitHealth(t, func(h *api.HealthResponse) bool { return h.Initialized && !h.Sealed })
	// The core answers health before the mounts are loaded; wait for a mounted path too.
	run.Eventually(t, 30*time.Second, "vault mounts after unseal", func(ctx context.Context) error {
		_, err := v.Root.Sys().ListMountsWithContext(ctx)
		return err
	})
}

// Write writes data at path as root.
func (v *Vault) Write(t testing.TB, path string, data map[string]any) *api.Secret {
	t.Helper()
	s, err := v.Root.Logical().Write(path, data)
	run.Must(t, err, "vault write %s", path)
	return s
}

// Read reads path as root.
func (v *Vault) Read(t testing.TB, path string) *api.Secret {
	t.Helper()
	s, err := v.Root.Logical().Read(path)
	run.Must(t, err, "vault read %s", path)
	return s
}

// EnableTransit mounts the transit engine at mount.
func (v *Vault) EnableTransit(t testing.TB, mount string) {
	t.Helper()
	run.Must(t, v.Root.Sys().Mount(mount, &api.MountInput{Type: "transit"}), "enable transit at %s", mount)
}

// CreateKey creates a transit key of the default type (aes256-gcm96), deletable so tests can
// delete and recreate it.
func (v *Vault) CreateKey(t testing.TB, mount, name string) {
	t.Helper()
	v.Write(t, mount+"/keys/"+name, nil)
	v.Write(t, mount+"/keys/"+name+"/config", map[string]any{"deletion_allowed": true})
}

// RotateKey adds a new latest version to the key.
func (v *Vault) RotateKey(t testing.TB, mount, name string) {
	t.Helper()
	v.Write(t, mount+"/keys/"+name+"/rotate", nil)
}

// SetMinDecryptionVersion retires every version below min for decryption.
func (v *Vault) SetMinDecryptionVersion(t testing.TB, mount, name string, min int) {
	t.Helper()
	v.Write(t, mount+"/keys/"+name+"/config", map[string]any{"min_decryption_version": min})
}

// DeleteKey deletes the key and every version of it.
func (v *Vault) DeleteKey(t testing.TB, mount, name string) {
	t.Helper()
	_, err := v.Root.Logical().Delete(mount + "/keys/" + name)
	run.Must(t, err, "delete key %s/%s", mount, name)
}

// WritePolicy writes an ACL policy.
func (v *Vault) WritePolicy(t testing.TB, name, hcl string) {
	t.Helper()
	run.Must(t, v.Root.Sys().PutPolicy(name, hcl), "write policy %s", name)
}

// PolicyTokenFile writes hcl as policy name, creates a renewable one-hour token with that
// policy alone (not even "default"), and writes the token to a 0600 file, whose path it returns.
func (v *Vault) PolicyTokenFile(t testing.TB, name, hcl string) string {
	t.Helper()
	v.WritePolicy(t, name, hcl)
	renewable := true
	s, err := v.Root.Auth().Token().Create(&api.TokenCreateRequest{
		Policies: []string{name}, NoDefaultPolicy: true, TTL: "1h", Renewable: &renewable})
	run.Must(t, err, "create token with policy %s", name)
	path := filepath.Join(t.TempDir(), "token")
	run.Must(t, os.WriteFile(path, []byte(s.Auth.ClientToken), 0o600), "write token file")
	return path
}

// WithoutPolicyPath returns a printed policy (blocks separated by blank lines) without its
// block for path, which it must have.
func WithoutPolicyPath(t testing.TB, hcl, path string) string {
	t.Helper()
	blocks := strings.Split(hcl, "\n\n")
	var kept []string
	for _, b := range blocks {
		if !strings.Contains(b, fmt.Sprintf("path %q", path)) {
			kept = append(kept, b)
		}
	}
	if len(kept) != len(blocks)-1 {
		t.Fatalf("policy has no block for %s:\n%s", path, hcl)
	}
	return strings.Join(kept, "\n\n")
}

// TransitPolicy is the least-privilege policy docs/vault.md shows: encrypt and decrypt with
// one key, read it for its versions.
func TransitPolicy(mount, key string) string {
	return fmt.Sprintf(`path "%[1]s/encrypt/%[2]s" { capabilities = ["update"] }
path "%[1]s/decrypt/%[2]s" { capabilities = ["update"] }
path "%[1]s/keys/%[2]s" { capabilities = ["read"] }
`, mount, key)
}

// TokenOptions shape a token that CreateToken makes.
type TokenOptions struct {
	Policies  []string
	TTL       string // "" for the default
	Renewable bool
}

// CreateToken creates a token as root. With no Policies the token inherits root's: pass
// []string{"default"} for a token that may do next to nothing.
func (v *Vault) CreateToken(t testing.TB, o TokenOptions) string {
	t.Helper()
	renewable := o.Renewable
	s, err := v.Root.Auth().Token().Create(&api.TokenCreateRequest{Policies: o.Policies, TTL: o.TTL, Renewable: &renewable})
	run.Must(t, err, "create token")
	return s.Auth.ClientToken
}

// RevokeToken revokes a token (and its children) as root.
func (v *Vault) RevokeToken(t testing.TB, token string) {
	t.Helper()
	run.Must(t, v.Root.Auth().Token().RevokeTree(token), "revoke token")
}

// LookupToken returns what Vault knows of a token, or an error if it is not valid.
func (v *Vault) LookupToken(token string) (*api.Secret, error) {
	return v.Root.Auth().Token().Lookup(token)
}

// EnableAuth enables an auth method of type kind at mount.
func (v *Vault) EnableAuth(t testing.TB, mount, kind string) {
	t.Helper()
	run.Must(t, v.Root.Sys().EnableAuthWithOptions(mount, &api.EnableAuthOptions{Type: kind}), "enable auth %s at %s", kind, mount)
}

// AppRole creates (or updates) an AppRole role and returns its role id and a fresh secret id.
// params are the role's settings (token_policies, token_ttl, ...).
func (v *Vault) AppRole(t testing.TB, mount, role string, params map[string]any) (roleID, secretID string) {
	t.Helper()
	v.Write(t, "auth/"+mount+"/role/"+role, params)
	id := v.Read(t, "auth/"+mount+"/role/"+role+"/role-id")
	roleID, _ = id.Data["role_id"].(string)
	return roleID, v.SecretID(t, mount, role)
}

// SecretID issues a new secret id for an AppRole role.
func (v *Vault) SecretID(t testing.TB, mount, role string) string {
	t.Helper()
	s := v.Write(t, "auth/"+mount+"/role/"+role+"/secret-id", nil)
	id, _ := s.Data["secret_id"].(string)
	if id == "" {
		t.Fatal(errors.New("no secret_id in the answer"))
	}
	return id
}

func randomToken(t testing.TB) string {
	b := make([]byte, 16)
	_, err := rand.Read(b)
	run.Must(t, err, "random")
	return "root-" + hex.EncodeToString(b)
}

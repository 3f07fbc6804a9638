package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
)

// Auth is one way to get a Vault token. Login is called at start, when the token stops
// working, and when a login token nears its end without being renewable.
type Auth interface {
	// Method names the auth method for logs and healthz: token, approle, kubernetes, cert, jwt.
	Method() string
	// Login returns a token. A method that logs in to Vault also returns the token's lease;
	// a supplied token returns a nil lease, and the caller looks the token up.
	Login(ctx context.Context, c *api.Client) (token string, lease *api.SecretAuth, err error)
}

// changeWatcher is an Auth whose input can change under it (a token file rewritten by an
// operator or an agent); a change means: log in again now.
type changeWatcher interface{ Changed() bool }

// StaticToken is a token given once, from VAULT_TOKEN.
type StaticToken struct{ Token string }

func (StaticToken) Method() string { return "token" }

func (s StaticToken) Login(context.Context, *api.Client) (string, *api.SecretAuth, error) {
	if s.Token == "" {
		return "", nil, &localError{"VAULT_TOKEN is empty"}
	}
	return s.Token, nil, nil
}

// TokenFile is a token read from a file, re-read whenever its content changes (rotation by a
// sidecar or an operator) and whenever the token stops working.
type TokenFile struct {
	Path string
	last []byte // content at the last Login; used only by the token manager's goroutine
}

func (*TokenFile) Method() string { return "token" }

func (f *TokenFile) Login(context.Context, *api.Client) (string, *api.SecretAuth, error) {
	b, err := readSecretFile(f.Path, "token file")
	if err != nil {
		return "", nil, err
	}
	f.last = b
	return string(b), nil, nil
}

// Changed reports whether the file holds something other than what Login read last.
func (f *TokenFile) Changed() bool {
	b, err := readSecretFile(f.Path, "token file")
	return err == nil && !bytes.Equal(b, f.last)
}

// AppRole logs in with a role id and a secret id. The secret id file is re-read at every
// login, so a rotated secret id is picked up without a restart.
type AppRole struct {
	Mount        string // "approle" by default
	RoleID       string // the role id, or
	RoleIDFile   string // a file holding it
	SecretIDFile string
}

func (AppRole) Method() string { return "approle" }

func (a AppRole) Login(ctx context.Context, c *api.Client) (string, *api.SecretAuth, error) {
	roleID := a.RoleID
	if a.RoleIDFile != "" {
		b, err := readSecretFile(a.RoleIDFile, "approle role id file")
		if err != nil {
			return "", nil, err
		}
		roleID = string(b)
	}
	if roleID == "" {
		return "", nil, &localError{"approle: no role id"}
	}
	body := map[string]any{"role_id": roleID}
	if a.SecretIDFile != "" {
		secretID, err := readSecretFile(a.SecretIDFile, "approle secret id file")
		if err != nil {
			return "", nil, err
		}
		body["secret_id"] = string(secretID)
	}
	return login(ctx, c, "auth/"+mountOr(a.Mount, "approle")+"/login", body)
}

// Kubernetes logs in with the pod's service-account JWT; Vault checks it with the apiserver's
// TokenReview. The JWT file is re-read at every login: kubelet rotates projected tokens.
type Kubernetes struct {
	Mount   string // "kubernetes" by default
	Role    string
	JWTFile string // "/var/run/secrets/kubernetes.io/serviceaccount/token" by default
}

// DefaultServiceAccountTokenFile is where kubelet mounts a pod's service-account token.
const DefaultServiceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

func (Kubernetes) Method() string { return "kubernetes" }

func (k Kubernetes) Login(ctx context.Context, c *api.Client) (string, *api.SecretAuth, error) {
	if k.Role == "" {
		return "", nil, &localError{"kubernetes auth: no role"}
	}
	path := k.JWTFile
	if path == "" {
		path = DefaultServiceAccountTokenFile
	}
	jwt, err := readCredential(path, "service-account token file", privatefile.Any) // kubelet's mode; doctor warns
	if err != nil {
		return "", nil, err
	}
	return login(ctx, c, "auth/"+mountOr(k.Mount, "kubernetes")+"/login", map[string]any{"role": k.Role, "jwt": string(jwt)})
}

// Cert logs in with Vault's TLS certificate auth method: the credential is the client
// certificate on the login's TLS connection, so Vault must be reached over https. The
// certificate and key come from one PEM file holding both, such as kubelet's
// /var/lib/kubelet/pki/kubelet-client-current.pem, or from two files. They are read at every
// login, and a change of the files logs in again at once (kubelet rotates its certificate
// before it expires).
type Cert struct {
	Mount    string // "cert" by default
	Role     string // the certificate role (auth/cert/certs/<name>); "" lets Vault try every role
	PEMFile  string // certificate and key in one PEM file, or
	CertFile string // the certificate (and chain) and
	KeyFile  string // its key
	last     [sha256.Size]byte
}

// DefaultKubeletClientPEM is where kubelet keeps its current client certificate and key.
const DefaultKubeletClientPEM = "/var/lib/kubelet/pki/kubelet-client-current.pem"

// certificateAuth is an Auth whose credential is a client certificate on the login's TLS
// connection.
type certificateAuth interface {
	clientCertificate() (*tls.Certificate, error)
}

func (*Cert) Method() string { return "cert" }

func (c *Cert) files() (certFile, keyFile string) {
	if c.PEMFile != "" {
		return c.PEMFile, c.PEMFile
	}
	return c.CertFile, c.KeyFile
}

func (c *Cert) read() (certPEM, keyPEM []byte, err error) {
	certFile, keyFile := c.files()
	if certFile == "" || keyFile == "" {
		return nil, nil, &localError{"cert auth: no certificate and key file configured"}
	}
	if certPEM, err = readCredential(certFile, "client certificate file", privatefile.Public); err != nil { // with a key in it: Secret
		return nil, nil, err
	}
	if keyFile == certFile {
		return certPEM, certPEM, nil
	}
	keyPEM, err = readSecretFile(keyFile, "client key file")
	return certPEM, keyPEM, err
}

// clientCertificate reads the certificate and key as the files hold them now.
func (c *Cert) clientCertificate() (*tls.Certificate, error) {
	certPEM, keyPEM, err := c.read()
	if err != nil {
		return nil, err
	}
	c.last = digest(certPEM, keyPEM)
	certFile, _ := c.files()
	// X509KeyPair takes the CERTIFICATE blocks from the first argument and the key block from
	// the second, so a combined file serves as both. Its errors never quote the key.
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, &localError{"cert auth: " + certFile + ": " + err.Error()}
	}
	if now := time.Now(); now.After(cert.Leaf.NotAfter) {
		return nil, &localError{fmt.Sprintf("cert auth: the certificate in %s expired at %s", certFile, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))}
	}
	return &cert, nil
}

// Changed reports whether the files hold another certificate or key than the last login read.
func (c *Cert) Changed() bool {
	certPEM, keyPEM, err := c.read()
	return err == nil && digest(certPEM, keyPEM) != c.last
}

// Login reads the certificate and logs in over a new connection of client's that presents it.
func (c *Cert) Login(ctx context.Context, client *api.Client) (string, *api.SecretAuth, error) {
	cert, err := c.clientCertificate()
	if err != nil {
		return "", nil, err
	}
	lc, err := presenting(client, cert)
	if err != nil {
		return "", nil, err
	}
	body := map[string]any{}
	if c.Role != "" {
		body["name"] = c.Role
	}
	return login(ctx, lc, "auth/"+mountOr(c.Mount, "cert")+"/login", body)
}

// presenting returns a client like c (address, TLS settings, namespace, failover) whose
// connections present cert. Its connections are not kept alive: a pooled connection would
// present the certificate it was opened with, not the one the file holds now.
func presenting(c *api.Client, cert *tls.Certificate) (*api.Client, error) {
	cfg := c.CloneConfig() // a copy of c's http.Client
	rt, err := withCertificate(cfg.HttpClient.Transport, cert)
	if err != nil {
		return nil, err
	}
	cfg.HttpClient.Transport = rt
	cfg.DisableRedirects = false // CloneConfig took it from the environment
	lc, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	lc.SetHeaders(c.Headers()) // the namespace and X-Vault-Request, not VAULT_HEADERS
	lc.SetToken("")            // not VAULT_TOKEN
	lc.SetWrappingLookupFunc(func(string, string) string { return "" })
	return lc, nil
}

func withCertificate(rt http.RoundTripper, cert *tls.Certificate) (http.RoundTripper, error) {
	switch t := rt.(type) {
	case *http.Transport:
		t = t.Clone()
		if t.TLSClientConfig == nil {
			t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		t.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		t.TLSClientConfig.GetClientCertificate = nil
		t.DisableKeepAlives = true
		return t, nil
	case failover:
		next, err := withCertificate(t.next, cert)
		return failover{next: next, addrs: t.addrs}, err
	case nil:
		return withCertificate(http.DefaultTransport.(*http.Transport), cert)
	}
	return nil, &localError{fmt.Sprintf("cert auth: cannot present a client certificate over a %T", rt)}
}

// JWT logs in with Vault's JWT/OIDC auth method and a JWT that something else keeps fresh in
// a file (a workload identity agent, a projected token). The file is read at every login, and
// a change of it logs in again at once.
type JWT struct {
	Mount     string // "jwt" by default
	Role      string // "" uses the method's default_role
	TokenFile string
	last      [sha256.Size]byte
}

func (*JWT) Method() string { return "jwt" }

func (j *JWT) Login(ctx context.Context, c *api.Client) (string, *api.SecretAuth, error) {
	token, err := readSecretFile(j.TokenFile, "JWT file")
	if err != nil {
		return "", nil, err
	}
	j.last = digest(token)
	body := map[string]any{"jwt": string(token)}
	if j.Role != "" {
		body["role"] = j.Role
	}
	return login(ctx, c, "auth/"+mountOr(j.Mount, "jwt")+"/login", body)
}

// Changed reports whether the file holds another JWT than the last login read.
func (j *JWT) Changed() bool {
	token, err := readSecretFile(j.TokenFile, "JWT file")
	return err == nil && digest(token) != j.last
}

func digest(parts ...[]byte) [sha256.Size]byte {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
		h.Write([]byte{0})
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

func login(ctx context.Context, c *api.Client, path string, body map[string]any) (string, *api.SecretAuth, error) {
	secret, err := c.Logical().WriteWithContext(ctx, path, body)
	if err != nil {
		return "", nil, err
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return "", nil, &localError{"login at " + path + " returned no token"}
	}
	return secret.Auth.ClientToken, secret.Auth, nil
}

// readSecretFile reads a small credential file; trailing whitespace (a newline from echo) is
// not part of the secret. Errors name the file, never its content. The file is held to the
// rule of internal/privatefile, as doctor holds it: private (chmod 600), owned by root or us.
func readSecretFile(path, what string) ([]byte, error) {
	return readCredential(path, what, privatefile.Secret)
}

func readCredential(path, what string, rule privatefile.Rule) ([]byte, error) {
	if path == "" {
		return nil, &localError{"no " + what + " configured"}
	}
	b, err := privatefile.ReadAs(path, rule)
	if err != nil {
		return nil, &localError{what + ": " + err.Error()}
	}
	if len(b) > 64<<10 {
		clear(b)
		return nil, &localError{fmt.Sprintf("%s %s: %d bytes is too large for a credential", what, path, len(b))}
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, &localError{what + " " + path + " is empty"}
	}
	return b, nil
}

func mountOr(mount, def string) string {
	if m := strings.Trim(mount, "/"); m != "" {
		return m
	}
	return def
}

// leaseOf learns a supplied token's TTL and renewability from a lookup of itself.
func leaseOf(secret *api.Secret) (*api.SecretAuth, error) {
	ttl, err := secret.TokenTTL()
	if err != nil {
		return nil, &localError{"token lookup: " + err.Error()}
	}
	renewable, err := secret.TokenIsRenewable()
	if err != nil {
		return nil, &localError{"token lookup: " + err.Error()}
	}
	return &api.SecretAuth{LeaseDuration: int(ttl / time.Second), Renewable: renewable}, nil
}

// Session is a token of one login by Login.
type Session struct {
	// Client carries the token and works in the configuration's namespace.
	Client *api.Client
	// Lease is the token's lease when the login created the token; nil for a supplied token
	// (token auth), which the caller may look up.
	Lease *api.SecretAuth
}

// Login logs in once with cfg.Auth, as the backend does, for a tool that asks Vault a few
// things and exits (kmsctl doctor, rollout-status). Logout afterwards, so that no run leaves a
// live token behind.
func Login(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.Auth == nil {
		return nil, &localError{"no auth method configured"}
	}
	anon, err := NewClient(cfg, cfg.Namespace, "")
	if err != nil {
		return nil, err
	}
	token, lease, err := cfg.Auth.Login(ctx, anon)
	if err != nil {
		return nil, err
	}
	client, err := NewClient(cfg, cfg.Namespace, token)
	if err != nil {
		return nil, err
	}
	return &Session{Client: client, Lease: lease}, nil
}

// Logout revokes the token if Login created it; a supplied token is left alone.
func (s *Session) Logout(ctx context.Context) {
	if s.Lease != nil {
		_ = s.Client.Auth().Token().RevokeSelfWithContext(ctx, "")
	}
}

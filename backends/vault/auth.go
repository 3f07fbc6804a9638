package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
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
	b, err := f.file().Read()
	if err != nil {
		return "", nil, err
	}
	f.last = b
	return string(b), nil, nil
}

// Changed reports whether the file holds something other than what Login read last.
func (f *TokenFile) Changed() bool {
	b, err := f.file().Read()
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
		b, err := a.roleIDFile().Read()
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
		secretID, err := a.secretIDFile().Read()
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
	jwt, err := k.jwtFile().Read()
	if err != nil {
		return "", nil, err
	}
	return login(ctx, c, "auth/"+mountOr(k.Mount, "kubernetes")+"/login", map[string]any{"role": k.Role, "jwt": string(jwt)})
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
	token, err := j.file().Read()
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
	token, err := j.file().Read()
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

package vault

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/api"
)

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
	files := c.credentials()
	if len(files) == 0 {
		return nil, nil, &localError{"cert auth: no certificate and key file configured"}
	}
	if certPEM, err = files[0].Read(); err != nil {
		return nil, nil, err
	}
	if len(files) == 1 { // one file holds both
		return certPEM, certPEM, nil
	}
	keyPEM, err = files[1].Read()
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

// A relay is a RoundTripper that hands requests on to another, as failover does; cert auth
// rebuilds it through a transport that presents the certificate.
type relay interface {
	// through is the relay handing requests on to change(next) instead of next.
	through(change func(next http.RoundTripper) (http.RoundTripper, error)) (http.RoundTripper, error)
}

// withCertificate is rt presenting cert on new connections that are not kept alive: the
// http.Transport at its bottom cloned and changed, whatever relays it through rebuilt.
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
	case relay:
		return t.through(func(next http.RoundTripper) (http.RoundTripper, error) { return withCertificate(next, cert) })
	case nil:
		return withCertificate(http.DefaultTransport.(*http.Transport), cert)
	}
	return nil, &localError{fmt.Sprintf("cert auth: cannot present a client certificate over a %T", rt)}
}

package vault

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// Config is everything the backend needs. The cmd layer fills it from flags and the few
// documented environment variables; nothing in this package reads the environment.
type Config struct {
	Address string // https://vault.example:8200, the preferred address
	// FailoverAddresses are more addresses of the same Vault cluster, in order of preference
	// after Address: a request that Address cannot serve (no connection, 5xx, 429, a standby's
	// redirect) goes to the next one, and requests go back to Address once it serves again.
	FailoverAddresses []string
	CAFile            string // PEM bundle that verifies Vault's certificate; "" uses the system roots
	ClientCert        string // PEM client certificate for TLS client auth, with ClientKey
	ClientKey         string
	TLSServerName     string // name to verify in Vault's certificate, when it differs from Address
	SkipVerify        bool   // do not verify Vault's certificate (test setups only; the cmd layer warns)
	Namespace         string // Vault Enterprise namespace of the transit mount and auth methods

	Mount string // transit mount path, "transit" by default
	Key   string // transit key name

	Auth Auth // how to get a token

	// CapabilitiesInterval is how often a check asks whether the token may still encrypt and
	// decrypt (capabilities.go); DefaultCapabilitiesInterval when zero.
	CapabilitiesInterval time.Duration

	// ReadVaultKubernetesKMS lets Unwrap decrypt vault-kubernetes-kms's envelopes (Transit
	// ciphertexts of this key, no associated data) under the key ids dek.VaultKMSKeyID gives
	// (foreign.go); off, such key ids are unknown.
	ReadVaultKubernetesKMS bool

	// Retry bounds retries of one operation; zero values take DefaultRetry's.
	Retry RetryPolicy
	// Clock drives renewals, login backoff and retry waits; nil is the real clock.
	Clock clock.Clock
	Log   *slog.Logger

	wrapTransport func(http.RoundTripper) http.RoundTripper // tests: count requests
}

func (c *Config) setDefaults() {
	if c.Mount == "" {
		c.Mount = "transit"
	}
	c.Mount = strings.Trim(c.Mount, "/")
	c.Namespace = strings.Trim(c.Namespace, "/")
	c.Retry = c.Retry.withDefaults()
	if c.CapabilitiesInterval <= 0 {
		c.CapabilitiesInterval = DefaultCapabilitiesInterval
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// WithDefaults is c with the defaults Open applies: the transit mount, namespace and mount
// trimmed of slashes, the retry policy, intervals, clock and log.
func (c Config) WithDefaults() Config {
	c.setDefaults()
	return c
}

// addresses is Address followed by FailoverAddresses.
func (c *Config) addresses() []string { return append([]string{c.Address}, c.FailoverAddresses...) }

func (c *Config) validate() error {
	all := c.addresses()
	seen := map[string]bool{}
	for _, a := range all {
		u, err := url.Parse(a)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("vault address %q: want http(s)://host:port", a)
		}
		if u.User != nil {
			// Credentials belong in files; an address is logged and shown by ps.
			return fmt.Errorf("vault address %s carries credentials: remove them and use --vault-auth", u.Redacted())
		}
		if len(all) > 1 && strings.Trim(u.Path, "/") != "" {
			return fmt.Errorf("vault address %q: with several addresses, each must be http(s)://host:port without a path", a)
		}
		if seen[u.Scheme+"://"+u.Host] {
			return fmt.Errorf("vault address %q is listed twice", a)
		}
		seen[u.Scheme+"://"+u.Host] = true
	}
	if c.Key == "" || strings.Contains(c.Key, "/") {
		return fmt.Errorf("transit key name %q: want a single path segment", c.Key)
	}
	if c.Mount == "" {
		return errors.New("transit mount path is empty")
	}
	if (c.ClientCert == "") != (c.ClientKey == "") {
		return errors.New("a client certificate needs both the certificate and the key file")
	}
	if c.Auth == nil {
		return errors.New("no auth method configured")
	}
	if _, ok := c.Auth.(certificateAuth); ok {
		for _, a := range all {
			if !strings.HasPrefix(a, "https://") {
				return fmt.Errorf("cert auth needs https: the client certificate travels in the TLS handshake, and %s is not https", a)
			}
		}
	}
	return nil
}

// Risks are the settings of c that work but expose tokens and DEKs on the network: serve logs
// each as a warning at start, kmsctl doctor prints each as one.
func (c *Config) Risks() []string {
	var out []string
	if c.SkipVerify {
		out = append(out, "--vault-skip-verify: Vault's certificate is NOT verified; anyone on the network path can read every DEK. Use --vault-ca-file instead.")
	}
	if c.Cleartext() {
		out = append(out, "--vault-addr is plain http to a non-loopback host: tokens and DEKs cross the network unencrypted")
	}
	return out
}

// Cleartext reports whether an address sends tokens and DEKs unencrypted over a network
// (http:// to anything but loopback), which the cmd layer warns about.
func (c *Config) Cleartext() bool {
	for _, a := range c.addresses() {
		if cleartext(a) {
			return true
		}
	}
	return false
}

func cleartext(address string) bool {
	u, err := url.Parse(address)
	if err != nil || u.Scheme != "http" {
		return false
	}
	host := u.Hostname()
	if host == "localhost" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// newTransport builds the one HTTP transport every Vault call shares, so connections are
// reused. No proxy: only the documented settings shape where requests go. It has no timeout
// of its own; every request carries its caller's deadline.
func (c *Config) newTransport() (*http.Transport, error) {
	tlsCfg, err := c.tlsFiles().Client()
	if err != nil {
		return nil, fmt.Errorf("vault TLS: %w", err)
	}
	tlsCfg.ServerName, tlsCfg.InsecureSkipVerify = c.TLSServerName, c.SkipVerify
	transport := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   5 * time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return transport, nil
}

// NewClient builds a vault/api client from cfg as Open builds the backend's own: cfg's TLS
// settings, requests failing over from Address to FailoverAddresses, no proxy, no redirect or
// retry of the library's own, nothing from VAULT_* variables. It works in namespace ("" is
// the root namespace, where sys/health lives; the backend's other requests go to
// cfg.Namespace) and carries token ("" for none). cfg is checked only as far as building the
// client needs; Open checks all of it.
func NewClient(cfg Config, namespace, token string) (*api.Client, error) {
	cfg.setDefaults()
	hc, _, _, err := cfg.httpClient()
	if err != nil {
		return nil, err
	}
	return cfg.newAPIClient(hc, namespace, token)
}

// httpClient builds the HTTP client that every Vault client of one backend shares, with its
// transport and failover state.
func (c *Config) httpClient() (*http.Client, *http.Transport, *addresses, error) {
	transport, err := c.newTransport()
	if err != nil {
		return nil, nil, nil, err
	}
	addrs, err := newAddresses(c.addresses(), c.Clock, c.Log)
	if err != nil {
		return nil, nil, nil, err
	}
	var rt http.RoundTripper = transport
	if c.wrapTransport != nil {
		rt = c.wrapTransport(rt)
	}
	return newHTTPClient(rt, addrs), transport, addrs, nil
}

// newHTTPClient is the client of every Vault call: the transport behind failover across the
// addresses, and no redirects followed by net/http (vault/api follows one itself, refusing a
// downgrade from https).
func newHTTPClient(transport http.RoundTripper, addrs *addresses) *http.Client {
	return &http.Client{
		Transport:     failover{next: transport, addrs: addrs},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// newAPIClient returns a vault/api client that uses only what Config says. api.NewClient
// always reads VAULT_* variables (token, namespace, headers; VAULT_WRAP_TTL at every request),
// so each of those is overwritten here; its own retries and 60 s timeout are off because
// retry.go retries within the caller's deadline.
func (c *Config) newAPIClient(hc *http.Client, namespace, token string) (*api.Client, error) {
	client, err := api.NewClient(&api.Config{
		Address:      c.Address,
		HttpClient:   hc,
		MaxRetries:   0,
		Timeout:      0,
		MinRetryWait: time.Millisecond,
		MaxRetryWait: time.Millisecond,
	})
	if err != nil {
		// Only a malformed VAULT_* variable makes it fail: it parses them all even though
		// every value is overridden below, and its error does not name the variable.
		return nil, fmt.Errorf("vault client: a VAULT_* environment variable is malformed; the plugin ignores them but the Vault library parses them all, so fix or unset it: %w", err)
	}
	client.SetHeaders(http.Header{api.RequestHeaderName: []string{"true"}})
	if namespace != "" {
		client.SetNamespace(namespace)
	}
	client.SetToken(token)
	client.SetWrappingLookupFunc(func(string, string) string { return "" })
	return client, nil
}

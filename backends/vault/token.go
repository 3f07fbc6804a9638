package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// Login backoff: a failing login is retried at checks no sooner than this allows, so a
// broken credential does not hammer Vault from every control-plane node. A login that failed
// because Vault could not be reached (or sealed, 5xx) backs off only up to
// loginUnreachableMax: the credential is fine, and Vault's return must end the outage within
// seconds (the Monitor retries as fast while the plugin cannot serve).
const (
	loginBackoffBase    = time.Second
	loginBackoffMax     = 2 * time.Minute
	loginUnreachableMax = 4 * time.Second
)

// tokens keeps the backend's Vault token alive: it logs in, renews the token when two thirds
// of its TTL have passed, and logs in again when the token is revoked, expires, or (for a
// token file) changes. Only Check calls ensure, one at a time; Wrap and Unwrap just flag a
// denial for the next check to look into.
type tokens struct {
	auth      Auth
	clk       clock.Clock
	log       *slog.Logger
	client    *api.Client                             // the backend's client; its token is set here
	newClient func(token string) (*api.Client, error) // for logins and lookups of a new token

	denied  atomic.Bool  // a request was denied since the last check
	expires atomic.Int64 // Unix nanoseconds when the token in use expires; 0: none or never

	token     string
	obtained  time.Time     // when the current TTL was learned
	ttl       time.Duration // 0: the token does not expire
	loginTTL  time.Duration // TTL at login; renewals that give much less mean max TTL is near
	renewable bool
	supplied  bool // the token came as such (VAULT_TOKEN, a file), not from a Vault login
	failures  int
	nextLogin time.Time
	lastErr   error
}

// ensure makes sure the token is usable, as far as can be known without using it.
func (t *tokens) ensure(ctx context.Context) error {
	now := t.clk.Now()
	switch {
	case t.token == "":
		return t.login(ctx, false)
	case changed(t.auth):
		return t.loginWithChanged(ctx)
	case t.denied.Load():
		return t.verify(ctx)
	case t.ttl > 0 && !now.Before(t.obtained.Add(t.ttl*2/3)):
		return t.refresh(ctx)
	}
	return nil
}

func changed(a Auth) bool {
	w, ok := a.(changeWatcher)
	return ok && w.Changed()
}

// loginWithChanged follows a change of the credential file. A new token in a token file is
// what the operator wants used: it replaces the old one, or the failure is reported. A new
// certificate or JWT logs in afresh at once, so a bad one shows while the current token
// still works: a failed login keeps that token (and says so) until it must be renewed.
func (t *tokens) loginWithChanged(ctx context.Context) error {
	if t.supplied {
		t.log.Info("vault token file changed; using the new token")
		return t.login(ctx, true)
	}
	t.log.Info("vault credential file changed; logging in with it", "method", t.auth.Method())
	err := t.login(ctx, true)
	if err != nil && t.token != "" {
		if left, ok := t.ttlLeft(); !ok || left > 0 {
			t.log.Warn("vault login with the changed credential failed; keeping the current token until it must be renewed", "method", t.auth.Method(), "error", err)
			return nil
		}
	}
	return err
}

// boundToCertificate: a token from a certificate login can be renewed only over a connection
// that presents the same certificate, which kubelet's rotation replaces; such a token is not
// renewed but replaced by a new login, which costs as much.
func boundToCertificate(a Auth) bool {
	_, ok := a.(certificateAuth)
	return ok
}

// verify follows a denial: a token that can still look itself up is valid and the denial is
// the policy's (reported by the caller, no login storm); otherwise log in again.
func (t *tokens) verify(ctx context.Context) error {
	t.denied.Store(false)
	_, err := t.client.Auth().Token().LookupSelfWithContext(ctx)
	if err == nil {
		return nil
	}
	if err := classify("token lookup", err); !errors.Is(err, dek.ErrDenied) {
		t.denied.Store(true) // could not tell; look again at the next check
		return err
	}
	t.log.Warn("vault token no longer valid (revoked or expired); logging in again", "method", t.auth.Method())
	return t.login(ctx, false)
}

// refresh renews a renewable token, or logs in again when it is not renewable or its max TTL
// is near.
func (t *tokens) refresh(ctx context.Context) error {
	if t.renewable && !boundToCertificate(t.auth) {
		secret, err := t.client.Auth().Token().RenewSelfWithContext(ctx, 0)
		if err == nil && secret != nil && secret.Auth != nil {
			ttl := time.Duration(secret.Auth.LeaseDuration) * time.Second
			// A supplied token cannot log in afresh: keep renewing it, however short it gets.
			if t.supplied || ttl >= t.loginTTL/2 {
				t.obtained, t.ttl, t.renewable = t.clk.Now(), ttl, secret.Auth.Renewable
				t.setExpiry()
				t.log.Debug("vault token renewed", "ttl", ttl.String())
				return nil
			}
			t.log.Info("vault token near its max TTL; logging in again", "method", t.auth.Method(), "ttl", ttl.String())
		} else if err != nil {
			if err := classify("token renewal", err); errors.Is(err, dek.ErrUnavailable) {
				// Vault unreachable: the token is still valid for a third of its TTL, so keep
				// it and renew at the next check; the key read says whether Vault is down.
				// Any other refusal (revoked, expired, not renewable after all) logs in.
				t.log.Warn("vault token renewal failed; retrying at the next check", "error", err)
				return nil
			}
		}
	}
	return t.login(ctx, false)
}

// login gets a new token. force skips the backoff (the input just changed).
func (t *tokens) login(ctx context.Context, force bool) error {
	now := t.clk.Now()
	if !force && t.lastErr != nil && now.Before(t.nextLogin) {
		return fmt.Errorf("%w (next %s login attempt in %s)", t.lastErr, t.auth.Method(), t.nextLogin.Sub(now).Round(time.Second))
	}
	token, lease, supplied, err := t.doLogin(ctx)
	if err != nil {
		t.failures++
		t.lastErr = classify(t.auth.Method()+" login", err)
		t.nextLogin = now.Add(loginBackoff(t.failures, errors.Is(t.lastErr, dek.ErrUnavailable)))
		return t.lastErr
	}
	t.client.SetToken(token)
	ttl := time.Duration(lease.LeaseDuration) * time.Second
	t.token, t.obtained, t.ttl, t.loginTTL, t.renewable, t.supplied = token, now, ttl, ttl, lease.Renewable, supplied
	t.failures, t.lastErr = 0, nil
	t.setExpiry()
	t.denied.Store(false)
	t.log.Info("vault login", "method", t.auth.Method(), "ttl", ttl.String(), "renewable", lease.Renewable)
	return nil
}

func (t *tokens) doLogin(ctx context.Context) (token string, lease *api.SecretAuth, supplied bool, err error) {
	anon, err := t.newClient("")
	if err != nil {
		return "", nil, false, err
	}
	token, lease, err = t.auth.Login(ctx, anon)
	if err != nil || lease != nil {
		return token, lease, false, err
	}
	// A supplied token: learn its TTL, and that it works at all.
	c, err := t.newClient(token)
	if err != nil {
		return "", nil, true, err
	}
	secret, err := c.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return "", nil, true, err
	}
	if secret == nil {
		return "", nil, true, &localError{"token lookup returned nothing"}
	}
	lease, err = leaseOf(secret)
	return token, lease, true, err
}

func (t *tokens) setExpiry() {
	if t.ttl <= 0 {
		t.expires.Store(0)
		return
	}
	t.expires.Store(t.obtained.Add(t.ttl).UnixNano())
}

// ttlLeft is the time left on the token in use, from memory; false if none or it never expires.
func (t *tokens) ttlLeft() (time.Duration, bool) {
	exp := t.expires.Load()
	if exp == 0 {
		return 0, false
	}
	return max(time.Unix(0, exp).Sub(t.clk.Now()), 0), true
}

// loginBackoff is the jittered wait after n consecutive failed logins, the last of which
// could not reach Vault (unreachable) or was refused or broken.
func loginBackoff(n int, unreachable bool) time.Duration {
	if unreachable {
		return backoff(loginBackoffBase, loginUnreachableMax, n)
	}
	return backoff(loginBackoffBase, loginBackoffMax, n)
}

package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// RetryPolicy replaces vault/api's own (four retries, up to 60 s), which would outlive the
// apiserver's 3 s call timeout many times over. Only failures that another attempt can fix
// are retried: network errors, 5xx and 429. A retry never starts unless its wait ends before
// the caller's deadline.
type RetryPolicy struct {
	Attempts int           // tries in all, including the first
	Base     time.Duration // wait before the second try; doubles each time
	Max      time.Duration // longest wait between tries
}

// DefaultRetry fits inside the plugin's 2 s backend timeout.
var DefaultRetry = RetryPolicy{Attempts: 3, Base: 50 * time.Millisecond, Max: 500 * time.Millisecond}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = DefaultRetry.Attempts
	}
	if p.Base <= 0 {
		p.Base = DefaultRetry.Base
	}
	if p.Max <= 0 {
		p.Max = DefaultRetry.Max
	}
	return p
}

// wait is the jittered wait after the given failed attempt (1-based): uniformly within
// [d/2, d) where d = Base * 2^(attempt-1), capped at Max, so that plugins on every
// control-plane node do not retry in step.
func (p RetryPolicy) wait(attempt int) time.Duration { return backoff(p.Base, p.Max, attempt) }

// backoff is the one jittered exponential backoff of this package (retries, logins): after the
// n-th failure (1-based), uniformly within [d/2, d] where d = base * 2^(n-1), capped at limit.
func backoff(base, limit time.Duration, n int) time.Duration {
	d := base << min(n-1, 30)
	if d > limit || d <= 0 {
		d = limit
	}
	return d/2 + rand.N(d/2+1)
}

// do runs op until it succeeds, fails in a way retrying cannot fix, runs out of attempts, or
// the next wait would pass ctx's deadline. It returns op's last error.
func (p RetryPolicy) do(ctx context.Context, clk clock.Clock, op func(context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil || !retryable(err) || attempt >= p.Attempts || ctx.Err() != nil {
			return err
		}
		wait := p.wait(attempt)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= wait {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-clk.After(wait):
		}
	}
}

// retryable reports whether another attempt may succeed: a network failure, a 5xx (a standby
// or restarting node) or a 429 (rate limited, or a standby that health checks treat so).
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode >= 500 || re.StatusCode == http.StatusTooManyRequests
	}
	var local *localError
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var badHost x509.HostnameError
	if errors.As(err, &local) || errors.As(err, &certErr) || errors.As(err, &unknownCA) || errors.As(err, &badHost) {
		return false // a certificate that fails verification fails again
	}
	return true // no HTTP response at all: connection refused or reset, DNS
}

// localError is a failure on our side of the wire (a bad response, a missing field); no
// retry fixes it.
type localError struct{ msg string }

func (e *localError) Error() string { return e.msg }

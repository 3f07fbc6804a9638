package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

// Classify is the backend's reading of an error from Vault, for a tool that asks Vault what the
// backend asks (kmsctl doctor): see classify.
func Classify(what string, err error) error { return classify(what, err) }

// classify turns a vault/api error into one that wraps the dek error kind the gRPC layer maps
// to a code. what names the operation ("decrypt with transit/decrypt/k"); messages carry Vault's
// own words, which never include tokens or plaintext.
func classify(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return dek.PublicAs(fmt.Errorf("%w: %s: vault did not answer in time: %w", dek.ErrUnavailable, what, err), "vault did not answer in time")
	}
	var local *localError
	if errors.As(err, &local) {
		return fmt.Errorf("%s: %w", what, err)
	}
	var re *api.ResponseError
	if !errors.As(err, &re) {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL (with sys/health's query) would crowd healthz's 256 bytes
		}
		return dek.PublicAs(fmt.Errorf("%w: %s: vault unreachable: %v", dek.ErrUnavailable, what, err), "vault unreachable")
	}
	msg := vaultMessage(re.Errors)
	switch {
	case re.StatusCode == http.StatusForbidden:
		return dek.PublicAs(fmt.Errorf("%w: %s: vault denied it (token revoked or expired, or the policy lacks this path): %s", dek.ErrDenied, what, msg),
			"vault denied it (token revoked or expired, or the policy lacks the path)")
	case re.StatusCode == http.StatusServiceUnavailable && strings.Contains(msg, "sealed"):
		return dek.PublicAs(fmt.Errorf("%w: %s: vault is sealed", dek.ErrUnavailable, what), "vault is sealed")
	case re.StatusCode >= 500 || re.StatusCode == http.StatusTooManyRequests:
		return dek.PublicAs(fmt.Errorf("%w: %s: vault answered %d: %s", dek.ErrUnavailable, what, re.StatusCode, msg), fmt.Sprintf("vault answered %d", re.StatusCode))
	case re.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %s: not found in vault: %s", dek.ErrUnknownKey, what, msg)
	case re.StatusCode == http.StatusBadRequest && strings.Contains(msg, "(too old)"):
		return fmt.Errorf("%w: %s: %s: the key version is below the transit key's min_decryption_version", dek.ErrUnknownKey, what, msg)
	case re.StatusCode == http.StatusBadRequest:
		return fmt.Errorf("%w: %s: %s", badRequestKind(msg), what, msg)
	}
	return fmt.Errorf("%s: vault answered %d: %s", what, re.StatusCode, msg)
}

// badRequestKind sorts transit's 400 answers (keysutil's user errors). A version below
// min_decryption_version, a version the key does not have and a deleted key all mean the data
// is intact but the key to read it is gone: ErrUnknownKey, which the apiserver sees as
// FailedPrecondition.
func badRequestKind(msg string) error {
	switch {
	case strings.Contains(msg, "disallowed by policy (too old)"),
		strings.Contains(msg, "version is too new"),
		strings.Contains(msg, "higher than the latest key version"),
		strings.Contains(msg, "less than the minimum encryption key version"),
		strings.Contains(msg, "no such key version"),
		strings.Contains(msg, "invalid key version"),
		strings.Contains(msg, "encryption key not found"):
		return dek.ErrUnknownKey
	case strings.Contains(msg, "message authentication failed"):
		return dek.ErrTampered
	case strings.Contains(msg, "invalid ciphertext"), strings.Contains(msg, "base64"):
		return dek.ErrMalformed
	}
	return errBadRequest
}

// errBadRequest is any other 400: a setting this backend does not support (a derived key) or
// a bug; the request as sent can never succeed.
var errBadRequest = errors.New("vault rejected the request")

// vaultMessage flattens Vault's error list, whose items may themselves be multi-line
// "2 errors occurred:\n\t* permission denied\n\t* invalid token", into one line for
// logs and healthz.
func vaultMessage(errs []string) string {
	var parts []string
	for _, e := range errs {
		for _, line := range strings.Split(e, "\n") {
			line = strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(line), "*"))
			if line != "" && !strings.HasSuffix(line, "errors occurred:") {
				parts = append(parts, line)
			}
		}
	}
	return strings.Join(parts, "; ")
}

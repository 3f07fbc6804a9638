package dek

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
)

// Error kinds. Backends wrap these (fmt.Errorf("...: %w", dek.ErrUnavailable)) so that the gRPC
// layer and the metrics can classify a failure without knowing the backend (Classify).
var (
	// ErrMalformed: the ciphertext is empty, truncated, oversized or not one of our envelopes.
	ErrMalformed = errors.New("malformed ciphertext")
	// ErrTampered: the ciphertext parsed but failed authentication (changed bytes, wrong key).
	ErrTampered = errors.New("ciphertext failed authentication")
	// ErrTooLarge: the plaintext exceeds MaxPlaintextSize.
	ErrTooLarge = errors.New("plaintext too large")
	// ErrUnknownKey: no key of that id is held, or it is retired (for example below Vault's
	// min_decryption_version). The data is intact; an operator must restore the key.
	ErrUnknownKey = errors.New("key-encryption key unknown or retired")
	// ErrUnavailable: the backend cannot be reached or is not ready (sealed, file unreadable).
	ErrUnavailable = errors.New("backend unavailable")
	// ErrDenied: the backend refused the operation (policy, revoked credentials).
	ErrDenied = errors.New("backend denied the operation")
	// ErrOverloaded: too many backend calls are in progress and waiting; nothing was tried.
	ErrOverloaded = errors.New("too many backend calls in progress")
)

// Abandoned reports whether err is a context's end (canceled, or past its deadline): the
// caller gave up, which is no answer from the backend. Requests that shared that caller's
// backend call try again with their own context.
func Abandoned(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// Refused reports whether err is the backend's authenticated "no": it answered and denied the
// credentials or the operation (ErrDenied), or said the key or version is gone (ErrUnknownKey).
// Nothing else is a refusal: an outage, an overload, a timeout, a malformed answer or a status
// the backend does not explain (a 412, a 5xx) says nothing about whether it would say yes.
func Refused(err error) bool {
	return errors.Is(err, ErrDenied) || errors.Is(err, ErrUnknownKey)
}

// Class is what a failure means to the two who see it: the gRPC client (Code) and the
// operator's metrics (Label, from a fixed set, never the error's text).
type Class struct {
	Code  codes.Code
	Label string
}

// classes is the one table of error kinds; docs/errors.md is the same table.
var classes = []struct {
	kind  error
	class Class
}{
	{ErrMalformed, Class{codes.InvalidArgument, "invalid"}},
	{ErrTampered, Class{codes.InvalidArgument, "invalid"}},
	{ErrTooLarge, Class{codes.InvalidArgument, "invalid"}},
	{ErrUnknownKey, Class{codes.FailedPrecondition, "unknown_key"}},
	{ErrFormatOff, Class{codes.FailedPrecondition, "format_off"}},
	{ErrDenied, Class{codes.PermissionDenied, "denied"}},
	{ErrOverloaded, Class{codes.ResourceExhausted, "overloaded"}},
	{ErrUnavailable, Class{codes.Unavailable, "unavailable"}},
}

// Classify returns err's class. ctx is the caller's: once it has ended, that is the answer
// whatever the backend said. A backend call that ran out of its own --timeout is
// Unavailable: the backend did not answer in time, the caller may still retry.
func Classify(ctx context.Context, err error) Class {
	switch {
	case err == nil:
		return Class{codes.OK, "ok"}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return Class{codes.DeadlineExceeded, "timeout"}
	case errors.Is(ctx.Err(), context.Canceled):
		return Class{codes.Canceled, "canceled"}
	}
	for _, c := range classes {
		if errors.Is(err, c.kind) {
			return c.class
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return Class{codes.Unavailable, "timeout"}
	case errors.Is(err, context.Canceled):
		return Class{codes.Canceled, "canceled"}
	}
	return Class{codes.Internal, "error"}
}

// publicError is an error that the gRPC client may be told of: its own text, or client.
type publicError struct {
	error
	client string // what the client is told; "" for the error's own text
}

func (e publicError) Unwrap() error { return e.error }

// Public marks err's text as fit for the gRPC client: it names only what the request itself
// carried (sizes, format versions, key ids) or a fix the apiserver's operator needs, never a
// local path, address or other configuration.
func Public(err error) error { return publicError{error: err} }

// PublicAs gives err a text fit for the gRPC client: its kind and summary ("backend
// unavailable: vault is sealed"), where err's own text names what only the log may (an address,
// a path). err's own text is unchanged.
func PublicAs(err error, summary string) error {
	return publicError{error: err, client: kindText(err) + ": " + summary}
}

// ClientMessage is what the gRPC client is told of err: the public text in its chain, or else
// its kind alone. The whole text goes to the plugin's log, which is where local paths and
// configuration belong.
func ClientMessage(err error) string {
	var pub publicError
	if errors.As(err, &pub) {
		if pub.client != "" {
			return pub.client
		}
		return pub.Error()
	}
	return kindText(err) + " (details in the plugin's log)"
}

func kindText(err error) string {
	for _, c := range classes {
		if errors.Is(err, c.kind) {
			return c.kind.Error()
		}
	}
	return "request failed"
}

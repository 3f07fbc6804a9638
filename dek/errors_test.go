package dek

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// Every error kind has one class, the caller's deadline wins over what the backend said, and
// docs/errors.md lists the same codes and labels.
func TestClassify(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
	defer cancel()
	canceled, stop := context.WithCancel(context.Background())
	stop()
	bg := context.Background()
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want Class
	}{
		{bg, nil, Class{codes.OK, "ok"}},
		{bg, fmt.Errorf("bad: %w", ErrMalformed), Class{codes.InvalidArgument, "invalid"}},
		{bg, fmt.Errorf("bad: %w", ErrTampered), Class{codes.InvalidArgument, "invalid"}},
		{bg, ErrTooLarge, Class{codes.InvalidArgument, "invalid"}},
		{bg, fmt.Errorf("v1: %w", ErrUnknownKey), Class{codes.FailedPrecondition, "unknown_key"}},
		{bg, fmt.Errorf("vault-kubernetes-kms: %w", ErrFormatOff), Class{codes.FailedPrecondition, "format_off"}},
		{bg, fmt.Errorf("403: %w", ErrDenied), Class{codes.PermissionDenied, "denied"}},
		{bg, ErrOverloaded, Class{codes.ResourceExhausted, "overloaded"}},
		{bg, fmt.Errorf("sealed: %w", ErrUnavailable), Class{codes.Unavailable, "unavailable"}},
		{bg, fmt.Errorf("vault: %w", context.DeadlineExceeded), Class{codes.Unavailable, "timeout"}},
		{bg, context.Canceled, Class{codes.Canceled, "canceled"}},
		{bg, errors.New("something new"), Class{codes.Internal, "error"}},
		{expired, fmt.Errorf("sealed: %w", ErrUnavailable), Class{codes.DeadlineExceeded, "timeout"}},
		{canceled, ErrTampered, Class{codes.Canceled, "canceled"}},
	} {
		if got := Classify(tc.ctx, tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}

	raw, err := os.ReadFile("../docs/errors.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range classes {
		row := "| `" + c.class.Code.String() + "` | `" + c.class.Label + "`"
		if !strings.Contains(string(raw), row) {
			t.Errorf("docs/errors.md has no row starting %q", row)
		}
	}
}

// PublicAs tells the client the kind and a summary, and the log the whole text.
func TestPublicAs(t *testing.T) {
	err := PublicAs(fmt.Errorf("%w: vault at https://10.0.0.7:8200 is sealed", ErrUnavailable), "vault is sealed")
	wrapped := fmt.Errorf("probe wrap with k: %w", err)
	if got := ClientMessage(wrapped); got != "backend unavailable: vault is sealed" {
		t.Fatalf("ClientMessage = %q", got)
	}
	if !strings.Contains(wrapped.Error(), "10.0.0.7") || !errors.Is(wrapped, ErrUnavailable) {
		t.Fatalf("the log's text or the kind was lost: %v", wrapped)
	}
}

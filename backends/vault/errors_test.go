package vault

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		status int
		msg    string
		want   error
	}{
		{403, "permission denied", dek.ErrDenied},
		{503, "Vault is sealed", dek.ErrUnavailable},
		{500, "internal error", dek.ErrUnavailable},
		{429, "rate limited", dek.ErrUnavailable},
		{404, "", dek.ErrUnknownKey},
		{400, "ciphertext or signature version is disallowed by policy (too old)", dek.ErrUnknownKey},
		{400, "invalid ciphertext: version is too new", dek.ErrUnknownKey},
		{400, "requested version for encryption is higher than the latest key version", dek.ErrUnknownKey},
		{400, "encryption key not found", dek.ErrUnknownKey},
		{400, "cipher: message authentication failed", dek.ErrTampered},
		{400, "invalid ciphertext length", dek.ErrMalformed},
		{400, "something else", errBadRequest},
	}
	for _, c := range cases {
		err := classify("op", &api.ResponseError{StatusCode: c.status, Errors: []string{c.msg}})
		if !errors.Is(err, c.want) {
			t.Errorf("%d %q: %v, want %v", c.status, c.msg, err, c.want)
		}
	}
	multi := classify("op", &api.ResponseError{StatusCode: 403, Errors: []string{"2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"}})
	if !strings.HasSuffix(multi.Error(), ": permission denied; invalid token") {
		t.Errorf("multi-line Vault error flattened to %q", multi)
	}
	if err := classify("op", context.DeadlineExceeded); !errors.Is(err, dek.ErrUnavailable) {
		t.Errorf("deadline: %v", err)
	}
}

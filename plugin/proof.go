package plugin

import (
	"context"
	"errors"

	"github.com/kmsplugin/kms-plugin/dek"
)

// Proving returns kek with each successful Wrap and Unwrap counted by m as proof that the
// backend works, so that a busy plugin needs no probe round trips of its own, and each denial
// (dek.ErrDenied) reported to m as a refusal, which ends serving from memory at once. It
// belongs right above the backend (below any cache): an answer from memory proves nothing.
//
// Only denials count from real requests: an unknown key there may be one envelope's (a retired
// version, another cluster's key), not the backend's; the Monitor's checks judge the key.
func (m *Monitor) Proving(kek dek.KEK) dek.KEK { return provingKEK{KEK: kek, m: m} }

type provingKEK struct {
	dek.KEK
	m *Monitor
}

func (p provingKEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	out, err := p.KEK.Wrap(ctx, keyID, plain)
	p.observe(err, p.m.Wrapped)
	return out, err
}

func (p provingKEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	out, err := p.KEK.Unwrap(ctx, keyID, wrapped)
	p.observe(err, p.m.Unwrapped)
	return out, err
}

func (p provingKEK) observe(err error, proved func()) {
	switch {
	case err == nil:
		proved()
	case errors.Is(err, dek.ErrDenied):
		p.m.Refused(err)
	}
}

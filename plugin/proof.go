package plugin

import (
	"context"

	"github.com/kmsplugin/kms-plugin/dek"
)

// Proving returns kek with each successful Wrap and Unwrap counted by m as proof that the
// backend works, so that a busy plugin needs no probe round trips of its own. It belongs
// right above the backend (below any cache): an answer from memory proves nothing.
func (m *Monitor) Proving(kek dek.KEK) dek.KEK { return provingKEK{KEK: kek, m: m} }

type provingKEK struct {
	dek.KEK
	m *Monitor
}

func (p provingKEK) Wrap(ctx context.Context, keyID string, plain []byte) ([]byte, error) {
	out, err := p.KEK.Wrap(ctx, keyID, plain)
	if err == nil {
		p.m.Wrapped()
	}
	return out, err
}

func (p provingKEK) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	out, err := p.KEK.Unwrap(ctx, keyID, wrapped)
	if err == nil {
		p.m.Unwrapped()
	}
	return out, err
}

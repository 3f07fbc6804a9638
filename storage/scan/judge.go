package scan

import (
	"context"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
)

// Judge tells whether a raw etcd value is on its resource's write key, the way Scan counts
// it: for tools that act on each stale object (rewrite) rather than count them.
type Judge struct {
	write func(encryptionconfig.Resource) Storage
	names []string
}

// NewJudge resolves the write key of every rule of cfg, asking each KMS v2 plugin for its
// key id once (see Scan).
func NewJudge(ctx context.Context, cfg *encryptionconfig.Config) (*Judge, error) {
	write, err := writeKeys(ctx, cfg, &Report{})
	if err != nil {
		return nil, err
	}
	return &Judge{write: write, names: names(cfg)}, nil
}

// Current reports how value is stored and whether that is res's write key.
func (j *Judge) Current(res encryptionconfig.Resource, value []byte) (Storage, bool) {
	s := Classify(value, j.names)
	return s, isCurrent(s, j.write(res))
}

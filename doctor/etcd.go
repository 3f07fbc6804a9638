package doctor

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kmsplugin/kms-plugin/storage/scan"
)

// KeyIDsInEtcd reads every KMS v2 value under root the way `kmsctl scan` does and counts
// the objects per key id. With provider set, only that KMS provider's values count.
func KeyIDsInEtcd(ctx context.Context, kv clientv3.KV, root, provider string) (map[string]int, error) {
	rep, err := scan.Scan(ctx, kv, scan.Options{Root: root})
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, r := range rep.Resources {
		for _, s := range r.Storage {
			if s.Class == scan.KMSv2 && s.Key != "" && (provider == "" || s.Provider == provider) {
				out[s.Key] += s.Objects
			}
		}
	}
	return out, nil
}

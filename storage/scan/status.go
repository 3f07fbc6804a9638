package scan

import (
	"context"
	"fmt"
	"io"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
)

// KMSStatus is what a KMS v2 plugin answered to Status: its key id is the one the apiserver
// writes new objects under.
type KMSStatus struct {
	Provider string `json:"provider"`
	Endpoint string `json:"endpoint"`
	KeyID    string `json:"keyID"`
	Healthz  string `json:"healthz"`
}

// QueryStatus asks the KMS v2 plugin of p for its Status over its unix socket, as the
// apiserver does, and checks the answer the way the apiserver does.
func QueryStatus(ctx context.Context, p encryptionconfig.Provider) (KMSStatus, error) {
	conn, err := kmsclient.Dial(p.Endpoint)
	if err != nil {
		return KMSStatus{}, fmt.Errorf("kms provider %q: %w", p.Name, err)
	}
	defer conn.Close()
	resp, err := kmsclient.CheckStatus(ctx, conn, p.Timeout)
	st := KMSStatus{Provider: p.Name, Endpoint: p.Endpoint, KeyID: resp.KeyID, Healthz: resp.Healthz}
	if err != nil {
		return st, fmt.Errorf("kms provider %q at %s: %w", p.Name, p.Endpoint, err)
	}
	return st, nil
}

// PluginKeyIDs asks the KMS v2 plugin of every rule's write provider (WriteKMSv2Providers) for
// its key id, over its socket: the key ids the apiservers should write under, by provider name.
// Plugins that do not answer are left out (and noted to log).
func PluginKeyIDs(ctx context.Context, cfg *encryptionconfig.Config, log io.Writer) map[string]string {
	out := map[string]string{}
	if cfg == nil {
		return out
	}
	for _, p := range WriteKMSv2Providers(cfg) {
		st, err := QueryStatus(ctx, p)
		if err != nil {
			fmt.Fprintf(log, "note: not checking the apiservers against the plugin of %q: %v\n", p.Name, err)
			continue
		}
		out[p.Name] = st.KeyID
	}
	return out
}

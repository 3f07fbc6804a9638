package scan

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/plugin"
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
func QueryStatus(ctx context.Context, p Provider) (KMSStatus, error) {
	path, err := plugin.SocketPath(p.Endpoint)
	if err != nil {
		return KMSStatus{}, fmt.Errorf("kms provider %q: %w", p.Name, err)
	}
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("localhost"))
	if err != nil {
		return KMSStatus{}, fmt.Errorf("kms provider %q: %w", p.Name, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	resp, err := kmsapi.NewKeyManagementServiceClient(conn).Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		return KMSStatus{}, fmt.Errorf("kms provider %q: Status at %s: %w", p.Name, path, err)
	}
	st := KMSStatus{Provider: p.Name, Endpoint: p.Endpoint, KeyID: resp.KeyId, Healthz: resp.Healthz}
	if resp.Version != "v2" {
		return st, fmt.Errorf("kms provider %q: Status reports version %q, want v2", p.Name, resp.Version)
	}
	if resp.KeyId == "" || len(resp.KeyId) > maxKeyIDSize {
		return st, fmt.Errorf("kms provider %q: Status reports an invalid key id (%d bytes)", p.Name, len(resp.KeyId))
	}
	return st, nil
}

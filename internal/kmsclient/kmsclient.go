// Package kmsclient is the apiserver's side of a KMS v2 plugin's unix socket, for the tools and
// checks that play that side: the endpoint forms an EncryptionConfiguration uses, the dial, and
// the Status check with the apiserver's key-id rule. The serving code and the storage toolbox
// both use it, so it imports neither.
package kmsclient

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

// SocketPath accepts a path or a unix:// URL, the form EncryptionConfiguration uses, and
// returns the cleaned absolute path.
func SocketPath(endpoint string) (string, error) {
	path := strings.TrimPrefix(endpoint, "unix://")
	if path == "" || !filepath.IsAbs(path) {
		return "", fmt.Errorf("socket %q: want an absolute path or unix:///absolute/path", endpoint)
	}
	return filepath.Clean(path), nil
}

// Dial connects to a plugin's socket, given as a path or unix:///path. The connection is made
// lazily, on the first call; close it when done. The authority is "localhost", as
// kube-apiserver sends.
func Dial(endpoint string) (*grpc.ClientConn, error) {
	path, err := SocketPath(endpoint)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("localhost"))
}

// APIServerTimeout is kube-apiserver's timeout of one call to a KMS plugin when its
// EncryptionConfiguration's kms provider sets no `timeout`.
const APIServerTimeout = 3 * time.Second

// MaxKeyIDSize is the apiserver's limit on a key id (kmsv2.KeyIDMaxSize), in Status answers
// and in stored EncryptedObjects alike.
const MaxKeyIDSize = 1024

// ValidateKeyID is the apiserver's key-id rule (kmsv2.ValidateKeyID): 1 to MaxKeyIDSize bytes.
func ValidateKeyID(keyID string) error {
	if len(keyID) == 0 || len(keyID) > MaxKeyIDSize {
		return fmt.Errorf("key id of %d bytes: want 1 to %d", len(keyID), MaxKeyIDSize)
	}
	return nil
}

// Status is a plugin's answer to Status.
type Status struct {
	Version string
	KeyID   string
	Healthz string // "ok" when healthy; left to the caller to judge
}

// CheckStatus calls Status within timeout and checks the answer as the apiserver does: version
// v2 and a valid key id. The answer is returned with the error when it fails the check, so that
// callers can report what the plugin said.
func CheckStatus(ctx context.Context, conn grpc.ClientConnInterface, timeout time.Duration) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := kmsapi.NewKeyManagementServiceClient(conn).Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		return Status{}, fmt.Errorf("Status: %w", err)
	}
	st := Status{Version: resp.Version, KeyID: resp.KeyId, Healthz: resp.Healthz}
	if st.Version != "v2" {
		return st, fmt.Errorf("Status reports version %q, want v2", st.Version)
	}
	if err := ValidateKeyID(st.KeyID); err != nil {
		return st, fmt.Errorf("Status reports an invalid %w", err)
	}
	return st, nil
}

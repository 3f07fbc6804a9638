package providers

import (
	"fmt"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// DialPlugin connects to a KMS plugin's unix socket, given as an EncryptionConfiguration
// endpoint (unix:///path) or a path. The connection is made lazily, on the first call; close
// it when done. The authority is "localhost", as kube-apiserver sends.
func DialPlugin(endpoint string) (*grpc.ClientConn, error) {
	path := strings.TrimPrefix(endpoint, "unix://")
	if path == "" || !filepath.IsAbs(path) {
		return nil, fmt.Errorf("kms endpoint %q: want unix:///absolute/path", endpoint)
	}
	return grpc.NewClient("unix:"+filepath.Clean(path),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("localhost"))
}

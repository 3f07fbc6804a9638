package plugin

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsv1 "k8s.io/kms/apis/v1beta1"
	kmsapi "k8s.io/kms/apis/v2"
)

// ServiceV1beta1 serves the deprecated KMS v1beta1 API with the same sealer, envelope and
// Monitor as the v2 Service, for clusters whose EncryptionConfiguration still has a `kms`
// provider with `apiVersion: v1`. Such an apiserver calls Encrypt on every write (a new DEK per
// object), so with Vault every write is a Vault round trip: see docs/operations.md.
type ServiceV1beta1 struct {
	kmsv1.UnimplementedKeyManagementServiceServer
	v2      *Service
	version string
}

// NewServiceV1beta1 returns the v1beta1 service beside svc; version is the plugin's own
// version, reported as runtime_version.
func NewServiceV1beta1(svc *Service, version string) *ServiceV1beta1 {
	return &ServiceV1beta1{v2: svc, version: version}
}

// apiVersionV1beta1 is the only version a v1 apiserver asks for and accepts.
const apiVersionV1beta1 = "v1beta1"

// Version answers the apiserver's version handshake. It does not depend on the backend: the
// apiserver's v1 health check is an Encrypt and Decrypt of its own.
func (s *ServiceV1beta1) Version(_ context.Context, req *kmsv1.VersionRequest) (*kmsv1.VersionResponse, error) {
	if req.Version != "" && req.Version != apiVersionV1beta1 {
		return nil, status.Errorf(codes.InvalidArgument, "KMS API version %q: this service speaks v1beta1", req.Version)
	}
	return &kmsv1.VersionResponse{Version: apiVersionV1beta1, RuntimeName: "kms-plugin", RuntimeVersion: s.version}, nil
}

// Encrypt seals plain exactly as the v2 Encrypt does, under the key Status would report.
func (s *ServiceV1beta1) Encrypt(ctx context.Context, req *kmsv1.EncryptRequest) (*kmsv1.EncryptResponse, error) {
	resp, err := s.v2.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: req.Plain})
	if err != nil {
		return nil, err
	}
	return &kmsv1.EncryptResponse{Cipher: resp.Ciphertext}, nil
}

// Decrypt opens a ciphertext of either API: the envelope is the same.
func (s *ServiceV1beta1) Decrypt(ctx context.Context, req *kmsv1.DecryptRequest) (*kmsv1.DecryptResponse, error) {
	resp, err := s.v2.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: req.Cipher})
	if err != nil {
		return nil, err
	}
	return &kmsv1.DecryptResponse{Plain: resp.Plaintext}, nil
}

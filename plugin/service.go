package plugin

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/textutil"
)

// maxHealthzSize keeps an unhealthy Status short; the apiserver logs it.
const maxHealthzSize = 256

// Service implements kmsapi.KeyManagementServiceServer.
type Service struct {
	kmsapi.UnimplementedKeyManagementServiceServer

	sealer   *dek.Sealer
	monitor  *Monitor
	failures *failureLog
}

// NewService returns the gRPC service over sealer (dek.NewSealer, or dek.NewLocalSealer for
// local KEK mode). A request runs within its caller's deadline; the sealer's KEK bounds its
// own backend calls (limit.Timeout).
func NewService(sealer *dek.Sealer, monitor *Monitor, log *slog.Logger) *Service {
	return &Service{sealer: sealer, monitor: monitor, failures: newFailureLog(log, time.Now)}
}

// Status answers from the Monitor's state; it never calls the backend.
func (s *Service) Status(context.Context, *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	keyID, unhealthy := s.monitor.Health()
	if keyID == "" {
		return nil, status.Errorf(codes.Unavailable, "no key id yet: %v", unhealthy)
	}
	healthz := "ok"
	if unhealthy != nil {
		healthz = textutil.Truncate(unhealthy.Error(), maxHealthzSize)
	}
	return &kmsapi.StatusResponse{Version: "v2", Healthz: healthz, KeyId: keyID}, nil
}

// Encrypt seals the plaintext under a fresh DEK wrapped by the key that Status reports, so the
// response's key_id always equals Status's.
func (s *Service) Encrypt(ctx context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	keyID, unhealthy := s.monitor.State()
	if keyID == "" {
		return nil, s.fail(ctx, "Encrypt", req.Uid, "", status.Errorf(codes.Unavailable, "no key id yet: %v", unhealthy))
	}
	if len(req.Plaintext) == 0 {
		return nil, s.fail(ctx, "Encrypt", req.Uid, keyID, status.Error(codes.InvalidArgument, "empty plaintext"))
	}
	ciphertext, err := s.sealer.Encrypt(ctx, keyID, req.Plaintext)
	if err != nil {
		return nil, s.fail(ctx, "Encrypt", req.Uid, keyID, err)
	}
	return &kmsapi.EncryptResponse{Ciphertext: ciphertext, KeyId: keyID}, nil
}

// Decrypt opens the ciphertext with the key named inside it. The request's key_id is only
// logged: trusting it could strand data if key id formats ever change.
func (s *Service) Decrypt(ctx context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	plaintext, keyID, err := s.sealer.Decrypt(ctx, req.Ciphertext)
	if err != nil {
		if keyID == "" {
			keyID = req.KeyId
		}
		return nil, s.fail(ctx, "Decrypt", req.Uid, keyID, err)
	}
	return &kmsapi.DecryptResponse{Plaintext: plaintext}, nil
}

// fail logs a failed request (bounded, repeats counted) and returns it as a gRPC status.
func (s *Service) fail(ctx context.Context, method, uid, keyID string, err error) error {
	st := toStatus(ctx, err)
	s.failures.failed(method, uid, keyID, st.Code().String(), err.Error())
	return st.Err()
}

// toStatus maps an error to its gRPC status with dek.Classify's table. The client is told
// dek.ClientMessage: no local path or configuration, which the log has.
func toStatus(ctx context.Context, err error) *status.Status {
	if st, ok := status.FromError(err); ok {
		return st
	}
	return status.New(dek.Classify(ctx, err).Code, dek.ClientMessage(err))
}

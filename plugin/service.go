package plugin

import (
	"context"
	"errors"
	"fmt"
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

// Status answers from the Monitor's state; it never calls the backend. Like every answer to
// the client, an unhealthy one says dek.ClientMessage: the log has the whole error.
//
// A backend that says its key is gone (dek.ErrUnknownKey from a check: deleted) makes Status
// fail rather than answer unhealthy: the apiserver keeps writing with its DEK seed while Status
// answers with an unchanged key id, whatever healthz says, and only a failing Status starts
// the countdown (3 minutes) after which it stops writing data nothing could read back.
func (s *Service) Status(ctx context.Context, _ *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	keyID, unhealthy := s.monitor.Health()
	switch {
	case keyID == "":
		return nil, status.Error(codes.Unavailable, noKeyIDYet(unhealthy))
	case errors.Is(unhealthy, dek.ErrUnknownKey):
		return nil, toStatus(ctx, unhealthy).Err()
	}
	healthz := "ok"
	if unhealthy != nil {
		healthz = textutil.Truncate(dek.ClientMessage(unhealthy), maxHealthzSize)
	}
	return &kmsapi.StatusResponse{Version: "v2", Healthz: healthz, KeyId: keyID}, nil
}

func noKeyIDYet(unhealthy error) string {
	return "no key id yet: " + dek.ClientMessage(unhealthy)
}

// Encrypt seals the plaintext under a fresh DEK wrapped by the key that Status reports, so the
// response's key_id always equals Status's.
func (s *Service) Encrypt(ctx context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	keyID, unhealthy := s.monitor.State()
	if keyID == "" {
		return nil, s.fail(ctx, "Encrypt", req.Uid, "", dek.Public(fmt.Errorf("%w: %s", dek.ErrUnavailable, noKeyIDYet(unhealthy))))
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

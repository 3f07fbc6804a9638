package metrics

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// methods maps the gRPC methods that are counted to their api and method labels; others
// (the gRPC health service) are not counted, which keeps the labels bounded.
var methods = map[string][2]string{
	"/v2.KeyManagementService/Status":       {"v2", "Status"},
	"/v2.KeyManagementService/Encrypt":      {"v2", "Encrypt"},
	"/v2.KeyManagementService/Decrypt":      {"v2", "Decrypt"},
	"/v1beta1.KeyManagementService/Version": {"v1beta1", "Version"},
	"/v1beta1.KeyManagementService/Encrypt": {"v1beta1", "Encrypt"},
	"/v1beta1.KeyManagementService/Decrypt": {"v1beta1", "Decrypt"},
}

// UnaryInterceptor counts and times every KMS request, and tracks those in flight.
func (m *Metrics) UnaryInterceptor() grpc.UnaryServerInterceptor {
	for _, l := range methods {
		m.requestDuration.WithLabelValues(l[0], l[1])
		m.inFlight.WithLabelValues(l[0], l[1])
		m.requests.WithLabelValues(l[0], l[1], "OK")
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		l, ok := methods[info.FullMethod]
		if !ok {
			return handler(ctx, req)
		}
		inFlight := m.inFlight.WithLabelValues(l[0], l[1])
		inFlight.Inc()
		start := time.Now()
		resp, err := handler(ctx, req)
		m.requestDuration.WithLabelValues(l[0], l[1]).Observe(time.Since(start).Seconds())
		inFlight.Dec()
		m.requests.WithLabelValues(l[0], l[1], status.Code(err).String()).Inc()
		return resp, err
	}
}

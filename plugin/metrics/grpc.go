package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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

// methodMetrics are one method's series, looked up once: a label lookup hashes the labels on
// every call.
type methodMetrics struct {
	labels   [2]string
	duration prometheus.Observer
	inFlight prometheus.Gauge
	ok       prometheus.Counter
}

// UnaryInterceptor counts and times every KMS request, and tracks those in flight.
func (m *Metrics) UnaryInterceptor() grpc.UnaryServerInterceptor {
	series := make(map[string]methodMetrics, len(methods))
	for name, l := range methods {
		series[name] = methodMetrics{
			labels:   l,
			duration: m.requestDuration.WithLabelValues(l[0], l[1]),
			inFlight: m.inFlight.WithLabelValues(l[0], l[1]),
			ok:       m.requests.WithLabelValues(l[0], l[1], codes.OK.String()),
		}
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		s, ok := series[info.FullMethod]
		if !ok {
			return handler(ctx, req)
		}
		s.inFlight.Inc()
		start := time.Now()
		resp, err := handler(ctx, req)
		s.duration.Observe(time.Since(start).Seconds())
		s.inFlight.Dec()
		if err == nil {
			s.ok.Inc()
		} else {
			m.requests.WithLabelValues(s.labels[0], s.labels[1], status.Code(err).String()).Inc()
		}
		return resp, err
	}
}

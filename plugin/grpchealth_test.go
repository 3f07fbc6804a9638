package plugin_test

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kmsplugin/kms-plugin/dek"
)

// The standard gRPC health service on the socket follows the Monitor: NOT_SERVING while the
// backend fails, SERVING again once it recovers, for the server and each KMS service.
func TestGRPCHealthFollowsTheMonitor(t *testing.T) {
	p := startPlugin(t)
	conn, err := grpc.NewClient("unix://"+p.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	want := func(st healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		for _, svc := range []string{"", "v2.KeyManagementService", "v1beta1.KeyManagementService"} {
			resp, err := health.Check(ctx(t), &healthpb.HealthCheckRequest{Service: svc})
			if err != nil || resp.Status != st {
				t.Fatalf("health of %q = %v, %v; want %v", svc, resp, err, st)
			}
		}
	}
	want(healthpb.HealthCheckResponse_SERVING)

	p.kek.set(fmt.Errorf("vault is sealed: %w", dek.ErrUnavailable), 0)
	p.monitor.Refresh(context.Background())
	want(healthpb.HealthCheckResponse_NOT_SERVING)

	p.kek.set(nil, 0)
	p.monitor.Refresh(context.Background())
	want(healthpb.HealthCheckResponse_SERVING)
}

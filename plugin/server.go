package plugin

import (
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	kmsv1 "k8s.io/kms/apis/v1beta1"
	kmsapi "k8s.io/kms/apis/v2"
)

// MaxRequestSize bounds one request on the wire, and so what a peer's unfinished request can
// make the plugin hold (PeerLimits.HeldBytes). It sits above dek.MaxCiphertextSize (8,871)
// so that an oversized ciphertext gets our InvalidArgument, with 7,513 bytes to spare for the
// request's other fields (uid, key id, annotations: the apiserver's are the few bytes our
// Encrypt returned) and for later growth of the envelope; anything larger is gRPC's
// ResourceExhausted.
const MaxRequestSize = 16 << 10

// MaxRequestSizeCeiling is the largest ServerConfig.MaxRequestSize that serve accepts: with
// DefaultPeerLimits, peers' unfinished requests then hold up to 160 MiB (HeldBytes), still
// under the static pod's 256 MiB limit.
const MaxRequestSizeCeiling = 32 << 10

// healthServices are the names the gRPC health service answers for, besides the whole server ("").
var healthServices = []string{"", kmsapi.KeyManagementService_ServiceDesc.ServiceName, kmsv1.KeyManagementService_ServiceDesc.ServiceName}

// ServerConfig completes a gRPC server beyond the KMS v2 service.
type ServerConfig struct {
	// Version is the plugin's version, which KMS v1beta1's Version reports.
	Version string
	// MaxRequestSize overrides MaxRequestSize when positive.
	MaxRequestSize int
	// Peers bound what socket peers can hold (connections, streams, time); zero fields take
	// DefaultPeerLimits.
	Peers PeerLimits
	// Options are added last, so they win (interceptors, for example).
	Options []grpc.ServerOption
}

// Server is the gRPC server on the socket: KMS v2, KMS v1beta1 and the standard gRPC health
// service (grpc.health.v1), whose status follows the Monitor, so that grpc-health-probe
// style checks see what Status's healthz says.
type Server struct {
	*grpc.Server
	health *health.Server
	peers  PeerLimits
}

// NewServer returns a Server for svc.
func NewServer(svc *Service, cfg ServerConfig) *Server {
	size := MaxRequestSize
	if cfg.MaxRequestSize > 0 {
		size = cfg.MaxRequestSize
	}
	peers := cfg.Peers.withDefaults()
	opts := append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(size),
		// Requests run on long-lived goroutines whose stacks have grown already: a fresh goroutine
		// per request spent about an eighth of the plugin's CPU growing its stack through the
		// handler's layers (runtime.newstack, docs/performance.md). One worker per stream a
		// connection may hold; requests beyond them get a goroutine of their own as before.
		grpc.NumStreamWorkers(peers.MaxStreams),
	}, peers.serverOptions()...)
	s := &Server{
		Server: grpc.NewServer(append(opts, cfg.Options...)...),
		health: health.NewServer(),
		peers:  peers,
	}
	kmsapi.RegisterKeyManagementServiceServer(s.Server, svc)
	kmsv1.RegisterKeyManagementServiceServer(s.Server, NewServiceV1beta1(svc, cfg.Version))
	healthpb.RegisterHealthServer(s.Server, s.health)
	s.follow(svc.monitor.Health())
	svc.monitor.OnRefresh(func(string, error) { s.follow(svc.monitor.Health()) })
	return s
}

// follow sets the health service's status from the Monitor's health: serving while the
// backend is usable now, or while the plugin serves from memory within the grace.
func (s *Server) follow(keyID string, unhealthy error) {
	st := healthpb.HealthCheckResponse_SERVING
	if keyID == "" || unhealthy != nil {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	for _, name := range healthServices {
		s.health.SetServingStatus(name, st)
	}
}

// Serve serves on lis, holding at most Peers.MaxConnections connections.
func (s *Server) Serve(lis net.Listener) error {
	return s.Server.Serve(newConnLimiter(lis, s.peers))
}

// GracefulStop reports NOT_SERVING from now on, then lets in-flight requests finish.
func (s *Server) GracefulStop() {
	s.health.Shutdown()
	s.Server.GracefulStop()
}

// Stop reports NOT_SERVING and closes every connection at once.
func (s *Server) Stop() {
	s.health.Shutdown()
	s.Server.Stop()
}

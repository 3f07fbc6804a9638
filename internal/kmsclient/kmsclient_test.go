package kmsclient_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
)

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{
		"/var/run/kmsplugin/kms.sock":           "/var/run/kmsplugin/kms.sock",
		"unix:///var/run/kmsplugin/kms.sock":    "/var/run/kmsplugin/kms.sock",
		"unix:///var/run/kmsplugin/../kms.sock": "/var/run/kms.sock",
	} {
		if got, err := kmsclient.SocketPath(in); err != nil || got != want {
			t.Errorf("SocketPath(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "kms.sock", "unix://kms.sock", "unix://"} {
		if _, err := kmsclient.SocketPath(bad); err == nil {
			t.Errorf("SocketPath(%q) accepted", bad)
		}
		if _, err := kmsclient.Dial(bad); err == nil {
			t.Errorf("Dial(%q) accepted", bad)
		}
	}
}

// fakePlugin answers Status with a fixed response, or not at all while block is set.
type fakePlugin struct {
	kmsapi.UnimplementedKeyManagementServiceServer
	resp  *kmsapi.StatusResponse
	block bool
}

func (f *fakePlugin) Status(ctx context.Context, _ *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	if f.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	// The apiserver sends :authority localhost; a plugin may rely on it.
	if md, _ := metadata.FromIncomingContext(ctx); len(md[":authority"]) != 1 || md[":authority"][0] != "localhost" {
		return nil, status.Errorf(codes.InvalidArgument, "authority %q, want localhost", md[":authority"])
	}
	return f.resp, nil
}

func serve(t *testing.T, f *fakePlugin) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kmsclient") // short: a socket path holds 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "kms.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	kmsapi.RegisterKeyManagementServiceServer(s, f)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return path
}

func TestCheckStatus(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		resp    *kmsapi.StatusResponse
		wantErr string
	}{
		{"healthy", &kmsapi.StatusResponse{Version: "v2", Healthz: "ok", KeyId: "k1"}, ""},
		{"unhealthy is reported, not an error", &kmsapi.StatusResponse{Version: "v2", Healthz: "vault down", KeyId: "k1"}, ""},
		{"wrong version", &kmsapi.StatusResponse{Version: "v1beta1", Healthz: "ok", KeyId: "k1"}, `version "v1beta1"`},
		{"no key id", &kmsapi.StatusResponse{Version: "v2", Healthz: "ok"}, "key id of 0 bytes"},
		{"key id over 1 kB", &kmsapi.StatusResponse{Version: "v2", Healthz: "ok", KeyId: strings.Repeat("k", 1025)}, "key id of 1025 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := serve(t, &fakePlugin{resp: tc.resp})
			for _, endpoint := range []string{path, "unix://" + path} {
				conn, err := kmsclient.Dial(endpoint)
				if err != nil {
					t.Fatal(err)
				}
				st, err := kmsclient.CheckStatus(ctx, conn, 3*time.Second)
				conn.Close()
				if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
					t.Fatalf("%s: err %v, want %q", endpoint, err, tc.wantErr)
				}
				// The answer comes back even when it fails the check, for the caller to report.
				if st.KeyID != tc.resp.KeyId || st.Healthz != tc.resp.Healthz || st.Version != tc.resp.Version {
					t.Errorf("%s: status %+v, want %+v", endpoint, st, tc.resp)
				}
			}
		})
	}
}

func TestCheckStatusTimesOut(t *testing.T) {
	path := serve(t, &fakePlugin{block: true})
	conn, err := kmsclient.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The fake never answers: only the timeout can end the call.
	if _, err := kmsclient.CheckStatus(context.Background(), conn, 200*time.Millisecond); status.Code(errors.Unwrap(err)) != codes.DeadlineExceeded && status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a plugin that never answers: %v, want DeadlineExceeded", err)
	}
}

func TestValidateKeyID(t *testing.T) {
	for id, ok := range map[string]bool{"": false, "k": true, strings.Repeat("k", 1024): true, strings.Repeat("k", 1025): false} {
		if err := kmsclient.ValidateKeyID(id); (err == nil) != ok {
			t.Errorf("ValidateKeyID(%d bytes) = %v", len(id), err)
		}
	}
}

package load

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"
)

// FloorKeyID is the key id the floor server reports.
const FloorKeyID = "floor"

// floorService answers the KMS v2 API doing no crypto: Encrypt returns the plaintext as the
// ciphertext, Decrypt the ciphertext as the plaintext. What a plugin costs beyond it is its own.
type floorService struct {
	kmsapi.UnimplementedKeyManagementServiceServer
}

func (floorService) Status(context.Context, *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	return &kmsapi.StatusResponse{Version: "v2", Healthz: "ok", KeyId: FloorKeyID}, nil
}

func (floorService) Encrypt(_ context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	return &kmsapi.EncryptResponse{Ciphertext: req.Plaintext, KeyId: FloorKeyID}, nil
}

func (floorService) Decrypt(_ context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	return &kmsapi.DecryptResponse{Plaintext: req.Ciphertext}, nil
}

// Floor is a do-nothing KMS v2 server on a unix socket: the cost of gRPC over a unix socket on
// this machine, against which a plugin's figures are given as ratios. It uses gRPC's default
// server options, as the simplest plugin would.
type Floor struct {
	Socket string

	srv     *grpc.Server
	done    chan error
	tempDir string // removed by Stop, when StartTempFloor made it
}

// ServeFloor serves the floor on a new unix socket at path (an existing file is an error).
func ServeFloor(path string) (*Floor, error) {
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("floor server: %w", err)
	}
	srv := grpc.NewServer()
	kmsapi.RegisterKeyManagementServiceServer(srv, floorService{})
	f := &Floor{Socket: path, srv: srv, done: make(chan error, 1)}
	go func() { f.done <- srv.Serve(lis) }()
	return f, nil
}

// StartTempFloor serves the floor on a socket in a new temporary directory, which Stop removes.
func StartTempFloor() (*Floor, error) {
	dir, err := os.MkdirTemp("", "kms-floor")
	if err != nil {
		return nil, err
	}
	f, err := ServeFloor(filepath.Join(dir, "floor.sock"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	f.tempDir = dir
	return f, nil
}

// Wait blocks until the server stops, returning why it stopped (nil after Stop).
func (f *Floor) Wait() error {
	err := <-f.done
	f.done <- err
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Stop closes every connection and removes the socket (and the temporary directory).
func (f *Floor) Stop() {
	f.srv.Stop()
	os.Remove(f.Socket)
	if f.tempDir != "" {
		os.RemoveAll(f.tempDir)
	}
}

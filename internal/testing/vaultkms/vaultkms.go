// Package vaultkms is a stand-in for vault-kubernetes-kms (github.com/FalcoSuessgott/
// vault-kubernetes-kms), written here from its public source and documentation, for tests of
// the switch from it to this plugin: a KMS v2 gRPC server that produces exactly its envelopes
// against a real Vault. Its Encrypt sends the plaintext to transit/encrypt/<key> (no context,
// no key_version: the latest) and returns Transit's ciphertext text itself ("vault:vN:...",
// not base64'd again) as the ciphertext, with the key's latest_version as a decimal string as
// its key id; its Decrypt hands the ciphertext text to transit/decrypt/<key>; its Status
// reports the same key id.
package vaultkms

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/hashicorp/vault/api"
	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"
)

// Transit is one transit key, reached with a client that may encrypt, decrypt and read it.
type Transit struct {
	Client     *api.Client
	Mount, Key string
}

// Encrypt is vault-kubernetes-kms's Encrypt: Transit's text, and the key's latest version as
// the key id.
func (tr Transit) Encrypt(ctx context.Context, plain []byte) ([]byte, string, error) {
	resp, err := tr.Client.Logical().WriteWithContext(ctx, tr.Mount+"/encrypt/"+tr.Key,
		map[string]any{"plaintext": base64.StdEncoding.EncodeToString(plain)})
	if err != nil {
		return nil, "", err
	}
	ct, ok := resp.Data["ciphertext"].(string)
	if !ok {
		return nil, "", errors.New("invalid response")
	}
	kv, err := tr.KeyID(ctx)
	if err != nil {
		return nil, "", err
	}
	return []byte(ct), kv, nil
}

// Decrypt is vault-kubernetes-kms's Decrypt.
func (tr Transit) Decrypt(ctx context.Context, ct []byte) ([]byte, error) {
	resp, err := tr.Client.Logical().WriteWithContext(ctx, tr.Mount+"/decrypt/"+tr.Key, map[string]any{"ciphertext": string(ct)})
	if err != nil {
		return nil, err
	}
	p, ok := resp.Data["plaintext"].(string)
	if !ok {
		return nil, errors.New("invalid response")
	}
	return base64.StdEncoding.DecodeString(p)
}

// KeyID is its key id: the transit key's latest_version.
func (tr Transit) KeyID(ctx context.Context) (string, error) {
	resp, err := tr.Client.Logical().ReadWithContext(ctx, tr.Mount+"/keys/"+tr.Key)
	if err != nil {
		return "", err
	}
	if resp == nil {
		return "", fmt.Errorf("could not read transit key %s/%s", tr.Mount, tr.Key)
	}
	kv, ok := resp.Data["latest_version"].(json.Number)
	if !ok {
		return "", errors.New("no latest_version")
	}
	return kv.String(), nil
}

type service struct {
	kmsapi.UnimplementedKeyManagementServiceServer
	tr Transit
}

func (s service) Status(ctx context.Context, _ *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	kv, err := s.tr.KeyID(ctx)
	if err != nil {
		return nil, err
	}
	return &kmsapi.StatusResponse{Version: "v2", Healthz: "ok", KeyId: kv}, nil
}

func (s service) Encrypt(ctx context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	ct, kv, err := s.tr.Encrypt(ctx, req.Plaintext)
	if err != nil {
		return nil, err
	}
	return &kmsapi.EncryptResponse{Ciphertext: ct, KeyId: kv}, nil
}

func (s service) Decrypt(ctx context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	p, err := s.tr.Decrypt(ctx, req.Ciphertext)
	if err != nil {
		return nil, err
	}
	return &kmsapi.DecryptResponse{Plaintext: p}, nil
}

// Server is the stand-in serving on a unix socket.
type Server struct {
	srv *grpc.Server
}

// Serve serves the stand-in on socket (a path), removing a stale file first.
func Serve(socket string, tr Transit) (*Server, error) {
	os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	kmsapi.RegisterKeyManagementServiceServer(srv, service{tr: tr})
	go srv.Serve(lis)
	return &Server{srv: srv}, nil
}

// Stop stops serving and removes the socket, as the real plugin does on SIGTERM.
func (s *Server) Stop() { s.srv.Stop() }

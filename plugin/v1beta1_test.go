package plugin_test

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	kmsv1 "k8s.io/kms/apis/v1beta1"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/dek"
)

// Both APIs share one envelope and one set of keys: what one encrypts, the other decrypts.
func TestV1beta1AndV2ShareTheEnvelope(t *testing.T) {
	p := startPlugin(t)
	v1 := dialV1(t, p.socket)
	c := ctx(t)

	ver, err := v1.Version(c, &kmsv1.VersionRequest{Version: "v1beta1"})
	if err != nil || ver.Version != "v1beta1" || ver.RuntimeName != "kms-plugin" {
		t.Fatalf("Version = %+v, %v", ver, err)
	}
	_, err = v1.Version(c, &kmsv1.VersionRequest{Version: "v9"})
	wantCode(t, err, codes.InvalidArgument)

	seed := bytes.Repeat([]byte{7}, 32)
	enc1, err := v1.Encrypt(c, &kmsv1.EncryptRequest{Version: "v1beta1", Plain: seed})
	if err != nil {
		t.Fatal(err)
	}
	dec2, err := p.client.Decrypt(c, &kmsapi.DecryptRequest{Ciphertext: enc1.Cipher})
	if err != nil || !bytes.Equal(dec2.Plaintext, seed) {
		t.Fatalf("v2 Decrypt of a v1beta1 ciphertext: %v", err)
	}
	enc2, err := p.client.Encrypt(c, &kmsapi.EncryptRequest{Plaintext: seed})
	if err != nil {
		t.Fatal(err)
	}
	dec1, err := v1.Decrypt(c, &kmsv1.DecryptRequest{Version: "v1beta1", Cipher: enc2.Ciphertext})
	if err != nil || !bytes.Equal(dec1.Plain, seed) {
		t.Fatalf("v1beta1 Decrypt of a v2 ciphertext: %v", err)
	}

	// Same error codes as v2.
	_, err = v1.Encrypt(c, &kmsv1.EncryptRequest{})
	wantCode(t, err, codes.InvalidArgument)
	_, err = v1.Decrypt(c, &kmsv1.DecryptRequest{Cipher: []byte("not ours")})
	wantCode(t, err, codes.InvalidArgument)
	p.kek.set(fmt.Errorf("vault sealed: %w", dek.ErrUnavailable), 0)
	_, err = v1.Decrypt(c, &kmsv1.DecryptRequest{Cipher: enc2.Ciphertext})
	wantCode(t, err, codes.Unavailable)
}

func dialV1(t *testing.T, socket string) kmsv1.KeyManagementServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kmsv1.NewKeyManagementServiceClient(conn)
}

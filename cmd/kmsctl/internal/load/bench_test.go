package load

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	kmsapi "k8s.io/kms/apis/v2"
)

// The floor's figures in the shape of cmd/kms-plugin's benchmarks (one request at a time, the
// client in the same process): what gRPC over a unix socket costs per request, in time and in
// allocations, client and server together. docs/performance.md compares the two.
func floorClient(b *testing.B) kmsapi.KeyManagementServiceClient {
	f, err := StartTempFloor()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(f.Stop)
	return plugintest.Client(b, f.Socket)
}

var benchSeed = bytes.Repeat([]byte{0x42}, 32)

// withDeadline runs one request with kube-apiserver's default timeout, as cmd/kms-plugin's
// benchmarks do.
func withDeadline[T any](f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return f(ctx)
}

func BenchmarkFloorEncrypt(b *testing.B) {
	client := floorClient(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := withDeadline(func(ctx context.Context) (*kmsapi.EncryptResponse, error) {
			return client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: benchSeed})
		}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFloorDecrypt(b *testing.B) {
	client := floorClient(b)
	ct := bytes.Repeat([]byte{0x17}, 90) // about the size of the plugin's envelope of a seed
	b.ReportAllocs()
	for b.Loop() {
		if _, err := withDeadline(func(ctx context.Context) (*kmsapi.DecryptResponse, error) {
			return client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: ct, KeyId: FloorKeyID})
		}); err != nil {
			b.Fatal(err)
		}
	}
}

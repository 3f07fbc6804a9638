package main

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

// benchPlugin serves the plugin in-process as `kms-plugin serve` would (localaes backend,
// metrics, limiter) and returns a client on its socket. docs/performance.md records figures.
func benchPlugin(b *testing.B) kmsapi.KeyManagementServiceClient {
	b.Helper()
	dir := b.TempDir()
	keys := filepath.Join(dir, "keys.yaml")
	if _, err := localaes.AddKey(keys, "bench", true); err != nil {
		b.Fatal(err)
	}
	socket := filepath.Join(plugintest.ShortTempDir(b), "kms.sock") // a socket path holds at most 107 bytes
	ctx, cancel := context.WithCancel(context.Background())
	cmd := newRootCommand()
	cmd.SetArgs([]string{"--listen", socket, "--localaes-key-file", keys, "--health-addr", "127.0.0.1:0", "--log-level", "error"})
	cmd.SetErr(&syncBuffer{})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	b.Cleanup(func() { cancel(); <-done })

	client := plugintest.Client(b, socket)
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := client.Status(ctx, &kmsapi.StatusRequest{}); err == nil {
			return client
		} else if time.Now().After(deadline) {
			b.Fatalf("plugin not serving: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var benchSeed = bytes.Repeat([]byte{0x42}, 32) // the size of kube-apiserver's DEK seeds

// call runs one request with a deadline, as kube-apiserver calls every RPC with its provider's
// timeout (3 s by default): gRPC sends it to the plugin, which then sets no timer of its own.
func call[T any](f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return f(ctx)
}

func BenchmarkEncrypt(b *testing.B) {
	client := benchPlugin(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := call(func(ctx context.Context) (*kmsapi.EncryptResponse, error) {
			return client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: benchSeed})
		}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecrypt(b *testing.B) {
	client := benchPlugin(b)
	ctx := context.Background()
	enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: benchSeed})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := call(func(ctx context.Context) (*kmsapi.DecryptResponse, error) {
			return client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext})
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// Concurrent Decrypts on one connection, as an apiserver filling its watch cache sends them;
// -cpu sets GOMAXPROCS and SetParallelism(8) makes 8 goroutines per P.
func BenchmarkDecryptParallel(b *testing.B) {
	client := benchPlugin(b)
	enc, err := client.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: benchSeed})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer() // the plugin's start is not a request (b.Loop does this for the others)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := call(func(ctx context.Context) (*kmsapi.DecryptResponse, error) {
				return client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext})
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

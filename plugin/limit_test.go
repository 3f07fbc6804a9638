package plugin_test

import (
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/plugin/limit"
)

// Over the socket: with every backend slot busy and no queue, a request fails at once with
// ResourceExhausted, while Status (answered from memory) is unaffected.
func TestBackendLimitIsResourceExhausted(t *testing.T) {
	keyFile := filepath.Join(shortTempDir(t), "keys.yaml")
	if _, err := localaes.AddKey(keyFile, "one", true); err != nil {
		t.Fatal(err)
	}
	backend, err := localaes.Open(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	kek := &faultKEK{KEK: backend}
	limited := limit.New(kek, 1, 0)
	socket := plugintest.Serve(t, limited, plugintest.Options{Clock: clock.NewFake(time.Unix(1_800_000_000, 0)), Timeout: time.Minute}).Socket
	client := dial(t, socket)

	kek.set(nil, time.Minute) // the backend hangs
	slow, cancelSlow := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := client.Encrypt(slow, &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
		done <- err
	}()
	for limited.InProgress() != 1 {
		runtime.Gosched()
	}
	_, err = client.Encrypt(ctx(t), &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	wantCode(t, err, codes.ResourceExhausted)
	if _, err := client.Status(ctx(t), &kmsapi.StatusRequest{}); err != nil {
		t.Fatalf("Status while saturated: %v", err)
	}
	cancelSlow()
	<-done
	kek.set(nil, 0)
	for limited.InProgress() != 0 {
		runtime.Gosched()
	}
	if _, err := client.Encrypt(ctx(t), &kmsapi.EncryptRequest{Plaintext: []byte("seed")}); err != nil {
		t.Fatalf("after the slot freed: %v", err)
	}
}

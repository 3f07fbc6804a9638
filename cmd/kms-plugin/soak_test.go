package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

// soakDuration is how long TestSoak drives traffic: a few seconds by default (CI), longer
// locally, for example KMS_PLUGIN_SOAK=10m bash scripts/test.sh -run TestSoak.
func soakDuration(t *testing.T) time.Duration {
	d := 4 * time.Second
	if v := os.Getenv("KMS_PLUGIN_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("KMS_PLUGIN_SOAK=%q: %v", v, err)
		}
	}
	return d
}

// Sustained mixed Encrypt/Decrypt traffic over the socket, from several connections, with
// the plugin as served (metrics, limiter, health). Every request succeeds; the goroutine count
// and the live heap after the first quarter do not grow over the rest; the metrics count every
// request.
func TestSoak(t *testing.T) {
	duration := soakDuration(t)
	p := serveInProcess(t, "--localaes-key-file", localKeys(t))
	const workers = 16
	var encrypts, decrypts, failures atomic.Int64
	var firstErr atomic.Value

	http.DefaultClient.CloseIdleConnections() // earlier tests' scrapes, likewise
	goroutinesBefore := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range workers {
		conn, err := grpc.NewClient("unix://"+p.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		client := kmsapi.NewKeyManagementServiceClient(conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			seed := bytes.Repeat([]byte{byte(w)}, 32)
			var ciphertext []byte
			for i := 0; ctx.Err() == nil; i++ {
				rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
				// Like an apiserver: few Encrypts, many Decrypts.
				if i%8 == 0 {
					enc, err := client.Encrypt(rctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: fmt.Sprint(w, "-", i)})
					if err == nil {
						ciphertext = enc.Ciphertext
						encrypts.Add(1)
					} else if ctx.Err() == nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
				} else {
					dec, err := client.Decrypt(rctx, &kmsapi.DecryptRequest{Ciphertext: ciphertext, Uid: fmt.Sprint(w, "-", i)})
					if err == nil && bytes.Equal(dec.Plaintext, seed) {
						decrypts.Add(1)
					} else if ctx.Err() == nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Errorf("decrypt: %v (plaintext ok: %v)", err, err == nil))
					}
				}
				rcancel()
			}
		}()
	}

	// Samples of the whole process (plugin and clients) under load, after a GC.
	sample := func() (goroutines int, heap uint64) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapAlloc
	}
	time.Sleep(duration / 4)
	g1, h1 := sample()
	time.Sleep(duration * 3 / 4)
	g2, h2 := sample()
	cancel()
	wg.Wait()

	total := encrypts.Load() + decrypts.Load()
	t.Logf("soak %v: %d encrypts, %d decrypts (%.0f/s), %d failures; goroutines %d -> %d, heap %d -> %d KiB",
		duration, encrypts.Load(), decrypts.Load(), float64(total)/duration.Seconds(), failures.Load(), g1, g2, h1>>10, h2>>10)
	if failures.Load() > 0 {
		t.Fatalf("%d failed requests; first: %v", failures.Load(), firstErr.Load())
	}
	if total < workers {
		t.Fatalf("only %d requests", total)
	}
	// Goroutines: a handful of gRPC housekeeping goroutines may come and go; growth per
	// request would be thousands.
	if g2 > g1+workers {
		t.Errorf("goroutines grew under steady load: %d -> %d", g1, g2)
	}
	// Live heap: steady load must not accumulate (a leak per request would be MBs here).
	if h2 > h1+16<<20 {
		t.Errorf("live heap grew under steady load: %d -> %d KiB", h1>>10, h2>>10)
	}

	// Every request is counted, and the connections' goroutines go away with them.
	_, text := p.get(t, "/metrics")
	ok := func(method string) float64 {
		v, _ := metric(text, fmt.Sprintf(`kms_plugin_requests_total{api="v2",backend="localaes",code="OK",method=%q}`, method))
		return v
	}
	// Requests the server finished as the clients were cancelled count there, not here.
	within := func(served float64, seen int64) bool {
		return served >= float64(seen) && served <= float64(seen+workers)
	}
	if !within(ok("Encrypt"), encrypts.Load()) || !within(ok("Decrypt"), decrypts.Load()) {
		t.Errorf("metrics count %v encrypts and %v decrypts; clients saw %d and %d", ok("Encrypt"), ok("Decrypt"), encrypts.Load(), decrypts.Load())
	}
	// The scrape's keep-alive connection holds three goroutines (two client, one server)
	// until it idles out; it is not the plugin's.
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() > goroutinesBefore+2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutinesBefore+2 {
		t.Errorf("goroutines after the clients left: %d, before the load: %d", n, goroutinesBefore)
	}
}

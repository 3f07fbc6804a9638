package plugin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/internal/testing/hostile"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// A peer that opens streams and never sends their request gets at most MaxStreams of them on
// a connection, and each ends after RequestTimeout, while another client is served throughout.
func TestHeadersOnlyStreamsAreBoundedAndEnded(t *testing.T) {
	p := plugintest.ServeLocalAES(t, plugintest.Options{Peers: plugin.PeerLimits{MaxStreams: 8, RequestTimeout: 300 * time.Millisecond}})
	peers := make([]*hostile.Peer, 4)
	for i := range peers {
		hp, err := hostile.Dial(p.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer hp.Close()
		if hp.MaxStreams != 8 {
			t.Fatalf("server announces %d concurrent streams, want 8", hp.MaxStreams)
		}
		if err := hp.OpenStreams(50, "/v2.KeyManagementService/Decrypt"); err != nil {
			t.Fatal(err)
		}
		peers[i] = hp
	}
	if _, err := plugintest.Client(t, p.Socket).Status(context.Background(), &kmsapi.StatusRequest{}); err != nil {
		t.Fatalf("a well-behaved client during the flood: %v", err)
	}
	for i, hp := range peers {
		if n, err := hp.Ended(time.Now().Add(10 * time.Second)); n != 50 {
			t.Errorf("peer %d: %d of 50 streams ended (refused or timed out): %v", i, n, err)
		}
	}
}

// Connections that never speak cannot lock a client out: at the cap, a new connection evicts
// a silent one.
func TestSilentConnectionsDoNotLockClientsOut(t *testing.T) {
	p := plugintest.ServeLocalAES(t, plugintest.Options{Peers: plugin.PeerLimits{MaxConnections: 16, HandshakeTimeout: time.Hour}})
	var silent []net.Conn
	for range 50 {
		c, err := hostile.Silent(p.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := plugintest.Client(t, p.Socket).Status(ctx, &kmsapi.StatusRequest{}); err != nil {
		t.Fatalf("a client after 50 silent connections: %v", err)
	}
	closed := 0
	for _, c := range silent {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := io.Copy(io.Discard, c); err == nil { // the server's settings, then EOF
			closed++
		}
	}
	// 51 connections for 16 places: at least 35 evicted, all of them silent ones.
	if closed < 35 {
		t.Errorf("%d of 50 silent connections closed, want at least 35", closed)
	}
}

// What peers' unfinished requests can make the plugin hold, with the defaults, is at most half
// of the static pods' memory limit and half of their GOMEMLIMIT, and with the largest
// --max-request-size three quarters of the limit; the default request still fits the largest
// envelope with room for the request's other fields.
func TestPeerMemoryBudgetFitsTheManifests(t *testing.T) {
	held := plugin.DefaultPeerLimits.HeldBytes(plugin.MaxRequestSize)
	for _, name := range []string{"kms-plugin.yaml", "kms-plugin-vault.yaml"} {
		raw, err := os.ReadFile(filepath.Join("..", "deploy", "static-pod", name))
		if err != nil {
			t.Fatal(err)
		}
		limit := regexp.MustCompile(`limits:\s*\n\s*memory: (\d+)Mi`).FindSubmatch(raw)
		goMem := regexp.MustCompile(`name: GOMEMLIMIT\s*\n\s*value: (\d+)MiB`).FindSubmatch(raw)
		if limit == nil || goMem == nil {
			t.Fatalf("%s: no memory limit or GOMEMLIMIT", name)
		}
		limitMiB, _ := strconv.Atoi(string(limit[1]))
		goMemMiB, _ := strconv.Atoi(string(goMem[1]))
		if held > int64(limitMiB)<<20/2 || held > int64(goMemMiB)<<20/2 {
			t.Errorf("%s: %d connections × %d streams with requests of %d bytes hold %d MiB; the limit is %d MiB, GOMEMLIMIT %d MiB",
				name, plugin.DefaultPeerLimits.MaxConnections, plugin.DefaultPeerLimits.MaxStreams, plugin.MaxRequestSize, held>>20, limitMiB, goMemMiB)
		}
		if ceiling := plugin.DefaultPeerLimits.HeldBytes(plugin.MaxRequestSizeCeiling); ceiling > int64(limitMiB)<<20*3/4 {
			t.Errorf("%s: with --max-request-size %d peers hold %d MiB; the limit is %d MiB", name, plugin.MaxRequestSizeCeiling, ceiling>>20, limitMiB)
		}
	}
	if room := plugin.MaxRequestSize - dek.MaxCiphertextSize; room < 4096 {
		t.Errorf("a request of %d bytes leaves %d bytes beside the largest envelope", plugin.MaxRequestSize, room)
	}
}

// The server grants fixed flow-control windows: gRPC's bandwidth estimator, which pings when
// data arrives and grows the windows to 16 MiB, is off. A message announcing more than the
// largest request is refused before its bytes are read; one within it is held, unfinished,
// until the request timeout.
func TestFixedWindowsAndTheRequestCap(t *testing.T) {
	p := plugintest.ServeLocalAES(t, plugintest.Options{Peers: plugin.PeerLimits{RequestTimeout: time.Hour}})
	for _, c := range []struct {
		size  int
		ended int
	}{{plugin.MaxRequestSize + 1, 1}, {plugin.MaxRequestSize, 0}} {
		hp, err := hostile.Dial(p.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer hp.Close()
		if hp.Window != plugin.StreamWindow {
			t.Errorf("the server grants a window of %d bytes, want %d", hp.Window, plugin.StreamWindow)
		}
		if err := hp.OpenRequests(1, hostile.Request{Method: "/v2.KeyManagementService/Decrypt", Size: c.size, Short: 3}); err != nil {
			t.Fatal(err)
		}
		ended, _ := hp.Ended(time.Now().Add(time.Second))
		if ended != c.ended {
			t.Errorf("a message announcing %d bytes: %d streams ended, want %d", c.size, ended, c.ended)
		}
		if hp.Pings != 0 {
			t.Errorf("a message announcing %d bytes: the server sent %d pings (its bandwidth estimator is on)", c.size, hp.Pings)
		}
	}
}

// slowPlugin serves a localaes key behind a backend 300 ms away, as the eviction flood's
// reports had it, holding at most maxConns connections.
func slowPlugin(t *testing.T, maxConns int) (*plugintest.Plugin, *faultKEK) {
	t.Helper()
	keyFile := filepath.Join(plugintest.ShortTempDir(t), "keys.yaml")
	if _, err := localaes.AddKey(keyFile, "one", true); err != nil {
		t.Fatal(err)
	}
	backend, err := localaes.Open(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	kek := &faultKEK{KEK: backend}
	return plugintest.Serve(t, kek, plugintest.Options{Peers: plugin.PeerLimits{MaxConnections: maxConns}, Timeout: 10 * time.Second}), kek
}

// The eviction flood of docs/operations.md, scaled to a cap of 16 connections: 25 connections
// that send a tiny frame every 100 ms and one more every 100 ms. A client that sends a
// Decrypt every half second to a backend 300 ms away loses none of them: a connection with a
// request in flight is never evicted, nor one that was served before the flood's.
func TestBusyConnectionsDoNotEvictAClientMidRequest(t *testing.T) {
	p, kek := slowPlugin(t, 16)
	client := dial(t, p.Socket)
	enc, err := client.Encrypt(ctx(t), &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	if err != nil {
		t.Fatal(err)
	}
	kek.set(nil, 300*time.Millisecond)
	flood, stop := context.WithCancel(context.Background())
	busy := hostile.StartBusy(flood, p.Socket, 25, 100*time.Millisecond)
	const requests = 8
	var failed []string
	for i := range requests {
		time.Sleep(200 * time.Millisecond)
		call, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := client.Decrypt(call, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
		cancel()
		if err != nil {
			failed = append(failed, fmt.Sprintf("Decrypt %d: %v", i, err))
		}
	}
	stop()
	opened, closed := busy.Wait()
	if len(failed) > 0 {
		t.Errorf("%d of %d Decrypts failed during the flood:\n%s", len(failed), requests, strings.Join(failed, "\n"))
	}
	if closed == 0 {
		t.Errorf("the flood opened %d connections and the plugin closed none: nothing was evicted", opened)
	}
}

// During the same flood, a client that connects anew (as kube-apiserver does after losing its
// connection) keeps its connection while it has yet to send a request, for 300 ms here (three
// of the flood's new connections), and is then served: a newcomer is evicted only after the
// flood's older connections that were never served.
func TestBusyConnectionsDoNotLockANewcomerOut(t *testing.T) {
	p, kek := slowPlugin(t, 16)
	enc, err := dial(t, p.Socket).Encrypt(ctx(t), &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	if err != nil {
		t.Fatal(err)
	}
	kek.set(nil, 300*time.Millisecond)
	flood, stop := context.WithCancel(context.Background())
	busy := hostile.StartBusy(flood, p.Socket, 25, 100*time.Millisecond)
	const clients = 5
	var failed []string
	for i := range clients {
		if err := newcomer(p.Socket, enc); err != nil {
			failed = append(failed, fmt.Sprintf("client %d: %v", i, err))
		}
	}
	stop()
	opened, closed := busy.Wait()
	if len(failed) > 0 {
		t.Errorf("%d of %d new clients failed during the flood:\n%s", len(failed), clients, strings.Join(failed, "\n"))
	}
	if closed == 0 {
		t.Errorf("the flood opened %d connections and the plugin closed none: nothing was evicted", opened)
	}
}

// newcomer connects to socket, keeps the connection unused for 300 ms, then decrypts enc on
// it with the apiserver's 3 s timeout.
func newcomer(socket string, enc *kmsapi.EncryptResponse) error {
	conn, err := kmsclient.Dial(socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.Connect()
	ready, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ready, s) {
			return fmt.Errorf("not connected within 3 s (%v)", s)
		}
	}
	idle, cancelIdle := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelIdle()
	if conn.WaitForStateChange(idle, connectivity.Ready) {
		return fmt.Errorf("connection lost before its first request (%v)", conn.GetState())
	}
	call, cancelCall := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancelCall()
	_, err = kmsapi.NewKeyManagementServiceClient(conn).Decrypt(call, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
	return err
}

// A peer that cuts a request's message into many small DATA frames, each of which gRPC would
// keep as a buffer of its own, has its connection closed; clients that send large requests
// many at a time over one connection, whose frames the flow-control windows split, do not.
func TestSmallFramesCloseTheConnection(t *testing.T) {
	p := plugintest.ServeLocalAES(t, plugintest.Options{Peers: plugin.PeerLimits{RequestTimeout: time.Hour}})
	for _, frame := range []int{1, 16, 1023} {
		hp, err := hostile.Dial(p.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer hp.Close()
		err = hp.OpenRequests(1, hostile.Request{Method: "/v2.KeyManagementService/Decrypt", Size: 8 << 10, Short: 3, Frame: frame})
		if err == nil { // all sent before the server closed the connection
			_, err = hp.Ended(time.Now().Add(5 * time.Second))
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("a message in frames of %d bytes: the connection is still open (%v)", frame, err)
		}
	}

	client := dial(t, p.Socket)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			size := []int{plugin.MaxRequestSize - 100, dek.MaxCiphertextSize, 3000, 1500}[i%4]
			_, err := client.Decrypt(ctx(t), &kmsapi.DecryptRequest{Ciphertext: make([]byte, size)})
			if status.Code(err) != codes.InvalidArgument { // served: the ciphertext is not an envelope
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%d bytes: %v", size, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Errorf("%d of 64 concurrent large requests were not served:\n%s", len(failed), strings.Join(failed, "\n"))
	}
}

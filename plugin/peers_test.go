package plugin_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/internal/hostile"
	"github.com/kmsplugin/kms-plugin/internal/plugintest"
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

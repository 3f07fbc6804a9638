package plugin

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// At the cap, a connection with a request in flight is never evicted, even as the only one
// there is: the newcomer is closed instead. Once the request has ended, the next newcomer
// evicts it.
func TestLimiterNeverEvictsARequestInFlight(t *testing.T) {
	dir, err := os.MkdirTemp("", "kp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	l := newConnLimiter(lis, PeerLimits{MaxConnections: 1}.withDefaults())
	accepted := make(chan *trackedConn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c.(*trackedConn)
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closed := func(c net.Conn) bool { // by the server, within 5 s
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}

	busy := dial()
	if _, err := busy.Write([]byte(http2Preface)); err != nil {
		t.Fatal(err)
	}
	served := <-accepted
	if _, err := io.ReadFull(served, make([]byte, len(http2Preface))); err != nil {
		t.Fatal(err)
	}
	served.inFlight.Add(1)
	if !closed(dial()) {
		t.Fatal("a newcomer was not closed while the only connection had a request in flight")
	}
	if _, err := busy.Write([]byte("x")); err != nil {
		t.Fatalf("the connection with a request in flight was closed: %v", err)
	}
	if _, err := io.ReadFull(served, make([]byte, 1)); err != nil {
		t.Fatalf("the connection with a request in flight was closed: %v", err)
	}

	served.lastDone.Store(time.Now().UnixNano())
	served.inFlight.Add(-1)
	dial()
	<-accepted
	if !closed(busy) {
		t.Fatal("with its request ended, the connection was not evicted for a newcomer")
	}
}
